/*  alert_rules.c: budget, spend and error-rate rules over accounting's state. */
#include "alert_rules.h"
#include "gw_env.h"
#include "gw_log.h"
#include "gw_messages.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  Accounting's connection that writes the ingresses' rows may reconnect this
    much later than the one that writes its own (its backoff's ceiling). */
#define SETTLE_SLACK_MS 5000

static const char *const s_periods[4] = { "day", "week", "month", "total" };
static const char *const s_period_words[4] = { "Daily", "Weekly", "Monthly", "Lifetime" };

/*  An exact decimal of pico-units with 2 to 6 decimals ("81.20", "0.000123"). */
static void
s_money (int64_t pico, char *out, size_t size)
{
    bool negative = pico < 0;
    uint64_t v = negative ? (uint64_t) 0 - (uint64_t) pico : (uint64_t) pico;
    uint64_t micro = (v + 500000) / 1000000;  //  rounded to 1e-6
    char frac[7];
    snprintf (frac, sizeof frac, "%06" PRIu64, micro % 1000000);
    int keep = 6;
    while (keep > 2 && frac[keep - 1] == '0')
        keep--;
    snprintf (out, size, "%s%" PRIu64 ".%.*s", negative ? "-" : "", micro / 1000000, keep, frac);
}

/*  "80%", "100%", "92.5%". */
static void
s_percent (double fraction, char *out, size_t size)
{
    double p = fraction * 100;
    if (fabs (p - round (p)) < 1e-9)
        snprintf (out, size, "%.0f%%", p);
    else
        snprintf (out, size, "%.1f%%", p);
}

static int
s_parse_levels (const char *text, alert_rules_config_t *config)
{
    config->nlevels = 0;
    char *copy = strdup (text), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r (copy, ",", &save); tok && rc == 0; tok = strtok_r (NULL, ",", &save)) {
        char *end;
        double v = strtod (tok, &end);
        if (*end || !(v > 0) || v > 10 || config->nlevels == ALERT_LEVELS_MAX
            || (config->nlevels && v <= config->budget_levels[config->nlevels - 1]))
            rc = -1;
        else
            config->budget_levels[config->nlevels++] = v;
    }
    free (copy);
    return rc == 0 && config->nlevels > 0 ? 0 : -1;
}

/*  A decimal amount of the currency in pico-units; -1 when unset or empty. */
static int
s_parse_money (const char *name, int64_t *out)
{
    const char *text = gw_env_str (name, NULL);
    *out = -1;
    if (!text || !*text)
        return 0;
    char *end;
    double v = strtod (text, &end);
    if (*end || !(v >= 0) || v > 9e6) {
        gw_error ("rules", "invalid amount name=%s value=%s", name, text);
        return -1;
    }
    *out = (int64_t) llround (v * 1e12);
    return 0;
}

int
alert_rules_config_from_env (alert_rules_config_t *config)
{
    memset (config, 0, sizeof *config);
    const char *levels = gw_env_str ("GW_ALERT_BUDGET_LEVELS", "0.8,1");
    if (s_parse_levels (levels, config)) {
        gw_error ("rules", "GW_ALERT_BUDGET_LEVELS must be ascending fractions like 0.8,1 value=%s", levels);
        return -1;
    }
    const char *names[3] = { "GW_ALERT_SPEND_LIMIT_DAY", "GW_ALERT_SPEND_LIMIT_WEEK", "GW_ALERT_SPEND_LIMIT_MONTH" };
    for (int i = 0; i < 3; i++)
        if (s_parse_money (names[i], &config->spend_limit_pico[i]))
            return -1;
    const char *rate = gw_env_str ("GW_ALERT_ERROR_RATE", "0.05");
    char *end;
    config->error_rate = strtod (rate, &end);
    if (*end || !(config->error_rate > 0) || config->error_rate > 1) {
        gw_error ("rules", "GW_ALERT_ERROR_RATE must be a fraction in (0, 1] value=%s", rate);
        return -1;
    }
    config->error_min_calls = gw_env_int ("GW_ALERT_ERROR_MIN_CALLS", 20, 1, 1000000000);
    config->error_window_s = (int) gw_env_int ("GW_ALERT_ERROR_WINDOW_S", 300, 10, 86400);
    config->latency_p95_ms = (int) gw_env_int ("GW_ALERT_LATENCY_P95_MS", 10000, 0, 3600000);
    config->silent_s = (int) gw_env_int ("GW_ALERT_SILENT_S", 60, 1, 86400);
    const char *min = gw_env_str ("GW_ALERT_BALANCE_MIN", NULL);
    config->balance_min = -1;
    if (min) {
        config->balance_min = strtod (min, &end);
        if (*end || !(config->balance_min >= 0)) {
            gw_error ("rules", "GW_ALERT_BALANCE_MIN must be an amount value=%s", min);
            return -1;
        }
    }
    config->spool_events = gw_env_int ("GW_ALERT_SPOOL_EVENTS", 100000, 0, INT64_MAX);
    config->host_permille[0] = (int) gw_env_int ("GW_ALERT_HOST_CPU", 80, 0, 100) * 10;
    config->host_permille[1] = (int) gw_env_int ("GW_ALERT_HOST_MEMORY", 85, 0, 100) * 10;
    config->host_permille[2] = (int) gw_env_int ("GW_ALERT_HOST_DISK", 90, 0, 100) * 10;
    config->latency_min_calls = gw_env_int ("GW_ALERT_LATENCY_MIN_CALLS", 20, 1, 1000000000);
    const char *level = gw_env_str ("GW_ALERT_RATE_LEVEL", "0.9");
    config->rate_level = strtod (level, &end);
    if (*end || !(config->rate_level > 0) || config->rate_level > 1) {
        gw_error ("rules", "GW_ALERT_RATE_LEVEL must be a fraction in (0, 1] value=%s", level);
        return -1;
    }
    return 0;
}

