/*  usage_store.c: usage rows in PostgreSQL through libpq, exactly once. */
#include "usage_store.h"
#include "gw_buf.h"
#include "gw_log.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct usage_store_t {
    char *dsn;
    char *currency;
    PGconn *conn;
    bool ready;
};

/*  Schema versions, applied in order and recorded in schema_migrations. Never
    edit a released entry: add a new one. */
static const struct {
    int version;
    const char *sql;
} s_migrations[] = {
    { 1, "CREATE TABLE usage_events ("
         "  event_id text PRIMARY KEY,"
         "  request_id text NOT NULL,"
         "  dispatch integer NOT NULL,"
         "  attempt integer NOT NULL,"
         "  api_key_id bigint,"
         "  provider text NOT NULL,"
         "  upstream_model text NOT NULL,"
         "  model text NOT NULL,"
         "  cache_hit_tokens bigint NOT NULL,"
         "  cache_miss_tokens bigint NOT NULL,"
         "  completion_tokens bigint NOT NULL,"
         "  reasoning_tokens bigint NOT NULL,"
         "  status integer NOT NULL,"
         "  usage_known boolean NOT NULL,"
         "  streamed boolean NOT NULL,"
         "  client_aborted boolean NOT NULL,"
         "  queue_wait_us bigint NOT NULL,"
         "  ttfb_us bigint NOT NULL,"
         "  total_us bigint NOT NULL,"
         "  started_at timestamptz NOT NULL,"
         "  recorded_at timestamptz NOT NULL DEFAULT now(),"
         "  currency text NOT NULL,"
         "  cost_pico bigint"
         ");"
         "CREATE INDEX usage_events_started_at ON usage_events (started_at);"
         "CREATE INDEX usage_events_request_id ON usage_events (request_id);" },
};

/*  The columns a usage row is written with (recorded_at takes its default). */
#define USAGE_COLUMNS                                                                \
    "event_id, request_id, dispatch, attempt, api_key_id, provider, upstream_model, model," \
    " cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status,"   \
    " usage_known, streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at," \
    " currency, cost_pico"

#define MIGRATION_LOCK_ID 7274611  //  pg_advisory_lock key shared by every instance
#define GW_XSTR(x) #x
#define GW_STR(x) GW_XSTR (x)

usage_store_t *
usage_store_new (const char *dsn, const char *currency)
{
    usage_store_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->dsn = strdup (dsn);
    self->currency = strdup (currency);
    return self;
}

void
usage_store_destroy (usage_store_t **self_p)
{
    usage_store_t *self = *self_p;
    if (!self)
        return;
    if (self->conn)
        PQfinish (self->conn);
    free (self->dsn);
    free (self->currency);
    free (self);
    *self_p = NULL;
}

bool
usage_store_ready (usage_store_t *self)
{
    return self->ready;
}

/*  Runs sql; returns 0 when it completed as expected. */
static int
s_exec (usage_store_t *self, const char *sql, ExecStatusType want)
{
    PGresult *res = PQexec (self->conn, sql);
    int rc = PQresultStatus (res) == want ? 0 : -1;
    if (rc)
        gw_error ("store", "query failed error=%s sql=%.60s", PQerrorMessage (self->conn), sql);
    PQclear (res);
    return rc;
}

