/*  usage_report.c: usage reports as JSON, summed exactly by PostgreSQL. */
#include "usage_report.h"
#include "gw_error.h"
#include "gw_log.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  Grouping expressions, chosen by name: nothing from the request reaches the SQL
    text itself. */
static const struct {
    const char *name;
    const char *expr;
} s_groups[] = {
    { "none", NULL },
    { "model", "model" },
    { "provider", "provider" },
    { "key", "coalesce(api_key_id::text, 'none')" },
    { "day", "to_char(date_trunc('day', started_at), 'YYYY-MM-DD')" },
};

static const char *s_periods[] = { "today", "yesterday", "week", "month", "all", "custom" };

static const char s_bounds[] =
    "WITH b AS (SELECT"
    " CASE $1 WHEN 'today' THEN date_trunc('day', now())"
    "  WHEN 'yesterday' THEN date_trunc('day', now()) - interval '1 day'"
    "  WHEN 'week' THEN date_trunc('week', now())"
    "  WHEN 'month' THEN date_trunc('month', now())"
    "  WHEN 'all' THEN '-infinity'::timestamptz"
    "  ELSE to_timestamp($2::bigint / 1000.0) END AS lo,"
    " CASE $1 WHEN 'today' THEN date_trunc('day', now()) + interval '1 day'"
    "  WHEN 'yesterday' THEN date_trunc('day', now())"
    "  WHEN 'week' THEN date_trunc('week', now()) + interval '1 week'"
    "  WHEN 'month' THEN date_trunc('month', now()) + interval '1 month'"
    "  WHEN 'all' THEN 'infinity'::timestamptz"
    "  ELSE to_timestamp($3::bigint / 1000.0) END AS hi) ";

static char *
s_error (uint32_t *status, uint32_t code, const char *message)
{
    *status = code;
    return gw_error_json (code == 503 ? "api_error" : "invalid_request_error", NULL, NULL, "%s", message);
}

static json_t *
s_row (PGresult *res, int r)
{
    //  Counts and sums come back as text; integers fit in json_int_t (int64),
    //  the cost is kept as text to stay exact.
    return json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:I, s:I}", "calls",
                      (json_int_t) strtoll (PQgetvalue (res, r, 1), NULL, 10), "requests",
                      (json_int_t) strtoll (PQgetvalue (res, r, 2), NULL, 10), "cache_hit_tokens",
                      (json_int_t) strtoll (PQgetvalue (res, r, 3), NULL, 10), "cache_miss_tokens",
                      (json_int_t) strtoll (PQgetvalue (res, r, 4), NULL, 10), "prompt_tokens",
                      (json_int_t) (strtoll (PQgetvalue (res, r, 3), NULL, 10) + strtoll (PQgetvalue (res, r, 4), NULL, 10)),
                      "completion_tokens", (json_int_t) strtoll (PQgetvalue (res, r, 5), NULL, 10),
                      "reasoning_tokens", (json_int_t) strtoll (PQgetvalue (res, r, 6), NULL, 10), "cost",
                      PQgetvalue (res, r, 7), "cost_pico", PQgetvalue (res, r, 8), "unpriced_calls",
                      (json_int_t) strtoll (PQgetvalue (res, r, 9), NULL, 10), "cached_requests",
                      (json_int_t) strtoll (PQgetvalue (res, r, 11), NULL, 10));
}