static void
s_claim_as (json_t *claims, const char *rule, const char *subject, const char *period, const char *level_text,
            const char *severity, const char *title, const char *text, json_t *alert)
{
    char full_title[512];
    snprintf (full_title, sizeof full_title, "[%s] %s", severity, title);
    json_object_set_new (alert, "rule", json_string (rule));
    json_object_set_new (alert, "subject", json_string (subject));
    json_object_set_new (alert, "period", json_string (period));
    json_object_set_new (alert, "level", json_string (level_text));
    json_object_set_new (alert, "severity", json_string (severity));
    json_array_append_new (claims, json_pack ("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "rule", rule, "subject",
                                              subject, "period", period, "level", level_text, "severity", severity,
                                              "title", full_title, "text", text, "alert", alert));
}

/*  A periodic claim at a fraction: warning under 100%, critical from it. */
static void
s_claim (json_t *claims, const char *rule, const char *subject, const char *period, double level,
         const char *title, const char *text, json_t *alert)
{
    char level_text[16];
    s_percent (level, level_text, sizeof level_text);
    s_claim_as (claims, rule, subject, period, level_text, level >= 1 ? "critical" : "warning", title, text, alert);
}

static bool
s_is_open (json_t *open, const char *rule, const char *subject)
{
    size_t i;
    json_t *o;
    json_array_foreach (open, i, o)
        if (strcmp (json_string_value (json_object_get (o, "rule")) ?: "", rule) == 0
            && strcmp (json_string_value (json_object_get (o, "subject")) ?: "", subject) == 0)
            return true;
    return false;
}

/*  An episodic rule: claimed (period "open") while it holds, resolved once it
    no longer does, if it was open. alert is taken over (freed when not used). */
/*  Subjects evaluated by episodic rules during one alert_rules_evaluate call
    ("rule subject"), so that episodes left open for subjects gone from the
    state (an instance removed, a key revoked) are resolved at its end. The
    alerter evaluates on one thread. */
static json_t *s_seen;

static void
s_see (const char *rule, const char *subject)
{
    if (s_seen) {
        char key[512];
        snprintf (key, sizeof key, "%s %s", rule, subject);
        json_object_set_new (s_seen, key, json_true ());
    }
}

static void
s_episode (json_t *claims, json_t *resolves, json_t *open, const char *rule, const char *subject, bool firing,
           const char *severity, const char *title, const char *text, json_t *alert)
{
    s_see (rule, subject);
    if (firing)
        s_claim_as (claims, rule, subject, "open", "open", severity, title, text, alert);
    else {
        json_decref (alert);
        if (s_is_open (open, rule, subject))
            json_array_append_new (resolves, json_pack ("{s:s, s:s}", "rule", rule, "subject", subject));
    }
}

/*  One budget or spend against its limit: a claim for each level crossed. */
static void
s_budget (const alert_rules_config_t *config, json_t *claims, const char *rule, const char *subject,
          const char *who, const char *period_word, const char *period, const char *currency, int64_t limit,
          int64_t spent)
{
    //  No limit, or a limit of 0 (nothing is allowed: 80% of it says nothing).
    if (limit <= 0)
        return;
    for (int i = 0; i < config->nlevels; i++) {
        double level = config->budget_levels[i];
        //  Exact for money: the level in parts per million, compared in 128 bits
        //  (0.8 is not exact in binary: 80.00 of 100.00 must still reach 80%).
        __int128 level_ppm = (__int128) llround (level * 1e6);
        if ((__int128) spent * 1000000 < (__int128) limit * level_ppm)
            continue;
        char used[32], cap[32], pct[16], title[384], text[1024];
        s_money (spent, used, sizeof used);
        s_money (limit, cap, sizeof cap);
        s_percent (level, pct, sizeof pct);
        double share = limit > 0 ? (double) spent / (double) limit : 1;
        snprintf (title, sizeof title, "%s budget %s used: %s (%s %s of %s)", period_word, pct, who, currency, used,
                  cap);
        snprintf (text, sizeof text,
                  "%s\n\n%s spend in period %s: %s %s of a %s %s budget (%.1f%%).\n"
                  "This alert is sent once per period and level; the next one at the next level or period.\n",
                  title, who, period, currency, used, currency, cap, share * 100);
        json_t *alert = json_pack ("{s:s, s:s, s:s, s:s, s:f}", "currency", currency, "spent", used, "limit", cap,
                                   "who", who, "share", share);
        s_claim (claims, rule, subject, period, level, title, text, alert);
    }
}

