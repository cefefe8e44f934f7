/*  alert_store.c: the alerter's operations, as SQL on accounting's connection. */
#include "alert_store.h"
#include "gw_error.h"
#include "gw_log.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUTBOX_MAX 100
#define LEASE_TTL_MAX_MS 600000

static char *
s_error (uint32_t *status, uint32_t code, const char *message)
{
    *status = code;
    return gw_error_json (code == 503 ? "api_error" : "invalid_request_error",
                          code == 503 ? "accounting_unavailable" : "invalid_value", NULL, "%s", message);
}

static char *
s_unavailable (uint32_t *status)
{
    return s_error (status, 503, "The database cannot be reached; try again.");
}

static char *
s_answer (uint32_t *status, json_t *answer)
{
    *status = 200;
    char *text = json_dumps (answer, JSON_COMPACT);
    json_decref (answer);
    return text;
}

static const char *
s_str (json_t *o, const char *name)
{
    return json_string_value (json_object_get (o, name));
}

static int64_t
s_cell (PGresult *res, int row, int col)
{
    return PQgetisnull (res, row, col) ? 0 : strtoll (PQgetvalue (res, row, col), NULL, 10);
}

/*  The limit a column holds once the service defaults apply (-1: none). */
static int64_t
s_effective (PGresult *res, int row, int col, int64_t dflt)
{
    int64_t value = PQgetisnull (res, row, col) ? KEY_LIMIT_DEFAULT : s_cell (res, row, col);
    return key_limit_effective (value, dflt);
}

/* ---- lease ---- */

static char *
s_lease (usage_store_t *db, json_t *in, uint32_t *status)
{
    const char *alerter = s_str (in, "alerter");
    json_int_t ttl = json_integer_value (json_object_get (in, "ttl_ms"));
    if (!alerter || !*alerter || ttl < 100 || ttl > LEASE_TTL_MAX_MS)
        return s_error (status, 400, "lease needs alerter (an id) and ttl_ms (100 to 600000)");
    char ttl_text[24];
    snprintf (ttl_text, sizeof ttl_text, "%lld", (long long) ttl);
    const char *values[2] = { alerter, ttl_text };
    //  Taken when free or lapsed, renewed by its holder, refused to anyone else.
    PGresult *res = usage_store_exec (db,
                                      "INSERT INTO alerter_lease (name, holder, until)"
                                      " VALUES ('leader', $1, clock_timestamp() + make_interval(secs => $2::bigint / 1000.0))"
                                      " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until"
                                      " WHERE alerter_lease.until < clock_timestamp()"
                                      "  OR alerter_lease.holder = EXCLUDED.holder"
                                      " RETURNING holder",
                                      2, values);
    if (!res)
        return s_unavailable (status);
    bool leader = PQntuples (res) == 1;
    PQclear (res);
    json_t *out = json_pack ("{s:b}", "leader", leader);
    res = usage_store_exec (db, "SELECT holder FROM alerter_lease WHERE name = 'leader'", 0, NULL);
    if (res && PQntuples (res) == 1)
        json_object_set_new (out, "holder", json_string (PQgetvalue (res, 0, 0)));
    PQclear (res);
    return s_answer (status, out);
}

/* ---- state ---- */

static const char *const s_periods[4] = { "day", "week", "month", "total" };

/*  How long after a period ended its spend is still evaluated (the previous
    period's part of the state), so a limit crossed in its last moments, or
    while no alerter ran across its end, is still alerted. */
#define GRACE "interval '1 hour'"

/*  The spend part of the state for the current periods (which 0) or the
    previous ones (which 1, only those whose grace[p] is set): each live key's
    spend against its budgets ("keys") and the overall spend ("overall").
    NULL when the database failed. */
