/*  key_limits.c: the arithmetic of key limits and budgets, without I/O. */
#include "key_limits.h"
#include "gw_log.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PICO_PER_UNIT INT64_C (1000000000000)
#define PICO_PER_MICRO INT64_C (1000000)
#define WINDOW_MS 60000

const char *const key_limit_names[KEY_NLIMITS] = { "rpm",        "tpm",         "concurrency", "budget_day",
                                                   "budget_week", "budget_month", "budget_total" };

bool
key_limit_is_money (key_limit_t limit)
{
    assert (limit < KEY_NLIMITS);
    return limit >= KEY_BUDGET_DAY;
}

int64_t
key_limit_effective (int64_t value, int64_t dflt)
{
    assert (dflt != KEY_LIMIT_DEFAULT);
    return value == KEY_LIMIT_DEFAULT ? dflt : value;
}

int
key_money_parse (const char *text, int64_t *pico)
{
    assert (text && pico);
    const char *s = text;
    int64_t units = 0, fraction = 0;
    size_t digits = 0, places = 0;
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        if (units > (INT64_MAX / PICO_PER_UNIT) / 10 + 1)
            return -1;
        units = units * 10 + (*s - '0');
    }
    if (digits == 0)
        return -1;
    if (*s == '.') {
        for (s++; *s >= '0' && *s <= '9'; s++, places++) {
            if (places == 6)
                return -1;
            fraction = fraction * 10 + (*s - '0');
        }
        if (places == 0)
            return -1;
    }
    if (*s)
        return -1;
    for (size_t i = places; i < 6; i++)
        fraction *= 10;
    //  units * 1e12 + fraction * 1e6 must fit a bigint.
    if (units > (INT64_MAX - fraction * PICO_PER_MICRO) / PICO_PER_UNIT)
        return -1;
    *pico = units * PICO_PER_UNIT + fraction * PICO_PER_MICRO;
    return 0;
}

void
key_money_format (int64_t pico, char *out, size_t size)
{
    assert (pico >= 0);
    char text[48];
    int len = snprintf (text, sizeof text, "%" PRId64 ".%012" PRId64, pico / PICO_PER_UNIT, pico % PICO_PER_UNIT);
    //  Trailing zeros go, down to cents: "100.00", "20.50", "1.234567".
    int min_len = len - 10;
    while (len > min_len && text[len - 1] == '0')
        len--;
    text[len] = 0;
    snprintf (out, size, "%s", text);
}

int
key_limit_from_env (key_limit_t limit, const char *name, int64_t *value)
{
    const char *text = getenv (name);
    if (!text || !*text) {
        *value = KEY_LIMIT_UNLIMITED;
        return 0;
    }
    if (key_limit_is_money (limit)) {
        if (key_money_parse (text, value) == 0)
            return 0;
    }
    else {
        char *end;
        long long n = strtoll (text, &end, 10);
        if (*end == 0 && n >= 0 && text[0] >= '0' && text[0] <= '9') {
            *value = n;
            return 0;
        }
    }
    gw_error ("limits", "invalid value name=%s value=%s expected=%s", name, text,
              key_limit_is_money (limit) ? "a decimal amount" : "a non-negative integer");
    return -1;
}

uint64_t
key_output_cap (const char *spec, const char *model, uint64_t dflt)
{
    size_t model_len = strlen (model);
    for (const char *s = spec; s && *s;) {
        const char *end = strchr (s, ',');
        size_t len = end ? (size_t) (end - s) : strlen (s);
        const char *eq = memchr (s, '=', len);
        if (eq && (size_t) (eq - s) == model_len && memcmp (s, model, model_len) == 0) {
            char *stop;
            unsigned long long n = strtoull (eq + 1, &stop, 10);
            if (stop == s + len && stop > eq + 1)
                return n;
        }
        s = end ? end + 1 : NULL;
    }
    return dflt;
}

int64_t
key_max_cost (uint64_t prompt_tokens, uint64_t output_cap, uint64_t input_price, uint64_t output_price)
{
    //  tokens × micro-units per 1M tokens is pico-units exactly (see price_table.h).
    unsigned __int128 cost = (unsigned __int128) prompt_tokens * input_price
                             + (unsigned __int128) output_cap * output_price;
    return cost > INT64_MAX ? INT64_MAX : (int64_t) cost;
}

//  The window's content times 60000, plus need, against the limit times 60000.
static __int128
s_room (const key_window_t *w, uint64_t need)
{
    return (__int128) w->limit * WINDOW_MS - (__int128) w->prev * (WINDOW_MS - w->elapsed_ms)
           - ((__int128) w->curr + need) * WINDOW_MS;
}

bool
key_window_fits (const key_window_t *w, uint64_t need)
{
    return s_room (w, need) >= 0;
}

uint64_t
key_window_remaining (const key_window_t *w, uint64_t need)
{
    __int128 room = s_room (w, need);
    return room <= 0 ? 0 : (uint64_t) (room / WINDOW_MS);
}