/*  Budgets and overall spend limits of the periods part names ("periods",
    "keys", "overall"): the current ones, or the previous ones. A period
    without a name in part is not evaluated. */
static void
s_spend (const alert_rules_config_t *config, json_t *claims, json_t *part, const char *currency)
{
    json_t *periods = json_object_get (part, "periods");
    size_t i;
    json_t *key;
    json_array_foreach (json_object_get (part, "keys"), i, key) {
        char subject[48], who[256];
        snprintf (subject, sizeof subject, "key:%" JSON_INTEGER_FORMAT, json_integer_value (json_object_get (key, "id")));
        snprintf (who, sizeof who, "key %s (id %" JSON_INTEGER_FORMAT ")",
                  json_string_value (json_object_get (key, "name")) ?: "",
                  json_integer_value (json_object_get (key, "id")));
        for (int p = 0; p < 4; p++) {
            json_t *b = json_object_get (json_object_get (key, "budgets"), s_periods[p]);
            const char *period = json_string_value (json_object_get (periods, s_periods[p]));
            if (!b || !period)
                continue;
            char rule[32];
            snprintf (rule, sizeof rule, "budget_%s", s_periods[p]);
            s_budget (config, claims, rule, subject, who, s_period_words[p], period, currency,
                      json_integer_value (json_object_get (b, "limit_pico")),
                      json_integer_value (json_object_get (b, "spent_pico")));
        }
    }
    json_t *overall = json_object_get (part, "overall");
    for (int p = 0; p < 3; p++) {
        const char *period = json_string_value (json_object_get (periods, s_periods[p]));
        if (!period || !json_object_get (overall, s_periods[p]))
            continue;
        char rule[32];
        snprintf (rule, sizeof rule, "spend_%s", s_periods[p]);
        s_budget (config, claims, rule, "all", "all keys", s_period_words[p], period, currency,
                  config->spend_limit_pico[p], json_integer_value (json_object_get (overall, s_periods[p])));
    }
}