static json_t *
s_spend (usage_store_t *db, const key_policy_t *policy, const char *currency, int which, const bool grace[3])
{
    //  A period's start: date_trunc(p, now()) - which periods.
    const char *w = which ? "1" : "0";
    const char *on[3] = { which == 0 || grace[0] ? "t" : "f", which == 0 || grace[1] ? "t" : "f",
                          which == 0 || grace[2] ? "t" : "f" };
    const char *values[5] = { w, on[0], on[1], on[2], currency };
    PGresult *res = usage_store_exec (
        db,
        "SELECT k.id, k.name, k.budget_day_pico, k.budget_week_pico, k.budget_month_pico, k.budget_total_pico,"
        " sum(s.cost_pico) FILTER (WHERE s.period = 'day'"
        "  AND s.period_start = date_trunc('day', now()) - $1::integer * interval '1 day'),"
        " sum(s.cost_pico) FILTER (WHERE s.period = 'week'"
        "  AND s.period_start = date_trunc('week', now()) - $1::integer * interval '1 week'),"
        " sum(s.cost_pico) FILTER (WHERE s.period = 'month'"
        "  AND s.period_start = date_trunc('month', now()) - $1::integer * interval '1 month'),"
        " sum(s.cost_pico) FILTER (WHERE s.period = 'total' AND $1::integer = 0)"
        " FROM api_keys k LEFT JOIN key_spend s ON s.key_id = k.id AND s.period <> 'minute'"
        " WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"
        " GROUP BY k.id ORDER BY k.id",
        1, values);
    if (!res)
        return NULL;
    json_t *keys = json_array ();
    for (int r = 0; r < PQntuples (res); r++) {
        json_t *budgets = json_object ();
        for (int p = 0; p < 4; p++) {
            int64_t limit = s_effective (res, r, 2 + p, policy->defaults[KEY_BUDGET_DAY + p]);
            if (limit < 0 || (which && (p == 3 || !grace[p])))
                continue;
            json_object_set_new (budgets, s_periods[p],
                                 json_pack ("{s:I, s:I}", "limit_pico", (json_int_t) limit, "spent_pico",
                                            (json_int_t) s_cell (res, r, 6 + p)));
        }
        if (json_object_size (budgets) == 0) {
            json_decref (budgets);
            continue;
        }
        json_array_append_new (keys, json_pack ("{s:I, s:s, s:o}", "id", (json_int_t) s_cell (res, r, 0), "name",
                                                PQgetvalue (res, r, 1), "budgets", budgets));
    }
    PQclear (res);

    //  Overall spend, every call (with a key or not), in this currency, from
    //  the hourly rollup (migration 8): days, weeks and months are whole UTC
    //  hours, so the sums are the stored calls' own. Only the periods asked
    //  for are read (LEAST skips NULLs): the previous month only in the first
    //  hour of a month.
    res = usage_store_exec (
        db,
        "SELECT coalesce(sum(cost_pico) FILTER (WHERE $2::boolean"
        "  AND hour >= date_trunc('day', now()) - $1::integer * interval '1 day'"
        "  AND hour < date_trunc('day', now()) - ($1::integer - 1) * interval '1 day'), 0),"
        " coalesce(sum(cost_pico) FILTER (WHERE $3::boolean"
        "  AND hour >= date_trunc('week', now()) - $1::integer * interval '1 week'"
        "  AND hour < date_trunc('week', now()) - ($1::integer - 1) * interval '1 week'), 0),"
        " coalesce(sum(cost_pico) FILTER (WHERE $4::boolean"
        "  AND hour >= date_trunc('month', now()) - $1::integer * interval '1 month'"
        "  AND hour < date_trunc('month', now()) - ($1::integer - 1) * interval '1 month'), 0)"
        " FROM spend_hours WHERE currency = $5"
        " AND hour >= least("
        "  CASE WHEN $2::boolean THEN date_trunc('day', now()) - $1::integer * interval '1 day' END,"
        "  CASE WHEN $3::boolean THEN date_trunc('week', now()) - $1::integer * interval '1 week' END,"
        "  CASE WHEN $4::boolean THEN date_trunc('month', now()) - $1::integer * interval '1 month' END)",
        5, values);
    if (!res) {
        json_decref (keys);
        return NULL;
    }
    json_t *overall = json_object ();
    for (int p = 0; p < 3; p++)
        if (*on[p] == 't')
            json_object_set_new (overall, s_periods[p], json_integer ((json_int_t) s_cell (res, 0, p)));
    PQclear (res);
    return json_pack ("{s:o, s:o}", "keys", keys, "overall", overall);
}

