/*  key_store.c: gateway keys, admissions and reservations in PostgreSQL. */
#include "key_store.h"
#include "gw_buf.h"
#include "gw_log.h"

#include <assert.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  The database column of each limit, in key_limit_t order. */
static const char *const s_columns[KEY_NLIMITS] = { "rpm",           "tpm",             "concurrency",
                                                    "budget_day_pico", "budget_week_pico", "budget_month_pico",
                                                    "budget_total_pico" };

#define RFC3339(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/*  A record's columns, in the order s_record reads them. */
#define KEY_COLUMNS                                                                                  \
    "k.id, k.name, k.prefix, array_to_json(k.models)::text, " RFC3339 ("k.created_at") ", "          \
    RFC3339 ("k.expires_at") ", " RFC3339 ("k.revoked_at") ","                                       \
    " coalesce(floor(extract(epoch FROM k.expires_at) * 1000)::bigint, 0),"                          \
    " k.rpm, k.tpm, k.concurrency, k.budget_day_pico, k.budget_week_pico, k.budget_month_pico,"     \
    " k.budget_total_pico, k.cache_ttl_s"

/*  Spend of the current UTC periods, from key_spend (what stored usage cost). */
#define KEY_SPEND_JOIN                                                                               \
    " LEFT JOIN LATERAL (SELECT"                                                                     \
    "  sum(cost_pico) FILTER (WHERE period = 'day' AND period_start = date_trunc('day', now(), 'UTC')) AS day," \
    "  sum(cost_pico) FILTER (WHERE period = 'week' AND period_start = date_trunc('week', now(), 'UTC')) AS week," \
    "  sum(cost_pico) FILTER (WHERE period = 'month' AND period_start = date_trunc('month', now(), 'UTC'))"     \
    "   AS month,"                                                                                   \
    "  sum(cost_pico) FILTER (WHERE period = 'total') AS total"                                      \
    "  FROM key_spend WHERE key_id = k.id AND period <> 'minute') s ON true"

#define KEY_SPEND_COLUMNS ", coalesce(s.day, 0), coalesce(s.week, 0), coalesce(s.month, 0), coalesce(s.total, 0)"

static int64_t
s_int (PGresult *res, int row, int col, int64_t if_null)
{
    return PQgetisnull (res, row, col) ? if_null : strtoll (PQgetvalue (res, row, col), NULL, 10);
}

static void
s_text (PGresult *res, int row, int col, char *out, size_t size)
{
    snprintf (out, size, "%s", PQgetisnull (res, row, col) ? "" : PQgetvalue (res, row, col));
}

static void
s_record (PGresult *res, int row, key_record_t *r, bool with_spend)
{
    memset (r, 0, sizeof *r);
    r->id = (uint64_t) s_int (res, row, 0, 0);
    r->name = strdup (PQgetvalue (res, row, 1));
    r->prefix = strdup (PQgetvalue (res, row, 2));
    r->models_json = strdup (PQgetvalue (res, row, 3));
    s_text (res, row, 4, r->created_at, sizeof r->created_at);
    s_text (res, row, 5, r->expires_at, sizeof r->expires_at);
    s_text (res, row, 6, r->revoked_at, sizeof r->revoked_at);
    r->expires_ms = s_int (res, row, 7, 0);
    for (int i = 0; i < KEY_NLIMITS; i++)
        r->limits[i] = s_int (res, row, 8 + i, KEY_LIMIT_DEFAULT);
    r->cache_ttl_s = s_int (res, row, 8 + KEY_NLIMITS, 0);
    for (int i = 0; with_spend && i < 4; i++)
        r->spend[i] = s_int (res, row, 9 + KEY_NLIMITS + i, 0);
}

void
key_record_clear (key_record_t *record)
{
    free (record->name);
    free (record->prefix);
    free (record->models_json);
    memset (record, 0, sizeof *record);
}

bool
key_record_limited (const key_record_t *record, const key_policy_t *policy)
{
    for (int i = 0; i < KEY_NLIMITS; i++)
        if (key_limit_effective (record->limits[i], policy->defaults[i]) != KEY_LIMIT_UNLIMITED)
            return true;
    return false;
}