json_t *
alert_rules_evaluate (const alert_rules_config_t *config, json_t *state)
{
    json_t *claims = json_array (), *resolves = json_array ();
    s_seen = json_object ();
    const char *currency = json_string_value (json_object_get (state, "currency"));
    if (!currency)
        currency = "";
    s_spend (config, claims, state, currency);
    //  Just after a period ended (its first hour), the one before it too: a
    //  limit crossed in its last moments, or while no alerter ran across its
    //  end, is still alerted (once: the period names the alert).
    json_t *previous = json_object_get (state, "previous");
    if (previous)
        s_spend (config, claims, previous, currency);
    size_t i;
    json_t *open = json_object_get (state, "open");
    json_t *window = json_object_get (state, "window");
    json_int_t calls = json_integer_value (json_object_get (window, "calls"));
    json_int_t errors = json_integer_value (json_object_get (window, "errors"));
    json_int_t seconds = json_integer_value (json_object_get (window, "seconds"));
    double rate = calls ? (double) errors / (double) calls : 0;
    {
        char pct[16], limit[16], title[256], text[768];
        s_percent (rate, pct, sizeof pct);
        s_percent (config->error_rate, limit, sizeof limit);
        snprintf (title, sizeof title, "Upstream error rate %s over %" JSON_INTEGER_FORMAT " s (%" JSON_INTEGER_FORMAT
                  " of %" JSON_INTEGER_FORMAT " calls; threshold %s)",
                  pct, seconds, errors, calls, limit);
        snprintf (text, sizeof text,
                  "%s\n\nFailed calls (no answer, 401, 402, 429, 5xx) over the last %" JSON_INTEGER_FORMAT
                  " s: %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT
                  ". See docs/operations.md, \"Alerts\", for what to check.\n"
                  "A notice follows when the rate is back under the threshold.\n",
                  title, seconds, errors, calls);
        //  Critical: the service is failing its users.
        s_episode (claims, resolves, open, "error_rate", "all",
                   calls >= config->error_min_calls && rate > config->error_rate, "critical", title, text,
                   json_pack ("{s:I, s:I, s:I, s:f, s:f}", "calls", calls, "errors", errors, "window_s", seconds,
                              "rate", rate, "threshold", config->error_rate));
    }
    //  Latency: the 95th percentile of the time to the first byte of answers.
    json_int_t answered = json_integer_value (json_object_get (window, "answered"));
    double p95_ms = (double) json_integer_value (json_object_get (window, "p95_ttfb_us")) / 1000;
    {
        char title[256], text[768];
        snprintf (title, sizeof title, "Upstream p95 time to first byte %.0f ms over %" JSON_INTEGER_FORMAT
                  " s (%" JSON_INTEGER_FORMAT " answers; threshold %d ms)",
                  p95_ms, seconds, answered, config->latency_p95_ms);
        snprintf (text, sizeof text,
                  "%s\n\nOne answer in twenty took longer than this to start. See docs/operations.md, \"Alerts\".\n",
                  title);
        //  Switched off (0): never fires, and an episode still open resolves.
        s_episode (claims, resolves, open, "latency_p95", "all",
                   config->latency_p95_ms > 0 && answered >= config->latency_min_calls
                       && p95_ms > config->latency_p95_ms,
                   "warning", title, text,
                   json_pack ("{s:I, s:f, s:i, s:I}", "answered", answered, "p95_ttfb_ms", p95_ms, "threshold_ms",
                              config->latency_p95_ms, "window_s", seconds));
    }
    //  The instances: silent ones, growing spools, busy hosts.
    json_t *hosts = json_object (), *balances = json_object ();
    json_t *inst;
    //  Right after accounting or its database was away (or the clock jumped),
    //  every row is old. The figures are current once some accounting
    //  instance's own row (written every GW_STATUS_MS) is fresh. An old row
    //  means a silent instance only once that row has been fresh, without a
    //  gap, for longer than the row's silence threshold (plus the slack of
    //  accounting's second connection, which writes the ingresses' rows and
    //  may reconnect a few seconds later): by then a live instance has
    //  reported again. Until then an old row decides nothing.
    bool current = false;
    json_int_t silent_ms = (json_int_t) config->silent_s * 1000, fresh_ms = 0;
    json_array_foreach (json_object_get (state, "instances"), i, inst)
        if (strcmp (json_string_value (json_object_get (inst, "kind")) ?: "", "accounting") == 0
            && json_integer_value (json_object_get (inst, "age_ms")) <= silent_ms) {
            current = true;
            //  An accounting from before fresh_ms: settled, as it always was.
            json_t *f = json_object_get (inst, "fresh_ms");
            json_int_t one = f ? json_integer_value (f) : INT64_MAX;
            fresh_ms = one > fresh_ms ? one : fresh_ms;
        }
    json_int_t ingress_ms = silent_ms < 3 * GW_INGRESS_ALIVE_MS ? 3 * GW_INGRESS_ALIVE_MS : silent_ms;
    //  Every old row decided: subjects no rule looked at are gone (below).
    bool settled = current && fresh_ms - SETTLE_SLACK_MS >= ingress_ms;
    json_array_foreach (json_object_get (state, "instances"), i, inst) {
        const char *kind = json_string_value (json_object_get (inst, "kind")) ?: "?";
        const char *name = json_string_value (json_object_get (inst, "instance")) ?: "?";
        const char *host = json_string_value (json_object_get (inst, "host")) ?: "?";
        json_int_t age_ms = json_integer_value (json_object_get (inst, "age_ms"));
        char subject[256], title[512], text[768];
        snprintf (subject, sizeof subject, "%s:%s", kind, name);
        //  An ingress reports every GW_INGRESS_ALIVE_MS, whatever GW_STATUS_MS is.
        json_int_t threshold_ms = strcmp (kind, "ingress") == 0 ? ingress_ms : silent_ms;
        bool silent = age_ms > threshold_ms;
        if (!current)
            continue;
        if (silent && fresh_ms - SETTLE_SLACK_MS < threshold_ms) {
            //  Not decided yet: neither silent nor back, and its spool,
            //  host and balance figures are old.
            s_see ("silent", subject);
            s_see ("spool", subject);
            continue;
        }
        snprintf (title, sizeof title, "The %s %s on %s has been silent for %lld s", kind, name, host,
                  (long long) (age_ms / 1000));
        snprintf (text, sizeof text,
                  "%s\n\nIt last reported %lld s ago (alert after %lld s). See docs/operations.md, \"Alerts\".\n",
                  title, (long long) (age_ms / 1000), (long long) (threshold_ms / 1000));
        s_episode (claims, resolves, open, "silent", subject, silent, "critical", title, text,
                   json_pack ("{s:s, s:s, s:s, s:I}", "kind", kind, "instance", name, "host", host, "age_ms", age_ms));
        if (strcmp (kind, "dispatcher") == 0) {
            json_int_t events = json_integer_value (json_object_get (inst, "spool_events"));
            snprintf (title, sizeof title, "The usage spool of %s holds %lld unsent events", name, (long long) events);
            snprintf (text, sizeof text,
                      "%s\n\nAccounting is not taking its usage fast enough, or not at all (alert above %lld).\n",
                      title, (long long) config->spool_events);
            s_episode (claims, resolves, open, "spool", subject, !silent && events > config->spool_events, "warning",
                       title, text, json_pack ("{s:s, s:I}", "instance", name, "spool_events", events));
        }
        //  Each provider's lowest balance over the live reports, for below.
        json_t *balance = json_object_get (inst, "balance");
        const char *provider = json_string_value (json_object_get (balance, "provider"));
        if (!silent && provider) {
            json_t *seen = json_object_get (balances, provider);
            double total = strtod (json_string_value (json_object_get (balance, "total")) ?: "0", NULL);
            bool available = json_is_true (json_object_get (balance, "available"));
            bool seen_available = seen && json_is_true (json_object_get (seen, "available"));
            //  An unavailable account wins; among the rest, the lowest balance.
            if (!seen || (seen_available && !available)
                || (seen_available && total < strtod (json_string_value (json_object_get (seen, "total")) ?: "0", NULL)))
                json_object_set (balances, provider, balance);
        }
        //  Each host's highest figures over its live instances, for below.
        if (!silent) {
            json_t *h = json_object_get (hosts, host);
            if (!h) {
                h = json_pack ("{s:I, s:I, s:I}", "cpu_permille", (json_int_t) 0, "mem_permille", (json_int_t) 0,
                               "disk_permille", (json_int_t) 0);
                json_object_set_new (hosts, host, h);
            }
            const char *fields[3] = { "cpu_permille", "mem_permille", "disk_permille" };
            for (int r = 0; r < 3; r++) {
                json_int_t v = json_integer_value (json_object_get (inst, fields[r]));
                if (v > json_integer_value (json_object_get (h, fields[r])))
                    json_object_set_new (h, fields[r], json_integer (v));
            }
        }
    }
    //  Host resources: one episode per host and resource, from the highest
    //  figure its instances reported (so two instances of one host never
    //  disagree into an alert that opens and resolves in turn).
    const char *host_name;
    json_t *h;
    json_object_foreach (hosts, host_name, h) {
        const char *rules[3] = { "host_cpu", "host_memory", "host_disk" };
        const char *fields[3] = { "cpu_permille", "mem_permille", "disk_permille" };
        const char *words[3] = { "CPU", "memory", "disk" };
        char subject[256], title[512], text[768];
        snprintf (subject, sizeof subject, "host:%s", host_name);
        for (int r = 0; r < 3; r++) {
            json_int_t v = json_integer_value (json_object_get (h, fields[r]));
            snprintf (title, sizeof title, "Host %s: %s %lld.%lld%% in use (alert above %d%%)", host_name, words[r],
                      (long long) (v / 10), (long long) (v % 10), config->host_permille[r] / 10);
            snprintf (text, sizeof text, "%s\n\nSee docs/operations.md, \"Alerts\".\n", title);
            s_episode (claims, resolves, open, rules[r], subject, v > config->host_permille[r], "warning", title, text,
                       json_pack ("{s:s, s:s, s:I}", "host", host_name, "resource", words[r], "permille", v));
        }
    }
    json_decref (hosts);
    //  Provider balances: unavailable (critical), or under the minimum.
    const char *provider;
    json_t *b;
    json_object_foreach (balances, provider, b) {
        const char *total = json_string_value (json_object_get (b, "total")) ?: "?";
        const char *cur = json_string_value (json_object_get (b, "currency")) ?: "";
        bool available = json_is_true (json_object_get (b, "available"));
        bool low = config->balance_min >= 0 && strtod (total, NULL) < config->balance_min;
        char subject[128], title[384], text[768];
        snprintf (subject, sizeof subject, "provider:%s", provider);
        if (!available)
            snprintf (title, sizeof title, "Provider %s account not available (balance %s %s)", provider, cur, total);
        else
            snprintf (title, sizeof title, "Provider %s balance %s %s, under %.2f", provider, cur, total,
                      config->balance_min);
        snprintf (text, sizeof text,
                  "%s\n\nTop the account up before calls fail with 402. See docs/operations.md, \"Alerts\".\n",
                  title);
        s_episode (claims, resolves, open, "balance", subject, !available || low, available ? "warning" : "critical",
                   title, text, json_pack ("{s:s, s:s, s:s, s:b}", "provider", provider, "currency", cur, "total",
                                           total, "available", available));
    }
    json_decref (balances);
    //  Request and token rates close to a key's limits.
    json_t *rate_entry;
    json_array_foreach (json_object_get (state, "rates"), i, rate_entry) {
        json_int_t id = json_integer_value (json_object_get (rate_entry, "id"));
        const char *name = json_string_value (json_object_get (rate_entry, "name")) ?: "";
        char subject[48];
        snprintf (subject, sizeof subject, "key:%" JSON_INTEGER_FORMAT, id);
        const char *kinds[2] = { "rpm", "tpm" };
        const char *words[2] = { "requests", "tokens" };
        for (int k = 0; k < 2; k++) {
            json_t *w = json_object_get (rate_entry, kinds[k]);
            char rule[16];
            snprintf (rule, sizeof rule, "rate_%s", kinds[k]);
            json_int_t limit = json_integer_value (json_object_get (w, "limit"));
            double used = json_real_value (json_object_get (w, "used"));
            bool firing = w && limit > 0 && used >= config->rate_level * (double) limit;
            if (!w && !s_is_open (open, rule, subject))
                continue;
            char pct[16], title[256], text[512];
            s_percent (config->rate_level, pct, sizeof pct);
            snprintf (title, sizeof title, "Key %s (id %" JSON_INTEGER_FORMAT ") at %.0f of %" JSON_INTEGER_FORMAT
                      " %s per minute (alert at %s)",
                      name, id, used, limit, words[k], pct);
            snprintf (text, sizeof text,
                      "%s\n\nIts requests will soon get 429 %s. See docs/operations.md, \"Alerts\".\n", title,
                      k == 0 ? "rate_limit_requests" : "rate_limit_tokens");
            s_episode (claims, resolves, open, rule, subject, firing, "warning", title, text,
                       json_pack ("{s:I, s:s, s:I, s:f}", "key_id", id, "name", name, "limit", limit, "used", used));
        }
    }
    //  Open episodes whose subject no rule looked at: gone (an instance removed,
    //  a key revoked, a provider no longer read). Only once every old row is
    //  decided, so an outage does not resolve them all.
    const char *gone[] = { "silent", "spool", "host_cpu", "host_memory", "host_disk", "balance", "rate_rpm",
                           "rate_tpm" };
    json_t *o;
    json_array_foreach (json_object_get (state, "open"), i, o) {
        const char *rule = json_string_value (json_object_get (o, "rule")) ?: "";
        const char *subject = json_string_value (json_object_get (o, "subject")) ?: "";
        bool instance_rule = strncmp (rule, "rate_", 5) != 0;
        bool known = false;
        for (size_t g = 0; g < sizeof gone / sizeof gone[0]; g++)
            known |= strcmp (rule, gone[g]) == 0;
        char key[512];
        snprintf (key, sizeof key, "%s %s", rule, subject);
        if (known && (settled || !instance_rule) && !json_object_get (s_seen, key))
            json_array_append_new (resolves, json_pack ("{s:s, s:s}", "rule", rule, "subject", subject));
    }
    json_decref (s_seen);
    s_seen = NULL;
    return json_pack ("{s:o, s:o}", "claims", claims, "resolves", resolves);
}