static char *
s_state (usage_store_t *db, const key_policy_t *policy, const char *currency, json_t *in, uint32_t *status)
{
    json_int_t window = json_integer_value (json_object_get (in, "window_s"));
    if (window < 1 || window > 86400)
        return s_error (status, 400, "state needs window_s (1 to 86400)");
    //  The current UTC periods (the session's time zone is UTC), the previous
    //  ones, and whether each previous one ended within the grace.
    PGresult *res = usage_store_exec (
        db,
        "SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " to_char(date_trunc('day', now()), 'YYYY-MM-DD'),"
        " to_char(date_trunc('week', now()), 'YYYY-MM-DD'),"
        " to_char(date_trunc('month', now()), 'YYYY-MM'),"
        " to_char(date_trunc('day', now()) - interval '1 day', 'YYYY-MM-DD'),"
        " to_char(date_trunc('week', now()) - interval '1 week', 'YYYY-MM-DD'),"
        " to_char(date_trunc('month', now()) - interval '1 month', 'YYYY-MM'),"
        " now() < date_trunc('day', now()) + " GRACE ","
        " now() < date_trunc('week', now()) + " GRACE ","
        " now() < date_trunc('month', now()) + " GRACE,
        0, NULL);
    if (!res)
        return s_unavailable (status);
    json_t *out = json_pack ("{s:s, s:s}", "now", PQgetvalue (res, 0, 0), "currency", currency);
    const char *names[4] = { PQgetvalue (res, 0, 1), PQgetvalue (res, 0, 2), PQgetvalue (res, 0, 3), "all" };
    json_t *period_names = json_object (), *previous_names = json_object ();
    bool grace[3], any_grace = false;
    for (int p = 0; p < 4; p++)
        json_object_set_new (period_names, s_periods[p], json_string (names[p]));
    for (int p = 0; p < 3; p++) {
        grace[p] = strcmp (PQgetvalue (res, 0, 7 + p), "t") == 0;
        any_grace |= grace[p];
        if (grace[p])
            json_object_set_new (previous_names, s_periods[p], json_string (PQgetvalue (res, 0, 4 + p)));
    }
    json_object_set_new (out, "periods", period_names);
    PQclear (res);

    json_t *spend = s_spend (db, policy, currency, 0, grace);
    json_t *previous = spend && any_grace ? s_spend (db, policy, currency, 1, grace) : NULL;
    if (!spend || (any_grace && !previous)) {
        json_decref (spend);
        json_decref (previous_names);
        json_decref (out);
        return s_unavailable (status);
    }
    json_object_update (out, spend);
    json_decref (spend);
    if (previous) {
        json_object_set_new (previous, "periods", previous_names);
        json_object_set_new (out, "previous", previous);
    }
    else
        json_decref (previous_names);

    //  Calls and errors of the window. An error is a call the provider failed:
    //  no answer, 401/402 (key, balance), 429, or 5xx. A 400 is the client's.
    char window_text[24];
    snprintf (window_text, sizeof window_text, "%lld", (long long) window);
    const char *values[1] = { window_text };
    res = usage_store_exec (db,
                            "SELECT count(*), count(*) FILTER (WHERE status = 0 OR status IN (401, 402, 429)"
                            "  OR status >= 500),"
                            " coalesce(percentile_disc(0.95) WITHIN GROUP (ORDER BY total_us), 0),"
                            //  Time to the first byte of the answers that came: the
                            //  provider's responsiveness, whatever the answer's length.
                            " count(*) FILTER (WHERE status = 200),"
                            " coalesce(percentile_disc(0.95) WITHIN GROUP (ORDER BY ttfb_us) FILTER (WHERE status = 200), 0)"
                            " FROM usage_events WHERE started_at > now() - make_interval(secs => $1::integer)",
                            1, values);
    if (!res) {
        json_decref (out);
        return s_unavailable (status);
    }
    json_object_set_new (out, "window",
                         json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I}", "seconds", (json_int_t) window, "calls",
                                    (json_int_t) s_cell (res, 0, 0), "errors", (json_int_t) s_cell (res, 0, 1),
                                    "p95_total_us", (json_int_t) s_cell (res, 0, 2), "answered",
                                    (json_int_t) s_cell (res, 0, 3), "p95_ttfb_us", (json_int_t) s_cell (res, 0, 4)));
    PQclear (res);

    //  Each key's request and token windows (the sliding minute of the
    //  admissions: previous minute weighted by its overlap, plus this one).
    res = usage_store_exec (
        db,
        "SELECT k.id, k.name, k.rpm, k.tpm,"
        " (SELECT coalesce(sum(requests * CASE WHEN q.minute = date_trunc('minute', now()) THEN 1.0"
        "   ELSE 1 - extract(epoch FROM now() - date_trunc('minute', now())) / 60 END), 0)"
        "   FROM key_requests q WHERE q.key_id = k.id AND q.minute >= date_trunc('minute', now()) - interval '1 minute'),"
        " (SELECT coalesce(sum(tokens * CASE WHEN m.period_start = date_trunc('minute', now()) THEN 1.0"
        "   ELSE 1 - extract(epoch FROM now() - date_trunc('minute', now())) / 60 END), 0)"
        "   FROM key_spend m WHERE m.key_id = k.id AND m.period = 'minute'"
        "   AND m.period_start >= date_trunc('minute', now()) - interval '1 minute')"
        " FROM api_keys k WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"
        " ORDER BY k.id",
        0, NULL);
    if (!res) {
        json_decref (out);
        return s_unavailable (status);
    }
    json_t *rates = json_array ();
    for (int r = 0; r < PQntuples (res); r++) {
        int64_t rpm = s_effective (res, r, 2, policy->defaults[KEY_RPM]);
        int64_t tpm = s_effective (res, r, 3, policy->defaults[KEY_TPM]);
        if (rpm < 0 && tpm < 0)
            continue;
        json_t *rate = json_pack ("{s:I, s:s}", "id", (json_int_t) s_cell (res, r, 0), "name", PQgetvalue (res, r, 1));
        if (rpm >= 0)
            json_object_set_new (rate, "rpm", json_pack ("{s:I, s:f}", "limit", (json_int_t) rpm, "used",
                                                         strtod (PQgetvalue (res, r, 4), NULL)));
        if (tpm >= 0)
            json_object_set_new (rate, "tpm", json_pack ("{s:I, s:f}", "limit", (json_int_t) tpm, "used",
                                                         strtod (PQgetvalue (res, r, 5), NULL)));
        json_array_append_new (rates, rate);
    }
    json_object_set_new (out, "rates", rates);
    PQclear (res);

    //  What each instance last said about itself, and how long ago.
    res = usage_store_exec (db,
                            "SELECT kind, instance, host,"
                            " (extract(epoch FROM now() - seen_at) * 1000)::bigint,"
                            " spool_events, cpu_permille, mem_permille, disk_permille,"
                            " balance_provider, balance_currency, balance_total::text, balance_available,"
                            " (extract(epoch FROM now() - fresh_since) * 1000)::bigint"
                            " FROM instances WHERE left_at IS NULL ORDER BY kind, instance",
                            0, NULL);
    if (!res) {
        json_decref (out);
        return s_unavailable (status);
    }
    json_t *instances = json_array ();
    for (int r = 0; r < PQntuples (res); r++) {
        json_t *one = json_pack ("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "kind", PQgetvalue (res, r, 0),
                                 "instance", PQgetvalue (res, r, 1), "host", PQgetvalue (res, r, 2), "age_ms",
                                 (json_int_t) s_cell (res, r, 3), "spool_events", (json_int_t) s_cell (res, r, 4),
                                 "cpu_permille", (json_int_t) s_cell (res, r, 5), "mem_permille",
                                 (json_int_t) s_cell (res, r, 6), "disk_permille", (json_int_t) s_cell (res, r, 7));
        json_object_set_new (one, "fresh_ms", json_integer ((json_int_t) s_cell (res, r, 12)));
        if (!PQgetisnull (res, r, 8) && !PQgetisnull (res, r, 10))
            json_object_set_new (one, "balance",
                                 json_pack ("{s:s, s:s, s:s, s:b}", "provider", PQgetvalue (res, r, 8), "currency",
                                            PQgetvalue (res, r, 9), "total", PQgetvalue (res, r, 10), "available",
                                            strcmp (PQgetvalue (res, r, 11), "t") == 0));
        json_array_append_new (instances, one);
    }
    json_object_set_new (out, "instances", instances);
    PQclear (res);

    //  The episodic alerts open now: the rules resolve the ones that are over.
    res = usage_store_exec (db, "SELECT rule, subject FROM alerts WHERE period = 'open' ORDER BY id", 0, NULL);
    if (!res) {
        json_decref (out);
        return s_unavailable (status);
    }
    json_t *open = json_array ();
    for (int r = 0; r < PQntuples (res); r++)
        json_array_append_new (open, json_pack ("{s:s, s:s}", "rule", PQgetvalue (res, r, 0), "subject",
                                                PQgetvalue (res, r, 1)));
    json_object_set_new (out, "open", open);
    PQclear (res);
    return s_answer (status, out);
}

