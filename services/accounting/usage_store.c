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
    //  Statements prepared on the current connection (by name), see usage_store_exec_prepared.
    char prepared[8][32];
    int nprepared;
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
    { 2, "CREATE TABLE api_keys ("
         "  id bigserial PRIMARY KEY,"
         "  key_hash text UNIQUE NOT NULL,"
         "  prefix text NOT NULL,"
         "  name text NOT NULL DEFAULT '',"
         "  created_at timestamptz NOT NULL DEFAULT now(),"
         "  updated_at timestamptz NOT NULL DEFAULT now(),"
         "  expires_at timestamptz,"
         "  revoked_at timestamptz,"
         "  models text[] NOT NULL DEFAULT '{}',"
         //  Limits and budgets: NULL takes the service default, -1 is unlimited.
         "  rpm bigint, tpm bigint, concurrency bigint,"
         "  budget_day_pico bigint, budget_week_pico bigint, budget_month_pico bigint, budget_total_pico bigint"
         ");"
         //  Real spend and tokens of stored usage per key and UTC period ('total'
         //  starts at the epoch); written in the usage transaction.
         "CREATE TABLE key_spend ("
         "  key_id bigint NOT NULL,"
         "  period text NOT NULL,"
         "  period_start timestamptz NOT NULL,"
         "  cost_pico bigint NOT NULL DEFAULT 0,"
         "  tokens bigint NOT NULL DEFAULT 0,"
         "  PRIMARY KEY (key_id, period, period_start)"
         ");"
         "CREATE TABLE key_requests ("
         "  key_id bigint NOT NULL,"
         "  minute timestamptz NOT NULL,"
         "  requests bigint NOT NULL,"
         "  PRIMARY KEY (key_id, minute)"
         ");"
         "CREATE TABLE reservations ("
         "  request_id text PRIMARY KEY,"
         "  key_id bigint NOT NULL,"
         "  ingress_id text NOT NULL,"
         "  amount_pico bigint NOT NULL,"
         "  tokens bigint NOT NULL,"
         "  created_at timestamptz NOT NULL,"
         "  expires_at timestamptz NOT NULL,"
         "  released_at timestamptz,"
         "  dispatch integer,"
         "  attempts integer"
         ");"
         "CREATE INDEX reservations_key_id ON reservations (key_id);"
         "CREATE INDEX reservations_expires_at ON reservations (expires_at);"
         "CREATE TABLE ingress_alive (ingress_id text PRIMARY KEY, seen_at timestamptz NOT NULL);" },
    //  The alerter's record (docs/alerter.md): an alert is unique per rule,
    //  subject, period and level; an episodic one has period 'open' until it
    //  resolves. Each alert has one delivery per channel, pending until sent.
    { 3, "CREATE TABLE alerts ("
         "  id bigserial PRIMARY KEY,"
         "  rule text NOT NULL, subject text NOT NULL, period text NOT NULL, level text NOT NULL,"
         "  severity text NOT NULL, title text NOT NULL, body text NOT NULL, alert jsonb NOT NULL,"
         "  fired_at timestamptz NOT NULL DEFAULT now(), resolved_at timestamptz,"
         "  UNIQUE (rule, subject, period, level)"
         ");"
         "CREATE TABLE alert_deliveries ("
         "  id bigserial PRIMARY KEY,"
         "  alert_id bigint NOT NULL REFERENCES alerts (id),"
         "  channel text NOT NULL,"
         "  status text NOT NULL DEFAULT 'pending',"
         "  attempts integer NOT NULL DEFAULT 0,"
         "  next_at timestamptz NOT NULL DEFAULT now(),"
         "  last_error text, sent_at timestamptz,"
         "  UNIQUE (alert_id, channel)"
         ");"
         "CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE status = 'pending';"
         "CREATE TABLE alerter_lease (name text PRIMARY KEY, holder text NOT NULL, until timestamptz NOT NULL);" },
    //  What each dispatcher (STATUS) and accounting instance last said about itself.
    { 4, "CREATE TABLE instances ("
         "  kind text NOT NULL, instance text NOT NULL, host text NOT NULL,"
         "  seen_at timestamptz NOT NULL,"
         "  spool_events bigint NOT NULL, spool_bytes bigint NOT NULL,"
         "  cpu_permille integer NOT NULL, mem_permille integer NOT NULL, disk_permille integer NOT NULL,"
         "  PRIMARY KEY (kind, instance)"
         ");" },
    //  The provider account balance a dispatcher last read (GET /user/balance).
    { 5, "ALTER TABLE instances ADD COLUMN balance_provider text, ADD COLUMN balance_currency text,"
         "  ADD COLUMN balance_total numeric, ADD COLUMN balance_available boolean;" },
    //  Since when each instance has reported without a long gap: right after an
    //  outage every row is old, and none is silent until accounting's own row
    //  has been fresh long enough for the live ones to have reported again.
    //  left_at: stopped cleanly (a tombstone, so a report that arrives late
    //  through another accounting instance does not bring the row back).
    { 6, "ALTER TABLE instances ADD COLUMN fresh_since timestamptz NOT NULL DEFAULT now(),"
         "  ADD COLUMN left_at timestamptz;" },
    //  The response cache (issue 6): a row answered from the cache is marked
    //  (it costs nothing and does not count against tpm); a key may opt in.
    { 7, "ALTER TABLE usage_events ADD COLUMN cached boolean NOT NULL DEFAULT false;"
         "ALTER TABLE api_keys ADD COLUMN cache_ttl_s integer NOT NULL DEFAULT 0;" },
    //  The overall spend per UTC hour, which the alerter's spend rules read
    //  every cycle: summing the month's usage_events instead costs PostgreSQL
    //  seconds per cycle at millions of rows. Statement triggers apply each
    //  INSERT's new rows (resends that ON CONFLICT skips are not in its
    //  transition table), and an UPDATE's or DELETE's change (an operator
    //  pricing old rows by hand, docs/operations.md), in the writing
    //  transaction: the rollup moves exactly with the stored usage, whichever
    //  instance or version writes it. shard (the backend's pid mod 16) keeps
    //  instances storing at once off one hot row, most of the time. The lock
    //  comes first, so the backfill's snapshot (taken after it, at any
    //  isolation level) holds every row stored before and none after. A
    //  correction to the function needs a new migration (CREATE OR REPLACE).
    { 8, "LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE;"
         "CREATE TABLE spend_hours ("
         "  currency text NOT NULL, hour timestamptz NOT NULL, shard integer NOT NULL,"
         "  cost_pico numeric NOT NULL,"
         "  PRIMARY KEY (currency, hour, shard)"
         ");"
         "CREATE FUNCTION gw_spend_hours_apply() RETURNS trigger LANGUAGE plpgsql AS $$"
         " BEGIN"
         //  Each branch names only the transition tables its trigger has.
         "  IF TG_OP = 'INSERT' THEN"
         "   INSERT INTO spend_hours (currency, hour, shard, cost_pico)"
         "   SELECT currency, date_trunc('hour', started_at, 'UTC'), pg_backend_pid() % 16, sum(cost_pico)"
         "   FROM gw_new_usage WHERE cost_pico <> 0 GROUP BY 1, 2 ORDER BY 1, 2"
         "   ON CONFLICT (currency, hour, shard) DO UPDATE SET cost_pico = spend_hours.cost_pico + EXCLUDED.cost_pico;"
         "  ELSIF TG_OP = 'DELETE' THEN"
         "   INSERT INTO spend_hours (currency, hour, shard, cost_pico)"
         "   SELECT currency, date_trunc('hour', started_at, 'UTC'), pg_backend_pid() % 16, -sum(cost_pico)"
         "   FROM gw_old_usage WHERE cost_pico <> 0 GROUP BY 1, 2 ORDER BY 1, 2"
         "   ON CONFLICT (currency, hour, shard) DO UPDATE SET cost_pico = spend_hours.cost_pico + EXCLUDED.cost_pico;"
         "  ELSE"
         "   INSERT INTO spend_hours (currency, hour, shard, cost_pico)"
         "   SELECT currency, hour, pg_backend_pid() % 16, sum(cost) FROM ("
         "    SELECT currency, date_trunc('hour', started_at, 'UTC') AS hour, cost_pico AS cost FROM gw_new_usage"
         "    UNION ALL"
         "    SELECT currency, date_trunc('hour', started_at, 'UTC'), -cost_pico FROM gw_old_usage) AS d"
         "   WHERE cost <> 0 GROUP BY 1, 2 HAVING sum(cost) <> 0 ORDER BY 1, 2"
         "   ON CONFLICT (currency, hour, shard) DO UPDATE SET cost_pico = spend_hours.cost_pico + EXCLUDED.cost_pico;"
         "  END IF;"
         "  RETURN NULL;"
         " END $$;"
         "INSERT INTO spend_hours (currency, hour, shard, cost_pico)"
         " SELECT currency, date_trunc('hour', started_at, 'UTC'), 0, sum(cost_pico)"
         " FROM usage_events WHERE cost_pico <> 0 GROUP BY 1, 2;"
         "CREATE TRIGGER usage_events_spend_hours_insert AFTER INSERT ON usage_events"
         " REFERENCING NEW TABLE AS gw_new_usage FOR EACH STATEMENT EXECUTE FUNCTION gw_spend_hours_apply();"
         "CREATE TRIGGER usage_events_spend_hours_update AFTER UPDATE ON usage_events"
         " REFERENCING OLD TABLE AS gw_old_usage NEW TABLE AS gw_new_usage"
         " FOR EACH STATEMENT EXECUTE FUNCTION gw_spend_hours_apply();"
         "CREATE TRIGGER usage_events_spend_hours_delete AFTER DELETE ON usage_events"
         " REFERENCING OLD TABLE AS gw_old_usage FOR EACH STATEMENT EXECUTE FUNCTION gw_spend_hours_apply();" },
};