int
key_store_lookup (usage_store_t *db, const char *key_hash, key_record_t *record)
{
    const char *values[1] = { key_hash };
    PGresult *res = usage_store_exec (db,
                                      "SELECT " KEY_COLUMNS " FROM api_keys k WHERE k.key_hash = $1"
                                      " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())",
                                      1, values);
    if (!res)
        return -1;
    int found = PQntuples (res) == 1;
    if (found)
        s_record (res, 0, record, false);
    PQclear (res);
    return found;
}

static int
s_command (usage_store_t *db, const char *sql)
{
    PGresult *res = usage_store_exec (db, sql, 0, NULL);
    PQclear (res);
    return res ? 0 : -1;
}

int
key_store_begin (usage_store_t *db)
{
    return s_command (db, "BEGIN");
}

int
key_store_begin_lazy (usage_store_t *db)
{
    return s_command (db, "BEGIN") || s_command (db, "SET LOCAL synchronous_commit = off") ? -1 : 0;
}

int
key_store_commit (usage_store_t *db)
{
    return s_command (db, "COMMIT");
}

void
key_store_rollback (usage_store_t *db)
{
    if (usage_store_ready (db))
        s_command (db, "ROLLBACK");
}

//  Decimal text of a value, or NULL (SQL NULL) for "no limit".
static const char *
s_param (char *buf, size_t size, int64_t value)
{
    if (value < 0)
        return NULL;
    snprintf (buf, size, "%" PRId64, value);
    return buf;
}

/*  A text[] literal of the strings: {"a","b"}, each quoted, with \ and "
    escaped. Caller frees. */
static char *
s_text_array (const gw_strlist_t *list)
{
    gw_buf_t buf = { 0 };
    gw_buf_append (&buf, "{", 1);
    for (size_t i = 0; list && i < list->count; i++) {
        if (i)
            gw_buf_append (&buf, ",", 1);
        gw_buf_append (&buf, "\"", 1);
        for (const char *c = list->items[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                gw_buf_append (&buf, "\\", 1);
            gw_buf_append (&buf, c, 1);
        }
        gw_buf_append (&buf, "\"", 1);
    }
    gw_buf_append (&buf, "}", 2);  //  with the NUL
    return gw_buf_take (&buf);
}

int
key_store_admit (usage_store_t *db, const key_policy_t *policy, const key_admission_t *a, key_verdict_t *v)
{
    char key[24], cost[24], tokens[24], defaults[KEY_NLIMITS][24], ttl[16], alive[16];
    snprintf (key, sizeof key, "%" PRIu64, a->key_id);
    snprintf (cost, sizeof cost, "%" PRId64, a->cost_pico);
    snprintf (tokens, sizeof tokens, "%" PRId64, a->tokens);
    snprintf (ttl, sizeof ttl, "%d", policy->reservation_ttl_s);
    snprintf (alive, sizeof alive, "%d", policy->alive_ttl_s);
    const char *values[14] = { a->request_id, key, a->ingress_id, cost, tokens };
    for (int i = 0; i < KEY_NLIMITS; i++)
        values[5 + i] = s_param (defaults[i], sizeof defaults[i], policy->defaults[i]);
    values[12] = ttl;
    values[13] = alive;
    char *ended = s_text_array (a->ended);
    const char *all[15];
    memcpy (all, values, sizeof values);
    all[14] = ended ? ended : "{}";
    PGresult *res = usage_store_exec_prepared (db, "gw_admit",
                                               "SELECT * FROM gw_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                                               " $11, $12, $13, $14, $15)",
                                               15, all);
    free (ended);
    if (!res)
        return -1;
    if (PQntuples (res) != 1 || PQnfields (res) != 15) {
        gw_error ("keys", "gw_admit answered rows=%d fields=%d", PQntuples (res), PQnfields (res));
        PQclear (res);
        return -1;
    }
    memset (v, 0, sizeof *v);
    v->status = (int) s_int (res, 0, 0, 503);
    s_text (res, 0, 1, v->code, sizeof v->code);
    v->reserved_pico = s_int (res, 0, 2, 0);
    v->elapsed_ms = s_int (res, 0, 3, 0);
    v->rpm_limit = s_int (res, 0, 4, -1);
    v->rpm_prev = s_int (res, 0, 5, 0);
    v->rpm_curr = s_int (res, 0, 6, 0);
    v->tpm_limit = s_int (res, 0, 7, -1);
    v->tpm_prev = s_int (res, 0, 8, 0);
    v->tpm_curr = s_int (res, 0, 9, 0);
    v->conc_limit = s_int (res, 0, 10, -1);
    v->busy = s_int (res, 0, 11, 0);
    v->budget_limit = s_int (res, 0, 12, -1);
    v->budget_used = s_int (res, 0, 13, 0);
    s_text (res, 0, 14, v->reset_at, sizeof v->reset_at);
    PQclear (res);
    return 0;
}