/* ---- claim, resolve ---- */

static char *
s_claim (usage_store_t *db, json_t *in, uint32_t *status)
{
    const char *fields[7] = { "rule", "subject", "period", "level", "severity", "title", "text" };
    const char *values[8];
    for (int i = 0; i < 7; i++) {
        values[i] = s_str (in, fields[i]);
        if (!values[i] || (i < 6 && !*values[i])) {
            char message[96];
            snprintf (message, sizeof message, "claim needs %s (a non-empty string)", fields[i]);
            return s_error (status, 400, message);
        }
    }
    json_t *alert = json_object_get (in, "alert"), *channels = json_object_get (in, "channels");
    if (!json_is_object (alert) || !json_is_array (channels))
        return s_error (status, 400, "claim needs alert (an object) and channels (an array of names)");
    char *alert_text = json_dumps (alert, JSON_COMPACT);
    char *channels_text = json_dumps (channels, JSON_COMPACT);
    values[7] = alert_text;
    const char *params[9];
    memcpy (params, values, sizeof values);
    params[8] = channels_text;
    //  One statement: the alert if it is new, and then its deliveries. An alert
    //  that exists already (another alerter, an earlier turn) adds nothing.
    PGresult *res = usage_store_exec (
        db,
        "WITH a AS (INSERT INTO alerts (rule, subject, period, level, severity, title, body, alert)"
        "  VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)"
        "  ON CONFLICT (rule, subject, period, level) DO NOTHING RETURNING id),"
        " d AS (INSERT INTO alert_deliveries (alert_id, channel)"
        "  SELECT a.id, c FROM a, jsonb_array_elements_text($9::jsonb) c RETURNING alert_id)"
        " SELECT id, true FROM a"
        " UNION ALL SELECT id, false FROM alerts"
        "  WHERE rule = $1 AND subject = $2 AND period = $3 AND level = $4 AND NOT EXISTS (SELECT 1 FROM a)",
        9, params);
    free (alert_text);
    free (channels_text);
    if (!res)
        return s_unavailable (status);
    json_t *out = PQntuples (res) == 1
                      ? json_pack ("{s:I, s:b}", "alert_id", (json_int_t) s_cell (res, 0, 0), "fresh",
                                   strcmp (PQgetvalue (res, 0, 1), "t") == 0)
                      : NULL;
    PQclear (res);
    if (!out)
        return s_unavailable (status);  //  raced with a concurrent claim: try again
    return s_answer (status, out);
}