/*  The functions admissions and releases call. Not a migration: they hold no
    data, so every start installs the definition below (CREATE OR REPLACE,
    under the migration lock), and a corrected function reaches every
    database on the next start. Their parameters and results must not change
    (CREATE OR REPLACE cannot); a new signature needs a new name. */
static const char *s_routines =
         //  The signature before p_ended (one development database may have it).
         "DROP FUNCTION IF EXISTS gw_admit(text, bigint, text, bigint, bigint, bigint, bigint, bigint,"
         "  bigint, bigint, bigint, bigint, integer, integer);"
         //  The whole admission in one round trip, under the key row's lock: the
         //  checks of docs/keys.md in order, then the reservation and the request
         //  count, or nothing. It raises no error of its own, so many admissions
         //  can share one transaction. Sliding windows are exact integer
         //  arithmetic: prev * (60000 - elapsed_ms) + curr * 60000 <= limit * 60000.
         //  It returns the raw window counts (without this request); the caller
         //  derives remaining, reset and retry times from them.
         "CREATE OR REPLACE FUNCTION gw_admit(p_request text, p_key bigint, p_ingress text, p_cost bigint, p_tokens bigint,"
         "  d_rpm bigint, d_tpm bigint, d_conc bigint,"
         "  d_day bigint, d_week bigint, d_month bigint, d_total bigint,"
         "  p_ttl_s integer, p_alive_s integer, p_ended text[],"
         "  OUT status integer, OUT code text, OUT reserved_pico bigint, OUT elapsed_ms bigint,"
         "  OUT rpm_limit bigint, OUT rpm_prev bigint, OUT rpm_curr bigint,"
         "  OUT tpm_limit bigint, OUT tpm_prev bigint, OUT tpm_curr bigint,"
         "  OUT conc_limit bigint, OUT busy bigint,"
         "  OUT budget_limit bigint, OUT budget_used bigint, OUT reset_at text)"
         " LANGUAGE plpgsql AS $$"
         " DECLARE"
         "  k api_keys%ROWTYPE;"
         "  t timestamptz := clock_timestamp();"
         "  m0 timestamptz := date_trunc('minute', t, 'UTC');"
         "  spent bigint[];"
         "  held bigint; held_tokens bigint; mine bigint;"
         "  lims bigint[]; starts timestamptz[]; i integer;"
         "  names text[] := ARRAY['budget_day', 'budget_week', 'budget_month', 'budget_total'];"
         "  steps interval[] := ARRAY[interval '1 day', interval '1 week', interval '1 month', NULL];"
         " BEGIN"
         "  status := 200; code := ''; reserved_pico := 0; busy := 0;"
         "  elapsed_ms := floor(extract(epoch FROM t - m0) * 1000)::bigint;"
         "  SELECT * INTO k FROM api_keys WHERE id = p_key FOR UPDATE;"
         "  IF NOT FOUND OR k.revoked_at IS NOT NULL OR k.expires_at <= t THEN"
         "   status := 401; code := 'invalid_api_key'; RETURN;"
         "  END IF;"
         "  rpm_limit := CASE WHEN k.rpm IS NULL THEN d_rpm WHEN k.rpm < 0 THEN NULL ELSE k.rpm END;"
         "  tpm_limit := CASE WHEN k.tpm IS NULL THEN d_tpm WHEN k.tpm < 0 THEN NULL ELSE k.tpm END;"
         "  conc_limit := CASE WHEN k.concurrency IS NULL THEN d_conc WHEN k.concurrency < 0 THEN NULL"
         "   ELSE k.concurrency END;"
         "  lims := ARRAY["
         "   CASE WHEN k.budget_day_pico IS NULL THEN d_day WHEN k.budget_day_pico < 0 THEN NULL"
         "    ELSE k.budget_day_pico END,"
         "   CASE WHEN k.budget_week_pico IS NULL THEN d_week WHEN k.budget_week_pico < 0 THEN NULL"
         "    ELSE k.budget_week_pico END,"
         "   CASE WHEN k.budget_month_pico IS NULL THEN d_month WHEN k.budget_month_pico < 0 THEN NULL"
         "    ELSE k.budget_month_pico END,"
         "   CASE WHEN k.budget_total_pico IS NULL THEN d_total WHEN k.budget_total_pico < 0 THEN NULL"
         "    ELSE k.budget_total_pico END];"
         "  starts := ARRAY[date_trunc('day', t, 'UTC'), date_trunc('week', t, 'UTC'),"
         "   date_trunc('month', t, 'UTC'), 'epoch'::timestamptz];"
         //  Every read of spend, windows and reservations in one statement, one snapshot.
         "  SELECT coalesce(q.prev, 0), coalesce(q.curr, 0), coalesce(s.tprev, 0), coalesce(s.tcurr, 0),"
         "   ARRAY[coalesce(s.day, 0), coalesce(s.week, 0), coalesce(s.month, 0), coalesce(s.total, 0)],"
         "   coalesce(r.busy, 0), coalesce(r.amount, 0), coalesce(r.tokens, 0), r.mine"
         "  INTO rpm_prev, rpm_curr, tpm_prev, tpm_curr, spent, busy, held, held_tokens, mine"
         "  FROM (SELECT sum(requests) FILTER (WHERE minute = m0 - interval '1 minute') AS prev,"
         "     sum(requests) FILTER (WHERE minute = m0) AS curr"
         "    FROM key_requests WHERE key_id = p_key AND minute >= m0 - interval '1 minute') q,"
         "   (SELECT sum(tokens) FILTER (WHERE period = 'minute' AND period_start = m0 - interval '1 minute') AS tprev,"
         "     sum(tokens) FILTER (WHERE period = 'minute' AND period_start = m0) AS tcurr,"
         "     sum(cost_pico) FILTER (WHERE period = 'day' AND period_start = starts[1]) AS day,"
         "     sum(cost_pico) FILTER (WHERE period = 'week' AND period_start = starts[2]) AS week,"
         "     sum(cost_pico) FILTER (WHERE period = 'month' AND period_start = starts[3]) AS month,"
         "     sum(cost_pico) FILTER (WHERE period = 'total') AS total"
         "    FROM key_spend WHERE key_id = p_key) s,"
         //  In progress: not released, not among the requests the asking ingress
         //  has ended (their RELEASE may still be on its way), and of a live ingress.
         "   (SELECT count(*) FILTER (WHERE x.released_at IS NULL AND x.request_id <> ALL (p_ended)"
         "      AND (x.created_at > t - make_interval(secs => p_alive_s)"
         "      OR EXISTS (SELECT 1 FROM ingress_alive a WHERE a.ingress_id = x.ingress_id"
         "       AND a.seen_at > t - make_interval(secs => p_alive_s)))) AS busy,"
         "     sum(x.amount_pico) AS amount, sum(x.tokens) AS tokens,"
         "     max(x.amount_pico) FILTER (WHERE x.request_id = p_request) AS mine"
         "    FROM reservations x WHERE x.key_id = p_key AND x.expires_at > t) r;"
         //  Asked again: already admitted and counted once. The figures are
         //  given as if it were new (the caller adds it), like the first answer.
         "  IF mine IS NOT NULL THEN"
         "   reserved_pico := mine; rpm_curr := greatest(rpm_curr - 1, 0);"
         "   tpm_curr := greatest(tpm_curr + held_tokens - p_tokens, 0); RETURN;"
         "  END IF;"
         "  tpm_curr := tpm_curr + held_tokens;"
         "  IF conc_limit IS NOT NULL AND busy + 1 > conc_limit THEN"
         "   status := 429; code := 'concurrency'; RETURN;"
         "  END IF;"
         "  IF rpm_limit IS NOT NULL AND rpm_prev::numeric * (60000 - elapsed_ms) + (rpm_curr + 1)::numeric * 60000"
         "    > rpm_limit::numeric * 60000 THEN"
         "   status := 429; code := 'rate_limit_requests'; RETURN;"
         "  END IF;"
         "  IF tpm_limit IS NOT NULL AND tpm_prev::numeric * (60000 - elapsed_ms)"
         "    + (tpm_curr::numeric + p_tokens) * 60000 > tpm_limit::numeric * 60000 THEN"
         "   status := 429; code := 'rate_limit_tokens'; RETURN;"
         "  END IF;"
         "  FOR i IN 1..4 LOOP"
         "   IF lims[i] IS NOT NULL AND spent[i]::numeric + held + p_cost > lims[i] THEN"
         "    status := 429; code := names[i]; budget_limit := lims[i];"
         "    budget_used := LEAST(spent[i]::numeric + held, 9223372036854775807)::bigint;"
         "    reset_at := to_char((starts[i] + steps[i]) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"');"
         "    RETURN;"
         "   END IF;"
         "  END LOOP;"
         "  INSERT INTO reservations (request_id, key_id, ingress_id, amount_pico, tokens, created_at, expires_at)"
         "   VALUES (p_request, p_key, p_ingress, p_cost, p_tokens, t, t + make_interval(secs => p_ttl_s))"
         "   ON CONFLICT (request_id) DO NOTHING;"
         //  Its release came first (the ingress gave up waiting for this
         //  answer): nothing is reserved or counted, and it is not admitted.
         "  IF NOT FOUND THEN"
         "   status := 409; code := 'released'; RETURN;"
         "  END IF;"
         "  INSERT INTO key_requests (key_id, minute, requests) VALUES (p_key, m0, 1)"
         "   ON CONFLICT (key_id, minute) DO UPDATE SET requests = key_requests.requests + 1;"
         "  reserved_pico := p_cost;"
         " END $$;"
         //  A request ended: its concurrency slot is free; its budget settles now
         //  if no usage will come or all of it is stored. The count is a second
         //  statement, so its snapshot is taken after the row lock is held: a
         //  usage transaction that stored events of this request meanwhile has
         //  committed, and its rows are seen.
         "CREATE OR REPLACE FUNCTION gw_release(p_request text, p_dispatched boolean, p_dispatch integer, p_attempts integer)"
         " RETURNS void LANGUAGE plpgsql AS $$"
         " BEGIN"
         "  UPDATE reservations SET released_at = coalesce(released_at, clock_timestamp()),"
         "   dispatch = p_dispatch, attempts = CASE WHEN p_dispatched THEN p_attempts ELSE 0 END"
         "   WHERE request_id = p_request;"
         //  Nothing to release: the ADMIT may still be on its way (on another
         //  thread or instance, after the ingress stopped waiting for it). A
         //  released row with nothing reserved takes its place, so that ADMIT
         //  finds it and admits nothing; it lapses like any reservation.
         "  IF NOT FOUND THEN"
         "   INSERT INTO reservations (request_id, key_id, ingress_id, amount_pico, tokens, created_at, expires_at,"
         "    released_at, dispatch, attempts)"
         "    VALUES (p_request, 0, '', 0, 0, clock_timestamp(), clock_timestamp() + interval '1 hour',"
         "     clock_timestamp(), 0, 0)"
         "    ON CONFLICT (request_id) DO NOTHING;"
         "   RETURN;"
         "  END IF;"
         "  DELETE FROM reservations r WHERE r.request_id = p_request AND (r.attempts = 0"
         "   OR (SELECT count(*) FROM usage_events u WHERE u.request_id = p_request AND u.dispatch = r.dispatch)"
         "    >= r.attempts);"
         " END $$;";


