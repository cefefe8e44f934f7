/*  key_limits.h: the arithmetic of key limits and budgets, without I/O.

    A limit of a key is stored as a number (0 allows nothing), "default" (the
    database's NULL: the service default applies) or "unlimited" (-1). Budgets
    are exact amounts of currency in pico-units (1e-12), written as decimals with
    up to 6 places. Rate limits are sliding one-minute windows over minute
    buckets: the previous minute counts for the part of it still inside the
    window, so at ms `elapsed` into the current minute the window holds
        prev * (60000 - elapsed) / 60000 + curr
    and a request needing `need` fits when that plus need is within the limit.
    Everything here is integer arithmetic, the same PostgreSQL does in gw_admit.
*/
#ifndef KEY_LIMITS_H_INCLUDED
#define KEY_LIMITS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEY_LIMIT_DEFAULT INT64_C (-2)  //  NULL in the database: the service default applies
#define KEY_LIMIT_UNLIMITED INT64_C (-1)

typedef enum {
    KEY_RPM,
    KEY_TPM,
    KEY_CONCURRENCY,
    KEY_BUDGET_DAY,
    KEY_BUDGET_WEEK,
    KEY_BUDGET_MONTH,
    KEY_BUDGET_TOTAL,
    KEY_NLIMITS
} key_limit_t;

/*  The API field name of each limit ("rpm", ..., "budget_total"). */
extern const char *const key_limit_names[KEY_NLIMITS];

/*  True for the budgets (amounts of money), false for the counts. */
bool key_limit_is_money (key_limit_t limit);

/*  The limit that applies: value, or dflt when value is KEY_LIMIT_DEFAULT;
    KEY_LIMIT_UNLIMITED (-1) when there is none. dflt is never DEFAULT. */
int64_t key_limit_effective (int64_t value, int64_t dflt);

/*  Parses a non-negative decimal amount ("100", "0.50", "1.234567"; at most 6
    decimal places, no sign, exponent or spaces) into pico-units that fit a
    bigint. Returns 0, or -1 (pico untouched). */
int key_money_parse (const char *text, int64_t *pico);

/*  Writes pico as an exact decimal with at least 2 and at most 12 decimal
    places ("100.00", "1.234567", "0.000000000001") into out. */
void key_money_format (int64_t pico, char *out, size_t size);

/*  Reads a limit from the environment: unset or empty is unlimited; a budget is
    a decimal amount, any other limit a non-negative integer. Returns 0, or -1
    (logged) when the value is malformed. */
int key_limit_from_env (key_limit_t limit, const char *name, int64_t *value);

/*  The output cap of a model from a "model=tokens,model=tokens" list, or dflt. */
uint64_t key_output_cap (const char *spec, const char *model, uint64_t dflt);

/*  The most a call may cost in pico-units: prompt tokens at the highest input
    price plus output cap at the highest output price (micro-units per 1M
    tokens), saturating at INT64_MAX. */
int64_t key_max_cost (uint64_t prompt_tokens, uint64_t output_cap, uint64_t input_price, uint64_t output_price);

/*  A sliding window at one moment. */
typedef struct {
    uint64_t limit;  //  per minute
    uint64_t prev, curr;  //  counts of the previous and the current minute
    int64_t elapsed_ms;  //  into the current minute, [0, 60000)
} key_window_t;

/*  True when need more fits in the window now. */
bool key_window_fits (const key_window_t *w, uint64_t need);

/*  What is left in the window once need more is counted, rounded down, >= 0. */
uint64_t key_window_remaining (const key_window_t *w, uint64_t need);

/*  Ms until the window holds nothing counted so far. */
uint64_t key_window_reset_ms (const key_window_t *w);

/*  Ms from now until need more would fit, if nothing else is counted; 0 when
    it fits now; -1 when it never can (need above the limit). */
int64_t key_window_retry_ms (const key_window_t *w, uint64_t need);

/*  "600ms", "1.5s", "6m0s": a duration as the ratelimit headers write it. */
void key_duration_format (uint64_t ms, char *out, size_t size);

void key_limits_test (bool verbose);

#endif