static char *
s_resolve (usage_store_t *db, json_t *in, uint32_t *status)
{
    json_t *notice = json_object_get (in, "notice");
    char *alert_text = NULL, *channels_text = NULL;
    if (json_is_object (notice)) {
        alert_text = json_dumps (json_object_get (notice, "alert") ?: json_object (), JSON_COMPACT);
        channels_text = json_dumps (json_object_get (notice, "channels") ?: json_array (), JSON_COMPACT);
    }
    const char *values[6] = { s_str (in, "rule"), s_str (in, "subject"),
                              notice ? s_str (notice, "title") : NULL, notice ? s_str (notice, "text") : NULL,
                              alert_text, channels_text };
    if (!values[0] || !values[1] || (notice && (!values[2] || !values[3]))) {
        free (alert_text);
        free (channels_text);
        return s_error (status, 400, "resolve needs rule and subject (and a notice with title and text)");
    }
    //  The open episode moves out of the way of the next one ("open" is
    //  unique), and its resolved notice, if one is wanted, is recorded with its
    //  deliveries in the same statement: no crash can close one without the other.
    PGresult *res = usage_store_exec (
        db,
        "WITH r AS (UPDATE alerts SET resolved_at = now(), period = 'resolved-' || id"
        "  WHERE rule = $1 AND subject = $2 AND period = 'open' RETURNING id),"
        " n AS (INSERT INTO alerts (rule, subject, period, level, severity, title, body, alert)"
        "  SELECT $1, $2, 'resolved-' || r.id, 'resolved', 'resolved', $3::text, $4::text, $5::jsonb FROM r"
        "  WHERE $3::text IS NOT NULL"
        "  ON CONFLICT (rule, subject, period, level) DO NOTHING RETURNING id),"
        " d AS (INSERT INTO alert_deliveries (alert_id, channel)"
        "  SELECT n.id, c FROM n, jsonb_array_elements_text(coalesce($6::text, '[]')::jsonb) c RETURNING alert_id)"
        " SELECT id FROM r",
        6, values);
    free (alert_text);
    free (channels_text);
    if (!res)
        return s_unavailable (status);
    json_t *ids = json_array ();
    for (int r = 0; r < PQntuples (res); r++)
        json_array_append_new (ids, json_integer (s_cell (res, r, 0)));
    PQclear (res);
    return s_answer (status, json_pack ("{s:o}", "resolved", ids));
}