int
key_store_release (usage_store_t *db, const char *request_id, bool dispatched, uint32_t dispatch, uint32_t attempts)
{
    char d[16], n[16];
    snprintf (d, sizeof d, "%u", dispatch);
    snprintf (n, sizeof n, "%u", attempts);
    const char *values[4] = { request_id, dispatched ? "t" : "f", d, n };
    PGresult *res = usage_store_exec_prepared (db, "gw_release", "SELECT gw_release($1, $2, $3, $4)", 4, values);
    PQclear (res);
    return res ? 0 : -1;
}

int
key_store_alive (usage_store_t *db, const char *ingress_id, bool leaving)
{
    const char *values[1] = { ingress_id };
    PGresult *res = usage_store_exec (db,
                                      leaving ? "DELETE FROM ingress_alive WHERE ingress_id = $1"
                                              : "INSERT INTO ingress_alive (ingress_id, seen_at) VALUES ($1, now())"
                                                " ON CONFLICT (ingress_id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
                                      1, values);
    PQclear (res);
    return res ? 0 : -1;
}

int
key_store_housekeep (usage_store_t *db)
{
    //  Separate statements, each its own short transaction: none holds many
    //  locks for long next to the admissions.
    static const char *const sql[] = {
        "DELETE FROM reservations WHERE expires_at < now()",
        "DELETE FROM key_requests WHERE minute < now() - interval '3 minutes'",
        "DELETE FROM key_spend WHERE period = 'minute' AND period_start < now() - interval '3 minutes'",
        "DELETE FROM ingress_alive WHERE seen_at < now() - interval '1 day'",
        //  An instance gone a day is taken as removed on purpose (its silence alerted long ago).
        "DELETE FROM instances WHERE seen_at < now() - interval '1 day'",
    };
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++)
        if (s_command (db, sql[i]))
            return -1;
    return 0;
}

/*  The value of a limit as a statement parameter: NULL for the default. */
static const char *
s_limit_param (char *buf, size_t size, int64_t value)
{
    if (value == KEY_LIMIT_DEFAULT)
        return NULL;
    snprintf (buf, size, "%" PRId64, value);
    return buf;
}