uint64_t
key_window_reset_ms (const key_window_t *w)
{
    if (w->curr)
        return (uint64_t) (2 * WINDOW_MS - w->elapsed_ms);
    if (w->prev)
        return (uint64_t) (WINDOW_MS - w->elapsed_ms);
    return 0;
}

int64_t
key_window_retry_ms (const key_window_t *w, uint64_t need)
{
    if (need > w->limit)
        return -1;
    if (key_window_fits (w, need))
        return 0;
    //  Still in this minute: prev * (60000 - x) <= (limit - curr - need) * 60000
    //  holds from x = 60000 - floor(room * 60000 / prev) on.
    if ((__int128) w->curr + need <= w->limit && w->prev) {
        __int128 room = (__int128) (w->limit - w->curr - need) * WINDOW_MS / w->prev;
        __int128 x = WINDOW_MS - room;
        if (x < WINDOW_MS)
            return (int64_t) (x > w->elapsed_ms ? x - w->elapsed_ms : 0);
    }
    //  In the next minute the current one becomes the previous, nothing new.
    __int128 x = 0;
    if (w->curr) {
        x = WINDOW_MS - (__int128) (w->limit - need) * WINDOW_MS / w->curr;
        if (x < 0)
            x = 0;
    }
    return (int64_t) (WINDOW_MS - w->elapsed_ms + x);
}

void
key_duration_format (uint64_t ms, char *out, size_t size)
{
    if (ms < 1000)
        snprintf (out, size, "%" PRIu64 "ms", ms);
    else if (ms < 60000) {
        //  Tenths, rounded up: a client waiting that long is never early.
        uint64_t tenths = (ms + 99) / 100;
        if (tenths % 10)
            snprintf (out, size, "%" PRIu64 ".%" PRIu64 "s", tenths / 10, tenths % 10);
        else
            snprintf (out, size, "%" PRIu64 "s", tenths / 10);
    }
    else
        snprintf (out, size, "%" PRIu64 "m%" PRIu64 "s", ms / 60000, (ms % 60000 + 999) / 1000);
}

//  --------------------------------------------------------------------------
//  Selftest

static bool
s_money_is (int64_t pico, const char *expected)
{
    char text[48];
    key_money_format (pico, text, sizeof text);
    return strcmp (text, expected) == 0;
}