/* ---- outbox, delivered ---- */

static char *
s_outbox (usage_store_t *db, json_t *in, uint32_t *status)
{
    json_int_t limit = json_integer_value (json_object_get (in, "limit"));
    char limit_text[24];
    snprintf (limit_text, sizeof limit_text, "%d", limit > 0 && limit <= OUTBOX_MAX ? (int) limit : OUTBOX_MAX);
    const char *values[1] = { limit_text };
    PGresult *res = usage_store_exec (db,
                                      "SELECT d.id, d.alert_id, d.channel, d.attempts, a.rule, a.subject, a.period,"
                                      " a.level, a.severity, a.title, a.body, a.alert::text"
                                      " FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id"
                                      " WHERE d.status = 'pending' AND d.next_at <= now() ORDER BY d.id LIMIT $1",
                                      1, values);
    if (!res)
        return s_unavailable (status);
    json_t *list = json_array ();
    for (int r = 0; r < PQntuples (res); r++) {
        json_t *alert = json_loads (PQgetvalue (res, r, 11), 0, NULL);
        json_array_append_new (
            list, json_pack ("{s:I, s:I, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "id",
                             (json_int_t) s_cell (res, r, 0), "alert_id", (json_int_t) s_cell (res, r, 1), "channel",
                             PQgetvalue (res, r, 2), "attempts", (json_int_t) s_cell (res, r, 3), "rule",
                             PQgetvalue (res, r, 4), "subject", PQgetvalue (res, r, 5), "period", PQgetvalue (res, r, 6),
                             "level", PQgetvalue (res, r, 7), "severity", PQgetvalue (res, r, 8), "title",
                             PQgetvalue (res, r, 9), "text", PQgetvalue (res, r, 10), "alert",
                             alert ? alert : json_object ()));
    }
    PQclear (res);
    return s_answer (status, json_pack ("{s:o}", "deliveries", list));
}