/*  The columns a usage row is written with (recorded_at takes its default). */
#define USAGE_COLUMNS                                                                \
    "event_id, request_id, dispatch, attempt, api_key_id, provider, upstream_model, model," \
    " cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status,"   \
    " usage_known, streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at," \
    " currency, cost_pico, cached"

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
    if (!rc)
        rc = s_exec (self, s_routines, PGRES_COMMAND_OK);
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
    //  The staging tables live as long as the session; rows vanish at commit.
    //  usage_new holds what a batch really added (not its resent events), per key.
    if (s_migrate (self)
        || s_exec (self,
                   "CREATE TEMP TABLE IF NOT EXISTS usage_stage (LIKE usage_events INCLUDING DEFAULTS)"
                   " ON COMMIT DELETE ROWS",
                   PGRES_COMMAND_OK)
        || s_exec (self,
                   "CREATE TEMP TABLE IF NOT EXISTS usage_new (api_key_id bigint, started_at timestamptz,"
                   " cost_pico bigint, tokens numeric, request_id text) ON COMMIT DELETE ROWS",
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
    self->nprepared = 0;  //  a new session knows none
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
    //  Key 0 is "no key": NULL, so reports group it as "none".
    int n = e->api_key_id ? snprintf (num, sizeof num, "\t%u\t%u\t%llu\t", e->dispatch, e->attempt,
                                      (unsigned long long) e->api_key_id)
                          : snprintf (num, sizeof num, "\t%u\t%u\t\\N\t", e->dispatch, e->attempt);
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
    const char *cached = e->cached ? "t" : "f";
    if (r->priced)
        n = snprintf (num, sizeof num, "\t%llu\t%s\n", (unsigned long long) r->cost_pico, cached);
    else
        n = snprintf (num, sizeof num, "\t\\N\t%s\n", cached);
    gw_buf_append (buf, num, (size_t) n);
}

/*  The keys' side of a usage batch, inside its transaction: the real cost and
    tokens added to each key's periods, then the settlement of released
    reservations whose usage is now complete. It runs under a savepoint: a
    failure (a deadlock with another instance, say) is retried once. A second
    failure fails the whole
    batch: its usage without its spend would escape every budget for good,
    while a batch not stored is only sent again (events are idempotent). */
static const char *s_key_spend_sql =
    //  Periods by when the call started; the minute rows of the tpm window by
    //  when its usage is stored, so a call counts there as it finishes,
    //  however long it ran.
    "INSERT INTO key_spend (key_id, period, period_start, cost_pico, tokens)"
    " SELECT n.api_key_id, p.period, p.start,"
    "  LEAST(sum(coalesce(n.cost_pico, 0)), 9223372036854775807)::bigint,"
    "  LEAST(sum(n.tokens), 9223372036854775807)::bigint"
    " FROM usage_new n CROSS JOIN LATERAL (VALUES"
    "  ('minute', date_trunc('minute', now(), 'UTC')), ('day', date_trunc('day', n.started_at, 'UTC')),"
    "  ('week', date_trunc('week', n.started_at, 'UTC')), ('month', date_trunc('month', n.started_at, 'UTC')),"
    "  ('total', 'epoch'::timestamptz)) AS p (period, start)"

    //  In key order, like the usage rows: concurrent batches cannot deadlock.
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    " ON CONFLICT (key_id, period, period_start) DO UPDATE SET"
    "  cost_pico = LEAST(key_spend.cost_pico::numeric + EXCLUDED.cost_pico, 9223372036854775807)::bigint,"
    "  tokens = LEAST(key_spend.tokens::numeric + EXCLUDED.tokens, 9223372036854775807)::bigint";

/*  Locks first, in order, every reservation of a request in the batch (released
    or not: a RELEASE running now must wait for this transaction, or this one
    for it). The count below is a new statement, so its snapshot sees whatever
    the other side committed while this one waited: two instances storing
    different events of one request cannot both miss the last one. */
static const char *s_lock_sql =
    "SELECT 1 FROM reservations WHERE request_id IN (SELECT request_id FROM usage_stage)"
    " ORDER BY request_id FOR UPDATE";
/*  The real cost and tokens just stored come off the request's reservation, in
    the same transaction that adds them to key_spend: a call is never counted
    twice against a budget (spent and still reserved) while its release is on
    its way, and never not at all. */
static const char *s_drawdown_sql =
    "UPDATE reservations r SET amount_pico = greatest(r.amount_pico - n.cost, 0)::bigint,"
    " tokens = greatest(r.tokens - n.tokens, 0)::bigint"
    " FROM (SELECT request_id, sum(coalesce(cost_pico, 0)) AS cost, sum(tokens) AS tokens"
    "  FROM usage_new GROUP BY request_id) n"
    " WHERE r.request_id = n.request_id";
static const char *s_settle_sql =
    "DELETE FROM reservations r WHERE r.request_id IN (SELECT request_id FROM usage_stage)"
    " AND r.released_at IS NOT NULL AND r.attempts IS NOT NULL"
    " AND (SELECT count(*) FROM usage_events u WHERE u.request_id = r.request_id AND u.dispatch = r.dispatch)"
    "  >= r.attempts";

static int
s_key_accounts (usage_store_t *self)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (s_exec (self, "SAVEPOINT key_accounts", PGRES_COMMAND_OK))
            return -1;
        if (s_exec (self, s_key_spend_sql, PGRES_COMMAND_OK) == 0 && s_exec (self, s_lock_sql, PGRES_TUPLES_OK) == 0
            && s_exec (self, s_drawdown_sql, PGRES_COMMAND_OK) == 0 && s_exec (self, s_settle_sql, PGRES_COMMAND_OK) == 0)
            return s_exec (self, "RELEASE SAVEPOINT key_accounts", PGRES_COMMAND_OK);
        if (PQstatus (self->conn) != CONNECTION_OK
            || s_exec (self, "ROLLBACK TO SAVEPOINT key_accounts", PGRES_COMMAND_OK))
            return -1;
    }
    gw_error ("store", "key spend and settlement failed twice: the batch is not stored and will come again");
    return -1;
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
        rc = s_exec (self,
                     "WITH ins AS (INSERT INTO usage_events (" USAGE_COLUMNS ") SELECT " USAGE_COLUMNS
                     " FROM usage_stage ORDER BY event_id ON CONFLICT (event_id) DO NOTHING"
                     " RETURNING api_key_id, started_at, cost_pico,"
                     //  A cached answer took no tokens from the provider: it
                     //  does not count against the key's tpm.
                     " CASE WHEN cached THEN 0"
                     "  ELSE cache_hit_tokens::numeric + cache_miss_tokens + completion_tokens END AS tokens,"
                     " request_id)"
                     " INSERT INTO usage_new SELECT * FROM ins WHERE api_key_id IS NOT NULL",
                     PGRES_COMMAND_OK);
    if (!rc)
        rc = s_key_accounts (self);
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
usage_store_exec (usage_store_t *self, const char *sql, int nparams, const char *const *values)
{
    if (!self->ready)
        return NULL;
    PGresult *res = PQexecParams (self->conn, sql, nparams, NULL, values, NULL, NULL, 0);
    ExecStatusType status = PQresultStatus (res);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK)
        return res;
    gw_error ("store", "statement failed error=%s sql=%.60s", PQerrorMessage (self->conn), sql);
    PQclear (res);
    if (PQstatus (self->conn) != CONNECTION_OK)
        self->ready = false;
    return NULL;
}