/* ---- selftest ---- */

static json_t *
s_state (int64_t limit, int64_t spent, int64_t calls, int64_t errors)
{
    return json_pack ("{s:s, s:{s:s, s:s, s:s, s:s}, s:[{s:i, s:s, s:{s:{s:I, s:I}}}], s:{s:I, s:I, s:I},"
                      " s:{s:I, s:I, s:I}}",
                      "currency", "CNY", "periods", "day", "2026-11-27", "week", "2026-11-23", "month", "2026-11",
                      "total", "all", "keys", "id", 3, "name", "web", "budgets", "day", "limit_pico", (json_int_t) limit,
                      "spent_pico", (json_int_t) spent, "overall", "day", (json_int_t) spent, "week", (json_int_t) spent,
                      "month", (json_int_t) spent, "window", "seconds", (json_int_t) 300, "calls", (json_int_t) calls,
                      "errors", (json_int_t) errors);
}

/*  Evaluates a state built by s_state, which it frees. */
static json_t *
s_eval (const alert_rules_config_t *config, json_t *state)
{
    json_t *out = alert_rules_evaluate (config, state);
    json_decref (state);
    return out;
}

/*  "rule subject;" of each claim in out. */
static void
s_claimed (json_t *out, char *got, size_t size)
{
    *got = 0;
    json_t *claim;
    size_t k;
    json_array_foreach (json_object_get (out, "claims"), k, claim) {
        size_t len = strlen (got);
        snprintf (got + len, size - len, "%s %s;", json_string_value (json_object_get (claim, "rule")),
                  json_string_value (json_object_get (claim, "subject")));
    }
}