static char *
s_delivered (usage_store_t *db, json_t *in, uint32_t *status)
{
    json_int_t id = json_integer_value (json_object_get (in, "id"));
    json_t *ok = json_object_get (in, "ok");
    if (id <= 0 || !json_is_boolean (ok))
        return s_error (status, 400, "delivered needs id and ok");
    char id_text[24], retry_text[24];
    snprintf (id_text, sizeof id_text, "%lld", (long long) id);
    json_int_t retry = json_integer_value (json_object_get (in, "retry_ms"));
    snprintf (retry_text, sizeof retry_text, "%lld", (long long) (retry > 0 ? retry : 1000));
    const char *error = s_str (in, "error");
    const char *values[3] = { id_text, retry_text, error ? error : "" };
    PGresult *res = json_is_true (ok)
                        ? usage_store_exec (db,
                                            "UPDATE alert_deliveries SET status = 'sent', sent_at = now(),"
                                            " attempts = attempts + 1, last_error = NULL"
                                            " WHERE id = $1 AND status = 'pending'",
                                            1, values)
                        : usage_store_exec (db,
                                            "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $3,"
                                            " next_at = now() + make_interval(secs => $2::bigint / 1000.0)"
                                            " WHERE id = $1 AND status = 'pending'",
                                            3, values);
    if (!res)
        return s_unavailable (status);
    PQclear (res);
    return s_answer (status, json_object ());
}

int
alert_store_instance (usage_store_t *db, const gw_status_t *st, int gap_ms)
{
    if (!*st->kind || !*st->instance)
        return 0;
    if (st->leaving) {
        const char *keys[2] = { st->kind, st->instance };
        PGresult *res = usage_store_exec (db, "UPDATE instances SET left_at = now() WHERE kind = $1 AND instance = $2",
                                          2, keys);
        PQclear (res);
        return res ? 0 : -1;
    }
    char events[24], bytes[24], cpu[12], mem[12], disk[12], gap[16];
    snprintf (events, sizeof events, "%llu",
              (unsigned long long) (st->spool_events > INT64_MAX ? INT64_MAX : st->spool_events));
    snprintf (bytes, sizeof bytes, "%llu",
              (unsigned long long) (st->spool_bytes > INT64_MAX ? INT64_MAX : st->spool_bytes));
    snprintf (cpu, sizeof cpu, "%u", st->cpu_permille > 1000 ? 1000 : st->cpu_permille);
    snprintf (mem, sizeof mem, "%u", st->mem_permille > 1000 ? 1000 : st->mem_permille);
    snprintf (disk, sizeof disk, "%u", st->disk_permille > 1000 ? 1000 : st->disk_permille);
    snprintf (gap, sizeof gap, "%d", gap_ms);
    //  A balance only when the total is a plain decimal (it goes into a numeric).
    const char *total = st->balance_total;
    const char *d = total + (*total == '-');
    size_t whole = strspn (d, "0123456789"), frac = d[whole] == '.' ? strspn (d + whole + 1, "0123456789") : 0;
    bool decimal = strlen (total) < 30 && whole + frac > 0 && d[whole + (d[whole] == '.' ? 1 + frac : 0)] == 0;
    const char *values[13] = { st->kind, st->instance, st->host, events, bytes, cpu, mem, disk,
                               *st->balance_provider && decimal ? st->balance_provider : NULL,
                               st->balance_currency, decimal ? total : NULL, st->balance_available ? "t" : "f",
                               gap };
    PGresult *res = usage_store_exec (
        db,
        "INSERT INTO instances (kind, instance, host, seen_at, fresh_since, spool_events, spool_bytes,"
        " cpu_permille, mem_permille, disk_permille, balance_provider, balance_currency,"
        " balance_total, balance_available)"
        " VALUES ($1, $2, $3, now(), now(), $4, $5, $6, $7, $8, $9, $10, $11::numeric, $12)"
        " ON CONFLICT (kind, instance) DO UPDATE SET host = EXCLUDED.host, seen_at = now(),"
        " fresh_since = CASE WHEN instances.seen_at < now() - make_interval(secs => $13::integer / 1000.0)"
        "  THEN now() ELSE instances.fresh_since END,"
        " spool_events = EXCLUDED.spool_events, spool_bytes = EXCLUDED.spool_bytes,"
        " cpu_permille = EXCLUDED.cpu_permille, mem_permille = EXCLUDED.mem_permille,"
        " disk_permille = EXCLUDED.disk_permille, balance_provider = EXCLUDED.balance_provider,"
        " balance_currency = EXCLUDED.balance_currency, balance_total = EXCLUDED.balance_total,"
        " balance_available = EXCLUDED.balance_available, left_at = NULL"
        //  A report that left before the goodbye may arrive after it (through
        //  another accounting instance): it does not bring the row back. An
        //  instance started again under the same name does, seconds later.
        " WHERE instances.left_at IS NULL OR instances.left_at < now() - interval '10 seconds'",
        13, values);
    PQclear (res);
    return res ? 0 : -1;
}