static int
s_migrate (usage_store_t *self)
{
    if (s_exec (self, "SELECT pg_advisory_lock(" GW_STR (MIGRATION_LOCK_ID) ")", PGRES_TUPLES_OK))
        return -1;
    int rc = s_exec (self,
                     "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())",
                     PGRES_COMMAND_OK);
    for (size_t i = 0; rc == 0 && i < sizeof s_migrations / sizeof s_migrations[0]; i++) {
        char check[128];
        snprintf (check, sizeof check, "SELECT 1 FROM schema_migrations WHERE version = %d",
                  s_migrations[i].version);
        PGresult *res = PQexec (self->conn, check);
        bool applied = PQresultStatus (res) == PGRES_TUPLES_OK && PQntuples (res) == 1;
        rc = PQresultStatus (res) == PGRES_TUPLES_OK ? 0 : -1;
        PQclear (res);
        if (rc || applied)
            continue;
        char record[128];
        snprintf (record, sizeof record, "INSERT INTO schema_migrations (version) VALUES (%d)",
                  s_migrations[i].version);
        rc = s_exec (self, "BEGIN", PGRES_COMMAND_OK);
        if (!rc)
            rc = s_exec (self, s_migrations[i].sql, PGRES_COMMAND_OK);
        if (!rc)
            rc = s_exec (self, record, PGRES_COMMAND_OK);
        if (!rc)
            rc = s_exec (self, "COMMIT", PGRES_COMMAND_OK);
        else
            s_exec (self, "ROLLBACK", PGRES_COMMAND_OK);
        if (!rc)
            gw_info ("store", "migration applied version=%d", s_migrations[i].version);
    }
    s_exec (self, "SELECT pg_advisory_unlock(" GW_STR (MIGRATION_LOCK_ID) ")", PGRES_TUPLES_OK);
    return rc;
}

static void
s_on_notice (void *arg, const char *message)
{
    (void) arg;
    gw_debug ("store", "%s", message);
}

int
usage_store_connect (usage_store_t *self)
{
    if (self->ready)
        return 0;
    if (self->conn && PQstatus (self->conn) == CONNECTION_BAD)
        PQreset (self->conn);
    if (!self->conn) {
        self->conn = PQconnectdb (self->dsn);
        //  "already exists, skipping" notices of the idempotent DDL are noise.
        PQsetNoticeProcessor (self->conn, s_on_notice, NULL);
    }
    if (PQstatus (self->conn) != CONNECTION_OK) {
        gw_warn ("store", "cannot connect to PostgreSQL error=%s", PQerrorMessage (self->conn));
        PQfinish (self->conn);
        self->conn = NULL;
        return -1;
    }
    //  The staging table lives as long as the session; rows vanish at commit.
    if (s_migrate (self)
        || s_exec (self,
                   "CREATE TEMP TABLE IF NOT EXISTS usage_stage (LIKE usage_events INCLUDING DEFAULTS)"
                   " ON COMMIT DELETE ROWS",
                   PGRES_COMMAND_OK)) {
        PQfinish (self->conn);
        self->conn = NULL;
        return -1;
    }
    //  Days, weeks and months of reports are UTC ones. A runaway report must
    //  not hold the single thread that also stores usage.
    s_exec (self, "SET TIME ZONE 'UTC'", PGRES_COMMAND_OK);
    s_exec (self, "SET statement_timeout = '30s'", PGRES_COMMAND_OK);
    self->ready = true;
    gw_info ("store", "connected to PostgreSQL");
    return 0;
}

/*  Appends s to a COPY text row, escaping what COPY's text format treats
    specially. Runs of ordinary bytes go in one append (this is per field of
    every stored event). */
static void
s_copy_text (gw_buf_t *row, const char *s)
{
    while (*s) {
        size_t run = strcspn (s, "\\\t\n\r");
        gw_buf_append (row, s, run);
        s += run;
        if (!*s)
            break;
        char esc[2] = { '\\', *s == '\t' ? 't' : *s == '\n' ? 'n' : *s == '\r' ? 'r' : '\\' };
        gw_buf_append (row, esc, 2);
        s++;
    }
}