void
alert_rules_test (bool verbose)
{
    if (verbose)
        printf (" * alert_rules: ");
    alert_rules_config_t config = { .budget_levels = { 0.8, 1 }, .nlevels = 2, .spend_limit_pico = { -1, -1, -1 },
                                    .error_rate = 0.05, .error_min_calls = 20, .error_window_s = 300,
                                    .latency_p95_ms = 0, .latency_min_calls = 20, .rate_level = 0.9 };
    const int64_t yuan = 1000000000000LL;
    //  79.99 of 100: nothing; 80 exactly: the 80% claim; 100.02: both.
    json_t *out = s_eval (&config, s_state (100 * yuan, 7999 * yuan / 100, 0, 0));
    assert (json_array_size (json_object_get (out, "claims")) == 0);
    json_decref (out);
    out = s_eval (&config, s_state (100 * yuan, 80 * yuan, 0, 0));
    json_t *claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 1);
    json_t *c = json_array_get (claims, 0);
    assert (strcmp (json_string_value (json_object_get (c, "rule")), "budget_day") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "subject")), "key:3") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "period")), "2026-11-27") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "level")), "80%") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "severity")), "warning") == 0);
    assert (strstr (json_string_value (json_object_get (c, "title")), "CNY 80.00 of 100.00"));
    json_decref (out);
    out = s_eval (&config, s_state (100 * yuan, 10002 * yuan / 100, 0, 0));
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 2);
    c = json_array_get (claims, 1);
    assert (strcmp (json_string_value (json_object_get (c, "level")), "100%") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "severity")), "critical") == 0);
    assert (strstr (json_string_value (json_object_get (c, "title")), "CNY 100.02 of 100.00"));
    json_decref (out);
    //  Overall spend limit.
    config.spend_limit_pico[0] = 50 * yuan;
    out = s_eval (&config, s_state (-1, 60 * yuan, 0, 0));
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 2);  //  80% and 100% of the overall daily 50
    assert (strcmp (json_string_value (json_object_get (json_array_get (claims, 0), "rule")), "spend_day") == 0);
    json_decref (out);
    config.spend_limit_pico[0] = -1;
    //  Error rate: 10% of 100 calls alerts; 1 of 3 does not (too few); 4% resolves.
    out = s_eval (&config, s_state (-1, 0, 100, 10));
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 1);
    c = json_array_get (claims, 0);
    assert (strcmp (json_string_value (json_object_get (c, "rule")), "error_rate") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "period")), "open") == 0);
    assert (json_array_size (json_object_get (out, "resolves")) == 0);
    json_decref (out);
    out = s_eval (&config, s_state (-1, 0, 3, 1));
    assert (json_array_size (json_object_get (out, "claims")) == 0);
    assert (json_array_size (json_object_get (out, "resolves")) == 0);  //  nothing was open
    json_decref (out);
    json_t *state = s_state (-1, 0, 100, 4);
    json_object_set_new (state, "open", json_pack ("[{s:s, s:s}]", "rule", "error_rate", "subject", "all"));
    out = s_eval (&config, state);
    assert (json_array_size (json_object_get (out, "claims")) == 0);
    json_t *r = json_array_get (json_object_get (out, "resolves"), 0);
    assert (r && strcmp (json_string_value (json_object_get (r, "rule")), "error_rate") == 0);
    json_decref (out);
    //  Latency: p95 time to first byte over the threshold, with enough answers.
    config.latency_p95_ms = 50;
    state = s_state (-1, 0, 30, 0);
    json_object_set_new (json_object_get (state, "window"), "answered", json_integer (30));
    json_object_set_new (json_object_get (state, "window"), "p95_ttfb_us", json_integer (80000));
    out = s_eval (&config, state);
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 1);
    assert (strcmp (json_string_value (json_object_get (json_array_get (claims, 0), "rule")), "latency_p95") == 0);
    json_decref (out);
    config.latency_p95_ms = 0;
    //  A key at 90% of its rpm alerts; at 89% it does not, and resolves if open.
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "rates", json_pack ("[{s:i, s:s, s:{s:i, s:f}}]", "id", 3, "name", "web", "rpm",
                                                    "limit", 10, "used", 9.0));
    out = s_eval (&config, state);
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 1);
    c = json_array_get (claims, 0);
    assert (strcmp (json_string_value (json_object_get (c, "rule")), "rate_rpm") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "subject")), "key:3") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "period")), "open") == 0);
    json_decref (out);
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "rates", json_pack ("[{s:i, s:s, s:{s:i, s:f}}]", "id", 3, "name", "web", "rpm",
                                                    "limit", 10, "used", 8.9));
    json_object_set_new (state, "open", json_pack ("[{s:s, s:s}]", "rule", "rate_rpm", "subject", "key:3"));
    out = s_eval (&config, state);
    assert (json_array_size (json_object_get (out, "claims")) == 0);
    assert (json_array_size (json_object_get (out, "resolves")) == 1);
    json_decref (out);
    //  Instances: a silent dispatcher; a live one with a growing spool on a busy
    //  host, reported by two instances (one episode per host and resource).
    config.silent_s = 60;
    config.spool_events = 100;
    config.host_permille[0] = 800, config.host_permille[1] = 850, config.host_permille[2] = 900;
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "instances",
                         json_pack ("[{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i},"
                                    " {s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i},"
                                    " {s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i},"
                                    " {s:s, s:s, s:s, s:i, s:i, s:i, s:i}]",
                                    "kind", "dispatcher", "instance", "d1", "host", "h1", "age_ms", 120000,
                                    "spool_events", 0, "cpu_permille", 990, "mem_permille", 0, "disk_permille", 0,
                                    "kind", "dispatcher", "instance", "d2", "host", "h2", "age_ms", 1000,
                                    "spool_events", 500, "cpu_permille", 900, "mem_permille", 100, "disk_permille", 0,
                                    "kind", "accounting", "instance", "a1", "host", "h2", "age_ms", 2000,
                                    "spool_events", 0, "cpu_permille", 100, "mem_permille", 100, "disk_permille",
                                    950, "fresh_ms", 3600000,
                                    //  an ingress alone on its host
                                    "kind", "ingress", "instance", "i1", "host", "h3", "age_ms", 1000,
                                    "cpu_permille", 0, "mem_permille", 900, "disk_permille", 0));
    json_incref (state);  //  evaluated again below
    out = s_eval (&config, state);
    char got[512];
    s_claimed (out, got, sizeof got);
    //  d1 silent (its host's figures ignored); d2's spool; h2's CPU (d2) and
    //  disk (a1); h3's memory (the ingress).
    assert (strcmp (got, "silent dispatcher:d1;spool dispatcher:d2;host_cpu host:h2;host_disk host:h2;"
                         "host_memory host:h3;")
            == 0);
    json_decref (out);
    //  Right after an outage: accounting's row is fresh again but not for the
    //  silence threshold yet. The live figures count; an old row is neither
    //  silent nor back (its open episode stays open).
    json_t *a1 = json_array_get (json_object_get (state, "instances"), 2);
    json_object_set_new (a1, "fresh_ms", json_integer (59000));
    json_object_set_new (state, "open", json_pack ("[{s:s, s:s}]", "rule", "silent", "subject", "dispatcher:d1"));
    json_incref (state);
    out = s_eval (&config, state);
    s_claimed (out, got, sizeof got);
    assert (strcmp (got, "spool dispatcher:d2;host_cpu host:h2;host_disk host:h2;host_memory host:h3;") == 0);
    assert (json_array_size (json_object_get (out, "resolves")) == 0);
    json_decref (out);
    //  An ingress reports every GW_INGRESS_ALIVE_MS: not silent before three of them.
    config.silent_s = 1;
    json_object_set_new (a1, "fresh_ms", json_integer (3600000));
    json_object_set_new (a1, "age_ms", json_integer (500));
    json_t *i1 = json_array_get (json_object_get (state, "instances"), 3);
    json_object_set_new (i1, "age_ms", json_integer (3 * GW_INGRESS_ALIVE_MS - 1));
    json_incref (state);
    out = s_eval (&config, state);
    s_claimed (out, got, sizeof got);
    assert (!strstr (got, "silent ingress:i1"));
    json_decref (out);
    json_object_set_new (i1, "age_ms", json_integer (3 * GW_INGRESS_ALIVE_MS + 1));
    out = s_eval (&config, state);
    s_claimed (out, got, sizeof got);
    assert (strstr (got, "silent ingress:i1"));
    json_decref (out);
    config.silent_s = 60;
    //  A provider balance under the minimum, read by a live dispatcher.
    config.balance_min = 200;
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "instances",
                         json_pack ("[{s:s, s:s, s:s, s:i, s:{s:s, s:s, s:s, s:b}},"
                                    " {s:s, s:s, s:s, s:i}]",
                                    "kind", "dispatcher", "instance", "d1", "host", "h1", "age_ms", 100, "balance",
                                    "provider", "deepseek", "currency", "CNY", "total", "110.00", "available", 1,
                                    "kind", "accounting", "instance", "a1", "host", "h1", "age_ms", 100));
    json_object_set_new (json_array_get (json_object_get (state, "instances"), 1), "fresh_ms",
                         json_integer (3600000));
    config.host_permille[0] = config.host_permille[1] = config.host_permille[2] = 1000;
    out = s_eval (&config, state);
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 1);
    c = json_array_get (claims, 0);
    assert (strcmp (json_string_value (json_object_get (c, "rule")), "balance") == 0);
    assert (strcmp (json_string_value (json_object_get (c, "subject")), "provider:deepseek") == 0);
    assert (strstr (json_string_value (json_object_get (c, "title")), "CNY 110.00, under 200.00"));
    json_decref (out);
    //  An open episode of an instance no longer in the state resolves (when the
    //  figures are current: an accounting row is fresh).
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "instances", json_pack ("[{s:s, s:s, s:s, s:i, s:i}]", "kind", "accounting",
                                                        "instance", "a1", "host", "h1", "age_ms", 100, "fresh_ms",
                                                        3600000));
    json_object_set_new (state, "open", json_pack ("[{s:s, s:s}]", "rule", "silent", "subject", "dispatcher:old"));
    out = s_eval (&config, state);
    r = json_array_get (json_object_get (out, "resolves"), 0);
    assert (r && strcmp (json_string_value (json_object_get (r, "subject")), "dispatcher:old") == 0);
    json_decref (out);
    //  The first hour of a day: yesterday's crossings still count, under
    //  yesterday's name; today's spend is evaluated as usual.
    state = s_state (-1, 0, 0, 0);
    json_object_set_new (state, "previous",
                         json_pack ("{s:{s:s}, s:[], s:{s:I}}", "periods", "day", "2026-11-26", "keys", "overall",
                                    "day", (json_int_t) 50 * 1000000000000LL));
    config.spend_limit_pico[0] = 50 * 1000000000000LL;
    out = s_eval (&config, state);
    claims = json_object_get (out, "claims");
    assert (json_array_size (claims) == 2);  //  80% and 100% of yesterday's limit
    for (size_t k = 0; k < 2; k++) {
        c = json_array_get (claims, k);
        assert (strcmp (json_string_value (json_object_get (c, "rule")), "spend_day") == 0);
        assert (strcmp (json_string_value (json_object_get (c, "period")), "2026-11-26") == 0);
    }
    json_decref (out);
    config.spend_limit_pico[0] = -1;
    //  Levels from the environment.
    assert (s_parse_levels ("0.5,0.9,1", &config) == 0 && config.nlevels == 3);
    assert (s_parse_levels ("0.9,0.5", &config) == -1);
    assert (s_parse_levels ("x", &config) == -1);
    char money[32];
    s_money (81200000000000LL, money, sizeof money);
    assert (strcmp (money, "81.20") == 0);
    s_money (123000000, money, sizeof money);
    assert (strcmp (money, "0.000123") == 0);
    if (verbose)
        printf ("OK\n");
}