void
key_limits_test (bool verbose)
{
    if (verbose)
        printf (" * key_limits: ");

    //  Amounts parse exactly, to pico-units, or not at all.
    int64_t pico = 42;
    assert (key_money_parse ("100", &pico) == 0 && pico == 100 * PICO_PER_UNIT);
    assert (key_money_parse ("0.50", &pico) == 0 && pico == PICO_PER_UNIT / 2);
    assert (key_money_parse ("1.234567", &pico) == 0 && pico == 1234567000000);
    assert (key_money_parse ("0", &pico) == 0 && pico == 0);
    assert (key_money_parse ("9223372", &pico) == 0 && pico == 9223372 * PICO_PER_UNIT);
    assert (key_money_parse ("9223372.036854", &pico) == 0 && pico == 9223372036854000000);
    const char *bad[] = { "", "-1", "+1", "1.", ".5", "1.2345678", "1e3", " 1", "1 ", "abc", "9223373",
                          "9223372.036855", "99999999999999999999999", "0x10", "1,5", "NaN", "unlimited" };
    pico = 42;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert (key_money_parse (bad[i], &pico) == -1);
    assert (pico == 42);

    //  Formatting: cents at least, every significant digit, exact.
    assert (s_money_is (0, "0.00"));
    assert (s_money_is (100 * PICO_PER_UNIT, "100.00"));
    assert (s_money_is (20500000000000, "20.50"));
    assert (s_money_is (99980000000000, "99.98"));
    assert (s_money_is (1234567000000, "1.234567"));
    assert (s_money_is (1, "0.000000000001"));
    assert (s_money_is (INT64_MAX, "9223372.036854775807"));

    //  Effective limits and environment defaults.
    assert (key_limit_effective (KEY_LIMIT_DEFAULT, 100) == 100);
    assert (key_limit_effective (KEY_LIMIT_DEFAULT, KEY_LIMIT_UNLIMITED) == KEY_LIMIT_UNLIMITED);
    assert (key_limit_effective (KEY_LIMIT_UNLIMITED, 100) == KEY_LIMIT_UNLIMITED);
    assert (key_limit_effective (0, 100) == 0);
    int64_t value = 7;
    unsetenv ("GW_TEST_LIMIT");
    assert (key_limit_from_env (KEY_RPM, "GW_TEST_LIMIT", &value) == 0 && value == KEY_LIMIT_UNLIMITED);
    setenv ("GW_TEST_LIMIT", "100", 1);
    assert (key_limit_from_env (KEY_RPM, "GW_TEST_LIMIT", &value) == 0 && value == 100);
    assert (key_limit_from_env (KEY_BUDGET_DAY, "GW_TEST_LIMIT", &value) == 0 && value == 100 * PICO_PER_UNIT);
    setenv ("GW_TEST_LIMIT", "0.5", 1);
    assert (key_limit_from_env (KEY_RPM, "GW_TEST_LIMIT", &value) == -1);
    assert (key_limit_from_env (KEY_BUDGET_MONTH, "GW_TEST_LIMIT", &value) == 0 && value == PICO_PER_UNIT / 2);
    setenv ("GW_TEST_LIMIT", "-3", 1);
    assert (key_limit_from_env (KEY_TPM, "GW_TEST_LIMIT", &value) == -1);
    unsetenv ("GW_TEST_LIMIT");
    assert (key_limit_is_money (KEY_BUDGET_TOTAL) && !key_limit_is_money (KEY_CONCURRENCY));
    assert (strcmp (key_limit_names[KEY_BUDGET_WEEK], "budget_week") == 0);

    //  Output caps and the maximum cost: ¥2 and ¥3 per 1M tokens.
    const char *caps = "deepseek-chat=8192,deepseek-reasoner=65536";
    assert (key_output_cap (caps, "deepseek-chat", 1) == 8192);
    assert (key_output_cap (caps, "deepseek-reasoner", 1) == 65536);
    assert (key_output_cap (caps, "deepseek", 1) == 1);
    assert (key_output_cap ("m=x,m=5", "m", 1) == 5);
    assert (key_output_cap ("", "m", 9) == 9);
    assert (key_max_cost (1000, 8192, 2000000, 3000000) == 2000000000 + 24576000000);
    assert (key_max_cost (UINT64_MAX, 1, UINT64_MAX, 1) == INT64_MAX);
    assert (key_max_cost (0, 0, 5, 5) == 0);

    //  Sliding windows: 10 per minute, 6 in the previous minute, 3 in this one,
    //  15 s into it: 6 × 0.75 + 3 = 7.5 held.
    key_window_t w = { .limit = 10, .prev = 6, .curr = 3, .elapsed_ms = 15000 };
    assert (key_window_fits (&w, 1) && key_window_fits (&w, 2) && !key_window_fits (&w, 3));
    assert (key_window_remaining (&w, 1) == 1);  //  8.5 held, 1.5 left
    assert (key_window_remaining (&w, 2) == 0);
    assert (key_window_retry_ms (&w, 1) == 0);
    //  3 more need 6 × (60000 - x) <= 4 × 60000, from x = 20000: 5 s from now.
    assert (key_window_retry_ms (&w, 3) == 5000);
    assert (key_window_reset_ms (&w) == 105000);
    //  Full this minute: only the next one helps, where 10 × (60000 - x)
    //  <= 9 × 60000 from x = 6000.
    w = (key_window_t) { .limit = 10, .prev = 0, .curr = 10, .elapsed_ms = 30000 };
    assert (!key_window_fits (&w, 1));
    assert (key_window_retry_ms (&w, 1) == 30000 + 6000);
    assert (key_window_reset_ms (&w) == 90000);
    w.curr = 0;
    w.prev = 4;
    assert (key_window_reset_ms (&w) == 30000 && key_window_remaining (&w, 0) == 8);
    //  Never: more than the limit at once, or a limit of 0.
    w = (key_window_t) { .limit = 100, .prev = 0, .curr = 0, .elapsed_ms = 0 };
    assert (key_window_retry_ms (&w, 101) == -1 && key_window_retry_ms (&w, 100) == 0);
    w.limit = 0;
    assert (!key_window_fits (&w, 1) && key_window_retry_ms (&w, 1) == -1 && key_window_remaining (&w, 0) == 0);
    //  The retry time found is the first ms that fits, checked by brute force.
    for (uint64_t prev = 0; prev <= 12; prev += 3)
        for (uint64_t curr = 0; curr <= 12; curr += 4)
            for (int64_t e = 0; e < WINDOW_MS; e += 7919) {
                w = (key_window_t) { .limit = 12, .prev = prev, .curr = curr, .elapsed_ms = e };
                int64_t t = key_window_retry_ms (&w, 2);
                assert (t >= 0);
                key_window_t at = w;
                if (e + t < WINDOW_MS)
                    at.elapsed_ms = e + t;
                else if (e + t < 2 * WINDOW_MS)
                    at = (key_window_t) { .limit = 12, .prev = curr, .curr = 0, .elapsed_ms = e + t - WINDOW_MS };
                else
                    at = (key_window_t) { .limit = 12, .prev = 0, .curr = 0, .elapsed_ms = 0 };
                assert (key_window_fits (&at, 2));
                if (t > 0) {
                    at.elapsed_ms--;
                    if (at.elapsed_ms >= 0)
                        assert (!key_window_fits (&at, 2));
                }
            }

    char text[32];
    key_duration_format (600, text, sizeof text);
    assert (strcmp (text, "600ms") == 0);
    key_duration_format (1500, text, sizeof text);
    assert (strcmp (text, "1.5s") == 0);
    key_duration_format (2000, text, sizeof text);
    assert (strcmp (text, "2s") == 0);
    key_duration_format (360000, text, sizeof text);
    assert (strcmp (text, "6m0s") == 0);
    if (verbose)
        printf ("OK\n");
}