static void
s_copy_row (gw_buf_t *buf, const usage_row_t *r, const char *currency)
{
    const gw_usage_t *e = r->event;
    char num[512];
    s_copy_text (buf, e->event_id);
    gw_buf_append (buf, "\t", 1);
    s_copy_text (buf, e->request_id);
    int n = snprintf (num, sizeof num, "\t%u\t%u\t\\N\t", e->dispatch, e->attempt);
    gw_buf_append (buf, num, (size_t) n);
    s_copy_text (buf, e->provider);
    gw_buf_append (buf, "\t", 1);
    s_copy_text (buf, e->upstream_model);
    gw_buf_append (buf, "\t", 1);
    s_copy_text (buf, e->model);
    //  COPY takes literals: the start time goes in as a UTC timestamp.
    time_t secs = (time_t) (e->started_ms / 1000);
    struct tm tm;
    gmtime_r (&secs, &tm);
    n = snprintf (num, sizeof num,
                  "\t%llu\t%llu\t%llu\t%llu\t%u\t%s\t%s\t%s\t%llu\t%llu\t%llu\t"
                  "%04d-%02d-%02d %02d:%02d:%02d.%03d+00\t",
                  (unsigned long long) e->cache_hit_tokens, (unsigned long long) e->cache_miss_tokens,
                  (unsigned long long) e->completion_tokens, (unsigned long long) e->reasoning_tokens,
                  e->status, e->usage_known ? "t" : "f", e->streamed ? "t" : "f",
                  e->client_aborted ? "t" : "f", (unsigned long long) e->queue_wait_us,
                  (unsigned long long) e->ttfb_us, (unsigned long long) e->total_us, tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (e->started_ms % 1000));
    gw_buf_append (buf, num, (size_t) n);
    s_copy_text (buf, currency);
    if (r->priced)
        n = snprintf (num, sizeof num, "\t%llu\n", (unsigned long long) r->cost_pico);
    else
        n = snprintf (num, sizeof num, "\t\\N\n");
    gw_buf_append (buf, num, (size_t) n);
}

int
usage_store_insert (usage_store_t *self, const usage_row_t *rows, size_t n)
{
    if (!self->ready)
        return -1;
    gw_buf_t buf = { 0 };
    for (size_t i = 0; i < n; i++)
        s_copy_row (&buf, &rows[i], self->currency);
    int rc = s_exec (self, "BEGIN", PGRES_COMMAND_OK);
    PGresult *res = rc ? NULL : PQexec (self->conn, "COPY usage_stage (" USAGE_COLUMNS ") FROM STDIN");
    if (!rc && PQresultStatus (res) != PGRES_COPY_IN)
        rc = -1;
    PQclear (res);
    if (!rc && (PQputCopyData (self->conn, buf.data, (int) buf.len) != 1 || PQputCopyEnd (self->conn, NULL) != 1))
        rc = -1;
    if (!rc) {
        //  Drain every result of the COPY before the next command.
        while ((res = PQgetResult (self->conn))) {
            if (PQresultStatus (res) != PGRES_COMMAND_OK) {
                gw_error ("store", "COPY failed error=%s", PQerrorMessage (self->conn));
                rc = -1;
            }
            PQclear (res);
        }
    }
    //  A resent event finds its row already there: nothing happens, and the
    //  caller acknowledges it all the same.
    if (!rc)
        //  In key order: two instances storing overlapping batches (a resend went
        //  to the other one) then lock rows in the same order and cannot deadlock.
        rc = s_exec (self, "INSERT INTO usage_events (" USAGE_COLUMNS ") SELECT " USAGE_COLUMNS
                     " FROM usage_stage ORDER BY event_id ON CONFLICT (event_id) DO NOTHING",
                     PGRES_COMMAND_OK);
    if (!rc)
        rc = s_exec (self, "COMMIT", PGRES_COMMAND_OK);
    gw_buf_free (&buf);
    if (rc) {
        if (PQstatus (self->conn) == CONNECTION_OK)
            s_exec (self, "ROLLBACK", PGRES_COMMAND_OK);
        self->ready = false;
        gw_warn ("store", "batch not stored rows=%zu", n);
    }
    return rc;
}

PGresult *
usage_store_query (usage_store_t *self, const char *sql, int nparams, const char *const *values)
{
    if (!self->ready)
        return NULL;
    PGresult *res = PQexecParams (self->conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (PQresultStatus (res) == PGRES_TUPLES_OK)
        return res;
    gw_error ("store", "query failed error=%s", PQerrorMessage (self->conn));
    PQclear (res);
    if (PQstatus (self->conn) != CONNECTION_OK)
        self->ready = false;
    return NULL;
}