int
key_store_create (usage_store_t *db, const char *key_hash, const char *prefix, const key_fields_t *f, uint64_t *id)
{
    char expires[24], limits[KEY_NLIMITS][24], cache_ttl[24];
    snprintf (expires, sizeof expires, "%" PRId64, f->has_expires ? f->expires_ms : 0);
    snprintf (cache_ttl, sizeof cache_ttl, "%" PRId64, f->has_cache_ttl ? f->cache_ttl_s : 0);
    const char *values[6 + KEY_NLIMITS] = { key_hash, prefix, f->has_name ? f->name : "", expires,
                                            f->has_models ? f->models_json : "[]" };
    for (int i = 0; i < KEY_NLIMITS; i++)
        values[5 + i] = s_limit_param (limits[i], sizeof limits[i], f->has_limit[i] ? f->limits[i] : KEY_LIMIT_DEFAULT);
    values[5 + KEY_NLIMITS] = cache_ttl;
    PGresult *res = usage_store_exec (
        db,
        "INSERT INTO api_keys (key_hash, prefix, name, expires_at, models, rpm, tpm, concurrency,"
        " budget_day_pico, budget_week_pico, budget_month_pico, budget_total_pico, cache_ttl_s)"
        " VALUES ($1, $2, $3, CASE WHEN $4::bigint = 0 THEN NULL ELSE to_timestamp($4::bigint / 1000.0) END,"
        " ARRAY(SELECT json_array_elements_text($5::json)), $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        6 + KEY_NLIMITS, values);
    if (!res)
        return -1;
    int rc = PQntuples (res) == 1 ? 0 : -1;
    if (!rc)
        *id = (uint64_t) s_int (res, 0, 0, 0);
    PQclear (res);
    return rc;
}

int
key_store_update (usage_store_t *db, uint64_t id, const key_fields_t *f)
{
    char sql[2048], idtext[24], expires[24], limits[KEY_NLIMITS][24], cache_ttl[24];
    const char *values[5 + KEY_NLIMITS];
    int n = 0;
    snprintf (idtext, sizeof idtext, "%" PRIu64, id);
    values[n++] = idtext;
    size_t len = (size_t) snprintf (sql, sizeof sql, "UPDATE api_keys SET updated_at = now()");
    //  Column names come from the fixed tables above; values are parameters.
    if (f->has_name) {
        values[n++] = f->name;
        len += (size_t) snprintf (sql + len, sizeof sql - len, ", name = $%d", n);
    }
    if (f->has_expires) {
        snprintf (expires, sizeof expires, "%" PRId64, f->expires_ms);
        values[n++] = expires;
        len += (size_t) snprintf (sql + len, sizeof sql - len,
                                  ", expires_at = CASE WHEN $%d::bigint = 0 THEN NULL"
                                  " ELSE to_timestamp($%d::bigint / 1000.0) END",
                                  n, n);
    }
    if (f->has_models) {
        values[n++] = f->models_json;
        len += (size_t) snprintf (sql + len, sizeof sql - len,
                                  ", models = ARRAY(SELECT json_array_elements_text($%d::json))", n);
    }
    for (int i = 0; i < KEY_NLIMITS; i++)
        if (f->has_limit[i]) {
            values[n++] = s_limit_param (limits[i], sizeof limits[i], f->limits[i]);
            len += (size_t) snprintf (sql + len, sizeof sql - len, ", %s = $%d::bigint", s_columns[i], n);
        }
    if (f->has_cache_ttl) {
        snprintf (cache_ttl, sizeof cache_ttl, "%" PRId64, f->cache_ttl_s);
        values[n++] = cache_ttl;
        len += (size_t) snprintf (sql + len, sizeof sql - len, ", cache_ttl_s = $%d::integer", n);
    }
    snprintf (sql + len, sizeof sql - len, " WHERE id = $1::bigint");
    assert (len < sizeof sql - 32);
    PGresult *res = usage_store_exec (db, sql, n, values);
    if (!res)
        return -1;
    int rc = strcmp (PQcmdTuples (res), "1") == 0 ? 1 : 0;
    PQclear (res);
    return rc;
}

int
key_store_revoke (usage_store_t *db, uint64_t id)
{
    char idtext[24];
    snprintf (idtext, sizeof idtext, "%" PRIu64, id);
    const char *values[1] = { idtext };
    PGresult *res = usage_store_exec (db,
                                      "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()),"
                                      " updated_at = now() WHERE id = $1::bigint",
                                      1, values);
    if (!res)
        return -1;
    int rc = strcmp (PQcmdTuples (res), "1") == 0 ? 1 : 0;
    PQclear (res);
    return rc;
}

int
key_store_get (usage_store_t *db, uint64_t id, key_record_t *record)
{
    char idtext[24];
    snprintf (idtext, sizeof idtext, "%" PRIu64, id);
    const char *values[1] = { idtext };
    PGresult *res = usage_store_exec (
        db, "SELECT " KEY_COLUMNS KEY_SPEND_COLUMNS " FROM api_keys k" KEY_SPEND_JOIN " WHERE k.id = $1::bigint", 1,
        values);
    if (!res)
        return -1;
    int found = PQntuples (res) == 1;
    if (found)
        s_record (res, 0, record, true);
    PQclear (res);
    return found;
}

int
key_store_list (usage_store_t *db, key_record_t **records, size_t *count)
{
    PGresult *res = usage_store_exec (
        db, "SELECT " KEY_COLUMNS KEY_SPEND_COLUMNS " FROM api_keys k" KEY_SPEND_JOIN " ORDER BY k.id", 0, NULL);
    if (!res)
        return -1;
    size_t n = (size_t) PQntuples (res);
    *records = calloc (n ? n : 1, sizeof **records);
    if (!*records) {
        PQclear (res);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        s_record (res, (int) i, &(*records)[i], true);
    *count = n;
    PQclear (res);
    return 0;
}