PGresult *
usage_store_exec_prepared (usage_store_t *self, const char *name, const char *sql, int nparams,
                           const char *const *values)
{
    if (!self->ready)
        return NULL;
    bool known = false;
    for (int i = 0; i < self->nprepared && !known; i++)
        known = strcmp (self->prepared[i], name) == 0;
    if (!known) {
        PGresult *res = PQprepare (self->conn, name, sql, nparams, NULL);
        bool ok = PQresultStatus (res) == PGRES_COMMAND_OK;
        PQclear (res);
        if (!ok) {
            gw_error ("store", "prepare failed error=%s name=%s", PQerrorMessage (self->conn), name);
            if (PQstatus (self->conn) != CONNECTION_OK)
                self->ready = false;
            return NULL;
        }
        if (self->nprepared < (int) (sizeof self->prepared / sizeof self->prepared[0]))
            snprintf (self->prepared[self->nprepared++], sizeof self->prepared[0], "%s", name);
    }
    PGresult *res = PQexecPrepared (self->conn, name, nparams, values, NULL, NULL, 0);
    ExecStatusType status = PQresultStatus (res);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK)
        return res;
    gw_error ("store", "statement failed error=%s name=%s", PQerrorMessage (self->conn), name);
    PQclear (res);
    if (PQstatus (self->conn) != CONNECTION_OK)
        self->ready = false;
    return NULL;
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
