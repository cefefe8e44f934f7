/*  alert_rules.h: from accounting's figures to alerts, as a pure function.

    The rules read the "state" answer (docs/alerter.md) and say what should be
    claimed and what resolved. They keep nothing between evaluations: whether
    an alert was already sent is accounting's to know (claims are unique per
    rule, subject, period and level), so every alerter, restarted or not,
    evaluates the same figures to the same claims.

    Rules:
      budget_<period>  a key's spend in the current UTC day, week, month or in
                       total crossing each fraction of its effective budget
                       (GW_ALERT_BUDGET_LEVELS, default 0.8,1); periodic: once
                       per key, period and level
      spend_<period>   the same for the overall spend against
                       GW_ALERT_SPEND_LIMIT_DAY / _WEEK / _MONTH (unset: none)
      error_rate       failed upstream calls over the window above
                       GW_ALERT_ERROR_RATE (default 0.05), with at least
                       GW_ALERT_ERROR_MIN_CALLS calls (default 20); episodic:
                       open until the rate is back under, then resolved
      latency_p95      the 95th percentile of the time to the first byte of
                       the window's answers above GW_ALERT_LATENCY_P95_MS
                       (default 10000; 0: off), with at least
                       GW_ALERT_LATENCY_MIN_CALLS answers (default 20); episodic
      silent           a dispatcher or accounting instance not heard from for
                       GW_ALERT_SILENT_S (default 60); episodic per instance
      spool            a dispatcher's spool holding more than
                       GW_ALERT_SPOOL_EVENTS unsent events (default 100000)
      host_cpu, host_memory, host_disk  a host's CPU, memory or (spool's)
                       disk above GW_ALERT_HOST_CPU / _MEMORY / _DISK percent
                       (80, 85, 90); episodic per host
      balance          a provider's account balance (GET /user/balance, read by
                       the dispatchers) under GW_ALERT_BALANCE_MIN, or the
                       account not available; episodic per provider
      rate_rpm, rate_tpm  a key's sliding-minute requests or tokens at
                       GW_ALERT_RATE_LEVEL (default 0.9) of its limit; episodic
                       per key
*/
#ifndef ALERT_RULES_H_INCLUDED
#define ALERT_RULES_H_INCLUDED

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define ALERT_LEVELS_MAX 8

typedef struct {
    double budget_levels[ALERT_LEVELS_MAX];  //  ascending fractions, e.g. 0.8, 1
    int nlevels;
    int64_t spend_limit_pico[3];  //  overall day, week, month; -1: none
    double error_rate;  //  fraction of failed calls that alerts
    int64_t error_min_calls;  //  fewer calls in the window never alert
    int error_window_s;
    int latency_p95_ms;  //  0: no latency rule
    int64_t latency_min_calls;
    double rate_level;  //  fraction of a key's rpm/tpm that alerts
    int silent_s;  //  an instance not heard from for this long is silent
    int64_t spool_events;  //  a dispatcher spool holding more is growing
    int host_permille[3];  //  cpu, memory, disk thresholds
    double balance_min;  //  a provider balance under this alerts; < 0: only when unavailable
} alert_rules_config_t;

/*  Reads the configuration from the environment. Returns 0, or -1 (logged) on
    a malformed value. */
int alert_rules_config_from_env (alert_rules_config_t *config);

/*  Evaluates state. Returns {"claims":[{rule, subject, period, level, severity,
    title, text, alert}], "resolves":[{rule, subject}]} (new reference). */
json_t *alert_rules_evaluate (const alert_rules_config_t *config, json_t *state);

void alert_rules_test (bool verbose);

#endif