char *
alert_store_handle (usage_store_t *db, const key_policy_t *policy, const char *currency, const char *op,
                    const void *body, size_t size, uint32_t *status)
{
    json_error_t jerr;
    json_t *in = size ? json_loadb (body, size, 0, &jerr) : json_object ();
    if (!json_is_object (in)) {
        json_decref (in);
        return s_error (status, 400, "The body must be a JSON object.");
    }
    char *answer;
    if (strcmp (op, "lease") == 0)
        answer = s_lease (db, in, status);
    else if (strcmp (op, "state") == 0)
        answer = s_state (db, policy, currency, in, status);
    else if (strcmp (op, "claim") == 0)
        answer = s_claim (db, in, status);
    else if (strcmp (op, "resolve") == 0)
        answer = s_resolve (db, in, status);
    else if (strcmp (op, "outbox") == 0)
        answer = s_outbox (db, in, status);
    else if (strcmp (op, "delivered") == 0)
        answer = s_delivered (db, in, status);
    else {
        *status = 404;
        answer = gw_error_json ("invalid_request_error", "unknown_operation", "op", "Unknown alerter operation: %s",
                                op);
    }
    json_decref (in);
    return answer;
}

void
alert_store_test (bool verbose)
{
    if (verbose)
        printf (" * alert_store: ");
    //  Everything that needs no database: input checks answer 400 before any
    //  statement runs (the store is not connected, so a statement would 503).
    usage_store_t *db = usage_store_new ("host=127.0.0.1 port=1 connect_timeout=1", "CNY");
    key_policy_t policy = { 0 };
    uint32_t status = 0;
    char *a = alert_store_handle (db, &policy, "CNY", "nope", "{}", 2, &status);
    assert (status == 404 && strstr (a, "unknown_operation"));
    free (a);
    a = alert_store_handle (db, &policy, "CNY", "claim", "[1]", 3, &status);
    assert (status == 400);
    free (a);
    a = alert_store_handle (db, &policy, "CNY", "claim", "{\"rule\":\"r\"}", 12, &status);
    assert (status == 400 && strstr (a, "subject"));
    free (a);
    a = alert_store_handle (db, &policy, "CNY", "lease", "{\"alerter\":\"x\",\"ttl_ms\":5}", 26, &status);
    assert (status == 400);
    free (a);
    a = alert_store_handle (db, &policy, "CNY", "state", "{\"window_s\":300}", 16, &status);
    assert (status == 503);
    free (a);
    usage_store_destroy (&db);
    if (verbose)
        printf ("OK\n");
}