char *
usage_report_run (usage_store_t *store, const gw_report_request_t *request, const char *currency,
                  uint32_t *status)
{
    const char *expr = NULL;
    bool known = false;
    for (size_t i = 0; i < sizeof s_groups / sizeof s_groups[0]; i++)
        if (strcmp (request->group_by[0] ? request->group_by : "none", s_groups[i].name) == 0) {
            expr = s_groups[i].expr;
            known = true;
        }
    if (!known)
        return s_error (status, 400, "group_by must be one of none, model, provider, key, day");
    bool period_ok = false;
    for (size_t i = 0; i < sizeof s_periods / sizeof s_periods[0]; i++)
        period_ok |= strcmp (request->period, s_periods[i]) == 0;
    if (!period_ok)
        return s_error (status, 400, "period must be one of today, yesterday, week, month, all, custom");
    if (strcmp (request->period, "custom") == 0 && request->from_ms >= request->to_ms)
        return s_error (status, 400, "a custom period needs from < to");

    char sql[4096], select[160], is_total[160], grouping[200];
    //  GROUPING SETS gives the groups and the grand total in one pass; the total
    //  row is the one where grouping() is 1. Without grouping there is only it.
    if (expr) {
        snprintf (select, sizeof select, "%s", expr);
        snprintf (is_total, sizeof is_total, "grouping(%s)", expr);
        snprintf (grouping, sizeof grouping, "GROUPING SETS ((%s), ())", expr);
    }
    else {
        snprintf (select, sizeof select, "NULL::text");
        snprintf (is_total, sizeof is_total, "1");
        snprintf (grouping, sizeof grouping, "GROUPING SETS (())");
    }
    snprintf (sql, sizeof sql,
              //  Answers from the response cache are requests, not calls: their
              //  tokens (those of the call that made the answer) bought nothing.
              "%sSELECT %s AS grp, count(*) FILTER (WHERE NOT cached), count(DISTINCT request_id),"
              " coalesce(sum(cache_hit_tokens) FILTER (WHERE NOT cached), 0),"
              " coalesce(sum(cache_miss_tokens) FILTER (WHERE NOT cached), 0),"
              " coalesce(sum(completion_tokens) FILTER (WHERE NOT cached), 0),"
              " coalesce(sum(reasoning_tokens) FILTER (WHERE NOT cached), 0),"
              " trim_scale(coalesce(sum(cost_pico), 0)::numeric / 1000000000000)::text,"
              " coalesce(sum(cost_pico), 0)::text, count(*) FILTER (WHERE cost_pico IS NULL),"
              " %s, count(*) FILTER (WHERE cached),"
              " (SELECT CASE WHEN isfinite(lo) THEN to_char(lo, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') END FROM b),"
              " (SELECT CASE WHEN isfinite(hi) THEN to_char(hi, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') END FROM b)"
              " FROM usage_events, b WHERE started_at >= b.lo AND started_at < b.hi"
              " AND ($4 = '' OR api_key_id::text = $4) AND currency = $5"
              " GROUP BY %s ORDER BY %s, 1",
              s_bounds, select, is_total, grouping, is_total);
    char from[32], to[32];
    snprintf (from, sizeof from, "%llu", (unsigned long long) request->from_ms);
    snprintf (to, sizeof to, "%llu", (unsigned long long) request->to_ms);
    //  Only rows costed in this instance's currency: a total never mixes them.
    const char *values[5] = { request->period, from, to, request->api_key_id, currency };
    PGresult *res = usage_store_query (store, sql, 5, values);
    if (!res)
        return s_error (status, 503, "usage reports are unavailable: the database cannot be reached");
    json_t *data = json_array ();
    json_t *total = NULL;
    for (int r = 0; r < PQntuples (res); r++) {
        json_t *row = s_row (res, r);
        if (strcmp (PQgetvalue (res, r, 10), "1") == 0)
            total = row;
        else {
            json_object_set_new (row, "group", json_string (PQgetvalue (res, r, 0)));
            json_array_append_new (data, row);
        }
    }
    if (!total) {
        //  No rows at all in the period: a zero total, bounds still reported.
        total = json_pack ("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:i, s:i}", "calls", 0, "requests", 0,
                           "cache_hit_tokens", 0, "cache_miss_tokens", 0, "prompt_tokens", 0,
                           "completion_tokens", 0, "reasoning_tokens", 0, "cost", "0", "cost_pico", "0",
                           "unpriced_calls", 0, "cached_requests", 0);
    }
    //  Bounds are null for "all" (infinite), and when the period has no rows.
    bool bounded = PQntuples (res) && !PQgetisnull (res, 0, 12);
    json_t *report = json_pack ("{s:s, s:s, s:s?, s:s?, s:s, s:s, s:o, s:o}", "object", "usage_report", "period",
                                request->period, "from", bounded ? PQgetvalue (res, 0, 12) : NULL, "to",
                                bounded ? PQgetvalue (res, 0, 13) : NULL, "currency", currency, "group_by",
                                request->group_by[0] ? request->group_by : "none", "total", total, "data", data);
    PQclear (res);
    char *body = json_dumps (report, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (report);
    *status = 200;
    return body;
}
