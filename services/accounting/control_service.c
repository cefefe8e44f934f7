/*  control_service.c: keys, admissions, releases, admin and reports on their own thread. */
#include "control_service.h"
#include "admin_api.h"
#include "alert_store.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "gw_proto.h"
#include "gw_time.h"
#include "usage_report.h"

#include <libpq-fe.h>

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define TURN_MAX 1000  //  most messages taken in one turn
#define POLL_MS 200  //  how soon a stop is noticed
#define HOUSEKEEP_MS 10000
#define WORKER_RELEASES 1  //  RELEASE, INGRESS_ALIVE, housekeeping
#define WORKER_REPORTS 2  //  REPORT_REQUEST, ADMIN_REQUEST
#define CONCURRENCY_RETRY_MS 1000  //  no better guess: a slot frees when some call ends

typedef struct {
    char rid[256];  //  the asker
    size_t rid_size;
    gw_msg_t msg;
    key_verdict_t verdict;
    bool decided;
} s_item_t;

struct control_service_t {
    control_config_t config;
    price_table_t *prices;
    usage_store_t *db;
    void *router;  //  the control ROUTER; for a worker, its end of its pair
    //  Two kinds of work go to worker threads, each with its own connection,
    //  over an inproc PAIR, so that admissions on this thread never wait
    //  behind them: releases and liveness (a release can wait on a reservation
    //  row that a usage transaction holds through its commit), and reports and
    //  admin calls (a report may scan for seconds).
    void *pairs[2];  //  the control thread's ends (none in a worker)
    struct control_service_t *workers[2];
    int worker_kind;  //  0: the control thread; WORKER_RELEASES or WORKER_REPORTS
    pthread_t thread;
    bool started;
    atomic_bool stop;
    s_item_t *items;
    size_t *order;  //  admissions or releases of a turn, sorted
    int64_t next_connect_ms, next_housekeep_ms;
    int reconnect_ms;
};

//  -------------------------------------------------------------------------
//  Key lookups

static void
s_lookup (control_service_t *self, s_item_t *it)
{
    key_record_t record = { 0 };
    gw_msg_t reply = { .id = GW_MSG_KEY_INFO };
    gw_key_info_t *info = &reply.key_info;
    info->correlation = it->msg.key_lookup.correlation;
    //  Unknown, revoked and expired all answer the same 401 with no data.
    int found = key_store_lookup (self->db, it->msg.key_lookup.key_hash, &record);
    info->status = found < 0 ? 503 : found ? 200 : 401;
    if (found > 0) {
        info->key_id = record.id;
        info->expires_ms = (uint64_t) record.expires_ms;
        info->admit = key_record_limited (&record, &self->config.policy);
        info->cache_ttl_s = (uint32_t) record.cache_ttl_s;
        json_t *models = json_loads (record.models_json, 0, NULL);
        size_t i;
        json_t *model;
        json_array_foreach (models, i, model)
            gw_strlist_append (&info->models, json_string_value (model));
        json_decref (models);
    }
    //  In the shape the asker reads: an ingress older than the response cache
    //  still gets its answer (accounting is upgraded first).
    gw_msg_send_as (self->router, it->rid, it->rid_size, &reply, it->msg.version);
    gw_strlist_clear (&info->models);
    key_record_clear (&record);
}

//  -------------------------------------------------------------------------
//  Admissions

static uint64_t
s_add (uint64_t a, uint64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

//  The request's maximum cost and token estimate.
static void
s_estimate (control_service_t *self, const gw_admit_t *admit, key_admission_t *a)
{
    uint64_t cap = admit->max_tokens ? admit->max_tokens
                                     : key_output_cap (self->config.model_max_output, admit->model,
                                                       self->config.default_max_output);
    uint64_t in = 0, out = 0;
    //  A model without a price reserves nothing (its calls cost nothing either).
    if (price_table_max_rates (self->prices, admit->model, self->config.currency, gw_wall_ms (), &in, &out))
        in = out = 0;
    a->request_id = admit->request_id;
    a->ingress_id = admit->ingress_id;
    a->key_id = admit->key_id;
    a->cost_pico = key_max_cost (admit->prompt_tokens, cap, in, out);
    a->tokens = (int64_t) s_add (admit->prompt_tokens, cap);
    a->ended = &admit->ended;
}

static const char *
s_period_word (const char *code)
{
    if (strcmp (code, "budget_day") == 0)
        return "Daily";
    if (strcmp (code, "budget_week") == 0)
        return "Weekly";
    if (strcmp (code, "budget_month") == 0)
        return "Monthly";
    return "Total";
}

//  Fills the reply's window fields, and for a refusal its message and retry time.
static void
s_verdict_reply (control_service_t *self, const key_admission_t *a, const key_verdict_t *v, gw_admit_reply_t *r,
                 char *message, size_t size)
{
    bool admitted = v->status == 200;
    r->status = (uint32_t) v->status;
    r->code = (char *) v->code;
    r->message = message;
    r->reserved_pico = admitted ? (uint64_t) v->reserved_pico : 0;
    message[0] = 0;
    key_window_t rpm = { (uint64_t) (v->rpm_limit > 0 ? v->rpm_limit : 0), (uint64_t) v->rpm_prev,
                         (uint64_t) v->rpm_curr, v->elapsed_ms };
    key_window_t tpm = { (uint64_t) (v->tpm_limit > 0 ? v->tpm_limit : 0), (uint64_t) v->tpm_prev,
                         (uint64_t) v->tpm_curr, v->elapsed_ms };
    if (admitted) {
        rpm.curr += 1;
        tpm.curr = s_add (tpm.curr, (uint64_t) a->tokens);
    }
    if (v->rpm_limit >= 0) {
        r->rpm_limit = rpm.limit;
        r->rpm_remaining = key_window_remaining (&rpm, 0);
        r->rpm_reset_ms = key_window_reset_ms (&rpm);
    }
    if (v->tpm_limit >= 0) {
        r->tpm_limit = tpm.limit;
        r->tpm_remaining = key_window_remaining (&tpm, 0);
        r->tpm_reset_ms = key_window_reset_ms (&tpm);
    }
    if (v->status == 401) {
        snprintf (message, size, "Invalid API key. Check the key, or ask your gateway operator for a new one.");
        return;
    }
    if (admitted)
        return;
    char wait[32];
    const char *currency = self->config.currency;
    if (strcmp (v->code, "concurrency") == 0) {
        r->retry_after_ms = CONCURRENCY_RETRY_MS;
        snprintf (message, size,
                  "Too many requests in progress for this key: %" PRId64 " at once. Retry when one has finished.",
                  v->conc_limit);
    }
    else if (strcmp (v->code, "rate_limit_requests") == 0) {
        int64_t retry = key_window_retry_ms (&rpm, 1);
        r->retry_after_ms = retry > 0 ? (uint64_t) retry : 0;
        key_duration_format (r->retry_after_ms, wait, sizeof wait);
        if (retry < 0)
            snprintf (message, size, "Rate limit for requests per minute (RPM) on this key is 0: no request is allowed.");
        else
            snprintf (message, size,
                      "Rate limit reached for requests per minute (RPM) on this key: limit %" PRIu64
                      ". Please try again in %s.",
                      rpm.limit, wait);
    }
    else if (strcmp (v->code, "rate_limit_tokens") == 0) {
        int64_t retry = key_window_retry_ms (&tpm, (uint64_t) a->tokens);
        r->retry_after_ms = retry > 0 ? (uint64_t) retry : 0;
        key_duration_format (r->retry_after_ms, wait, sizeof wait);
        if (retry < 0)
            snprintf (message, size,
                      "This request may use up to %" PRId64 " tokens (prompt plus max_tokens), more than this key's "
                      "limit of %" PRIu64 " tokens per minute (TPM). Lower max_tokens or the prompt.",
                      a->tokens, tpm.limit);
        else
            snprintf (message, size,
                      "Rate limit reached for tokens per minute (TPM) on this key: limit %" PRIu64
                      ", requested %" PRId64 ". Please try again in %s.",
                      tpm.limit, a->tokens, wait);
    }
    else {
        char limit[48], used[48];
        key_money_format (v->budget_limit, limit, sizeof limit);
        key_money_format (v->budget_used, used, sizeof used);
        int64_t reset_ms = 0;
        if (v->reset_at[0] && gw_time_parse_ms (v->reset_at, &reset_ms) == 0) {
            int64_t left = reset_ms - gw_wall_ms ();
            r->retry_after_ms = left > 0 ? (uint64_t) left : 0;
            snprintf (message, size,
                      "%s budget exhausted for this key: %s %s, %s %s spent or reserved. It resets at %s.",
                      s_period_word (v->code), limit, currency, used, currency, v->reset_at);
        }
        else
            snprintf (message, size,
                      "%s budget exhausted for this key: %s %s, %s %s spent or reserved. It does not reset; "
                      "ask your gateway operator to raise it.",
                      s_period_word (v->code), limit, currency, used, currency);
    }
}

static int
s_by_key (const void *a_, const void *b_, void *arg)
{
    const s_item_t *items = arg;
    const s_item_t *a = &items[*(const size_t *) a_], *b = &items[*(const size_t *) b_];
    if (a->msg.admit.key_id != b->msg.admit.key_id)
        return a->msg.admit.key_id < b->msg.admit.key_id ? -1 : 1;
    return *(const size_t *) a_ < *(const size_t *) b_ ? -1 : 1;
}

/*  Decides the admissions of a turn. In one transaction, in key order so two
    instances lock key rows in the same order. gw_admit raises no error of its
    own: a failure is the database's (a deadlock, a lost connection), and then
    each admission is tried again alone, so none waits on another. */
static void
s_admit_all (control_service_t *self, size_t *order, size_t n)
{
    key_admission_t *admissions = calloc (n, sizeof *admissions);
    if (!admissions)
        return;
    qsort_r (order, n, sizeof *order, s_by_key, self->items);
    for (size_t i = 0; i < n; i++)
        s_estimate (self, &self->items[order[i]].msg.admit, &admissions[i]);
    bool together = n > 1 && key_store_begin (self->db) == 0;
    bool failed = false;
    for (size_t i = 0; together && !failed && i < n; i++) {
        s_item_t *it = &self->items[order[i]];
        failed = key_store_admit (self->db, &self->config.policy, &admissions[i], &it->verdict) != 0;
        it->decided = !failed;
    }
    if (together && (failed || key_store_commit (self->db))) {
        gw_warn ("control", "admission batch failed, deciding one by one count=%zu", n);
        key_store_rollback (self->db);
        together = false;
    }
    for (size_t i = 0; i < n; i++) {
        s_item_t *it = &self->items[order[i]];
        if (!together)
            it->decided = key_store_admit (self->db, &self->config.policy, &admissions[i], &it->verdict) == 0;
        gw_msg_t reply = { .id = GW_MSG_ADMIT_REPLY };
        gw_admit_reply_t *r = &reply.admit_reply;
        r->correlation = it->msg.admit.correlation;
        char message[512];
        if (it->decided)
            s_verdict_reply (self, &admissions[i], &it->verdict, r, message, sizeof message);
        else {
            //  Budgets fail closed: no admission without the database.
            r->status = 503;
            r->code = "accounting_unavailable";
            r->message = "Accounting cannot admit requests right now: the database cannot be reached.";
        }
        gw_msg_send (self->router, it->rid, it->rid_size, &reply);
    }
    free (admissions);
}

//  -------------------------------------------------------------------------
//  Releases

static int
s_by_request (const void *a_, const void *b_, void *arg)
{
    const s_item_t *items = arg;
    return strcmp (items[*(const size_t *) a_].msg.release.request_id,
                   items[*(const size_t *) b_].msg.release.request_id);
}

/*  Releases of a turn in one transaction, in request order (the order the
    usage transactions lock reservations in), acknowledged once committed.
    Nothing is acknowledged on failure: the ingresses send them again. */
static void
s_release_all (control_service_t *self, size_t *order, size_t n)
{
    qsort_r (order, n, sizeof *order, s_by_request, self->items);
    bool ok = key_store_begin_lazy (self->db) == 0;
    for (size_t i = 0; ok && i < n; i++) {
        const gw_release_t *r = &self->items[order[i]].msg.release;
        ok = key_store_release (self->db, r->request_id, r->dispatched, r->dispatch, r->attempts) == 0;
    }
    if (!ok || key_store_commit (self->db)) {
        key_store_rollback (self->db);
        gw_warn ("control", "releases not stored count=%zu", n);
        return;
    }
    //  One RELEASE_ACK per sender with all of its releases.
    for (size_t i = 0; i < n; i++) {
        s_item_t *first = &self->items[order[i]];
        if (first->decided)
            continue;
        gw_msg_t ack = { .id = GW_MSG_RELEASE_ACK };
        for (size_t k = i; k < n; k++) {
            s_item_t *it = &self->items[order[k]];
            if (!it->decided && it->rid_size == first->rid_size && memcmp (it->rid, first->rid, it->rid_size) == 0) {
                gw_strlist_append (&ack.release_ack.request_ids, it->msg.release.request_id);
                it->decided = true;
            }
        }
        gw_msg_send (self->router, first->rid, first->rid_size, &ack);
        gw_strlist_clear (&ack.release_ack.request_ids);
    }
}

//  -------------------------------------------------------------------------
//  Admin calls, reports, liveness

static void
s_admin (control_service_t *self, s_item_t *it)
{
    const gw_admin_request_t *req = &it->msg.admin_request;
    uint32_t status = 500;
    char *body = admin_api_handle (self->db, &self->config.policy, self->config.currency, req->method, req->path,
                                   req->body.data, req->body.size, &status);
    gw_msg_t reply = { .id = GW_MSG_ADMIN_REPLY };
    reply.admin_reply = (gw_admin_reply_t) { req->correlation, status, { (uint8_t *) body, body ? strlen (body) : 0 } };
    gw_msg_send (self->router, it->rid, it->rid_size, &reply);
    free (body);
}

static void
s_alert (control_service_t *self, s_item_t *it)
{
    const gw_alert_request_t *req = &it->msg.alert_request;
    uint32_t status = 500;
    char *body = alert_store_handle (self->db, &self->config.policy, self->config.currency, req->op, req->body.data,
                                     req->body.size, &status);
    gw_msg_t reply = { .id = GW_MSG_ALERT_REPLY };
    reply.alert_reply = (gw_alert_reply_t) { req->correlation, status,
                                             { (uint8_t *) body, body ? strlen (body) : 0 } };
    gw_msg_send (self->router, it->rid, it->rid_size, &reply);
    free (body);
}

static void
s_report (control_service_t *self, s_item_t *it)
{
    uint32_t status = 500;
    char *body = usage_report_run (self->db, &it->msg.report_request, self->config.currency, &status);
    gw_msg_t reply = { .id = GW_MSG_REPORT_REPLY };
    reply.report_reply = (gw_report_reply_t) { it->msg.report_request.correlation, status,
                                               { (uint8_t *) body, body ? strlen (body) : 0 } };
    gw_msg_send (self->router, it->rid, it->rid_size, &reply);
    free (body);
}

static void
s_alive_all (control_service_t *self, size_t *order, size_t n)
{
    //  Each ingress once per turn, however often it said so: its latest word
    //  (a leaving one last of all).
    size_t latest[TURN_MAX], count = 0;
    for (size_t i = n; i-- > 0;) {
        const char *id = self->items[order[i]].msg.ingress_alive.ingress_id;
        bool seen = !*id;
        for (size_t k = 0; k < count && !seen; k++)
            seen = strcmp (self->items[latest[k]].msg.ingress_alive.ingress_id, id) == 0;
        if (!seen)
            latest[count++] = order[i];
    }
    if (key_store_begin_lazy (self->db))
        return;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const gw_ingress_alive_t *alive = &self->items[latest[i]].msg.ingress_alive;
        rc = key_store_alive (self->db, alive->ingress_id, alive->leaving);
    }
    if (rc || key_store_commit (self->db))
        key_store_rollback (self->db);
    //  Then their hosts' figures for the alerter (an ingress may be alone on
    //  a host), each row on its own: the slots above never wait on them.
    for (size_t i = 0; i < count; i++) {
        const gw_ingress_alive_t *alive = &self->items[latest[i]].msg.ingress_alive;
        gw_status_t st = { .kind = "ingress", .instance = alive->instance, .host = alive->host,
                           .cpu_permille = alive->cpu_permille, .mem_permille = alive->mem_permille,
                           .disk_permille = alive->disk_permille, .balance_provider = "", .balance_currency = "",
                           .balance_total = "", .leaving = alive->leaving };
        if (alert_store_instance (self->db, &st, 3 * GW_INGRESS_ALIVE_MS))
            break;
    }
}

//  -------------------------------------------------------------------------
//  The thread

static void
s_turn (control_service_t *self)
{
    size_t n = 0;
    while (n < TURN_MAX) {
        s_item_t *it = &self->items[n];
        gw_decode_t rc = gw_msg_recv (self->router, it->rid, &it->rid_size, &it->msg);
        if (rc == GW_DECODE_INTERRUPTED)
            break;
        if (rc != GW_DECODE_OK) {
            gw_warn ("control", "malformed or foreign-version message dropped");
            continue;
        }
        int to = it->msg.id == GW_MSG_RELEASE || it->msg.id == GW_MSG_INGRESS_ALIVE       ? 0
                 : it->msg.id == GW_MSG_REPORT_REQUEST || it->msg.id == GW_MSG_ADMIN_REQUEST
                           || it->msg.id == GW_MSG_ALERT_REQUEST
                       ? 1
                                                                                           : -1;
        if (self->worker_kind == 0 && to >= 0) {
            //  Not answered when the pair is full: the asker sends it again or times out.
            gw_msg_send (self->pairs[to], it->rid, it->rid_size, &it->msg);
            gw_msg_clear (&it->msg);
            continue;
        }
        it->decided = false;
        n++;
    }
    if (n == 0)
        return;
    //  Liveness first (it frees nothing but keeps slots), then lookups and
    //  admissions (clients wait on them), releases, admin calls, reports.
    static const gw_msg_id_t kinds[] = { GW_MSG_INGRESS_ALIVE, GW_MSG_KEY_LOOKUP,    GW_MSG_ADMIT,
                                         GW_MSG_RELEASE,       GW_MSG_ADMIN_REQUEST, GW_MSG_REPORT_REQUEST,
                                         GW_MSG_ALERT_REQUEST };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
            if (self->items[i].msg.id == kinds[k])
                self->order[count++] = i;
        if (count == 0)
            continue;
        if (kinds[k] == GW_MSG_INGRESS_ALIVE)
            s_alive_all (self, self->order, count);
        else if (kinds[k] == GW_MSG_ADMIT)
            s_admit_all (self, self->order, count);
        else if (kinds[k] == GW_MSG_RELEASE)
            s_release_all (self, self->order, count);
        else
            for (size_t i = 0; i < count; i++) {
                s_item_t *it = &self->items[self->order[i]];
                if (kinds[k] == GW_MSG_KEY_LOOKUP)
                    s_lookup (self, it);
                else if (kinds[k] == GW_MSG_ADMIN_REQUEST)
                    s_admin (self, it);
                else if (kinds[k] == GW_MSG_ALERT_REQUEST)
                    s_alert (self, it);
                else
                    s_report (self, it);
            }
    }
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            known |= self->items[i].msg.id == kinds[k];
        if (!known)
            gw_warn ("control", "unexpected message id=%s", gw_msg_name (self->items[i].msg.id));
        gw_msg_clear (&self->items[i].msg);
    }
}

static void
s_maintain (control_service_t *self)
{
    int64_t now = gw_now_ms ();
    if (!usage_store_ready (self->db) && now >= self->next_connect_ms) {
        if (usage_store_connect (self->db) == 0) {
            self->reconnect_ms = 100;
            //  Reservations and the minute rows churn (a row in and out per
            //  request), so their indexes fill with entries of dead rows until
            //  a vacuum. A plain index scan marks such entries dead as it
            //  passes, and the next scan skips them; a bitmap scan, which the
            //  planner picks for these small tables, never does and reads
            //  them all, every admission.
            PQclear (usage_store_exec (self->db, "SET enable_bitmapscan = off", 0, NULL));
        }
        else {
            //  Meanwhile lookups and admissions answer 503 at once.
            self->reconnect_ms = self->reconnect_ms < 2500 ? self->reconnect_ms * 2 : 5000;
            self->next_connect_ms = now + self->reconnect_ms;
        }
    }
    if (usage_store_ready (self->db) && self->worker_kind == WORKER_RELEASES && now >= self->next_housekeep_ms) {
        self->next_housekeep_ms = now + HOUSEKEEP_MS;
        if (key_store_housekeep (self->db))
            gw_warn ("control", "housekeeping failed");
    }
}

/*  A worker's answers, on to the askers they are for. */
static void
s_forward_answers (control_service_t *self, void *pair)
{
    for (int i = 0; i < TURN_MAX; i++) {
        char rid[256];
        size_t rid_size = 0;
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (pair, rid, &rid_size, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc == GW_DECODE_OK)
            gw_msg_send (self->router, rid, rid_size, &msg);
        gw_msg_clear (&msg);
    }
}

static void *
s_run (void *arg)
{
    control_service_t *self = arg;
    while (!atomic_load (&self->stop)) {
        s_maintain (self);
        zmq_pollitem_t items[3] = { { self->router, 0, ZMQ_POLLIN, 0 },
                                    { self->pairs[0], 0, ZMQ_POLLIN, 0 },
                                    { self->pairs[1], 0, ZMQ_POLLIN, 0 } };
        if (zmq_poll (items, self->worker_kind ? 1 : 3, POLL_MS) <= 0)
            continue;
        if (items[0].revents & ZMQ_POLLIN)
            s_turn (self);
        for (int w = 0; w < 2 && !self->worker_kind; w++)
            if (items[1 + w].revents & ZMQ_POLLIN)
                s_forward_answers (self, self->pairs[w]);
    }
    return NULL;
}

static void s_stop (control_service_t *self);

/*  The state both threads have: configuration, a connection, a turn's items. */
static control_service_t *
s_new (const control_config_t *config, price_table_t *prices)
{
    control_service_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    self->prices = prices;
    self->reconnect_ms = 100;
    atomic_init (&self->stop, false);
    self->items = calloc (TURN_MAX, sizeof *self->items);
    self->order = calloc (TURN_MAX, sizeof *self->order);
    self->db = usage_store_new (config->dsn, config->currency);
    if (!self->items || !self->order || !self->db) {
        s_stop (self);
        return NULL;
    }
    return self;
}

static void *
s_pair (void *zmq_ctx)
{
    void *pair = zmq_socket (zmq_ctx, ZMQ_PAIR);
    int zero = 0, hwm = 100000;
    zmq_setsockopt (pair, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt (pair, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt (pair, ZMQ_RCVHWM, &hwm, sizeof hwm);
    return pair;
}

control_service_t *
control_service_new (void *zmq_ctx, const control_config_t *config, price_table_t *prices)
{
    control_service_t *self = s_new (config, prices);
    if (!self)
        return NULL;
    //  The workers first: the control thread forwards to them from its first turn.
    for (int w = 0; w < 2; w++) {
        char endpoint[64];
        snprintf (endpoint, sizeof endpoint, "inproc://gw-control-worker-%d-%p", w, (void *) self);
        control_service_t *worker = self->workers[w] = s_new (config, prices);
        self->pairs[w] = s_pair (zmq_ctx);
        if (!worker || zmq_bind (self->pairs[w], endpoint)) {
            gw_error ("control", "cannot start a worker thread");
            control_service_destroy (&self);
            return NULL;
        }
        worker->worker_kind = w == 0 ? WORKER_RELEASES : WORKER_REPORTS;
        worker->router = s_pair (zmq_ctx);
        if (zmq_connect (worker->router, endpoint) || pthread_create (&worker->thread, NULL, s_run, worker)) {
            gw_error ("control", "cannot start a worker thread");
            control_service_destroy (&self);
            return NULL;
        }
        worker->started = true;
    }
    self->router = zmq_socket (zmq_ctx, ZMQ_ROUTER);
    int zero = 0, hwm = 100000;
    zmq_setsockopt (self->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt (self->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt (self->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind (self->router, config->endpoint)) {
        gw_error ("control", "cannot bind endpoint=%s error=%s", config->endpoint, zmq_strerror (errno));
        control_service_destroy (&self);
        return NULL;
    }
    //  The socket was made here; the thread is its only user from now on
    //  (thread creation is the memory barrier libzmq asks for).
    if (pthread_create (&self->thread, NULL, s_run, self)) {
        gw_error ("control", "cannot start thread");
        control_service_destroy (&self);
        return NULL;
    }
    self->started = true;
    gw_info ("control", "control endpoint bound endpoint=%s", config->endpoint);
    return self;
}

static void
s_stop (control_service_t *self)
{
    if (self->started) {
        atomic_store (&self->stop, true);
        pthread_join (self->thread, NULL);
    }
    for (int w = 0; w < 2; w++) {
        if (self->workers[w])
            s_stop (self->workers[w]);
        if (self->pairs[w])
            zmq_close (self->pairs[w]);
    }
    if (self->router)
        zmq_close (self->router);
    usage_store_destroy (&self->db);
    free (self->items);
    free (self->order);
    free (self);
}

void
control_service_destroy (control_service_t **self_p)
{
    if (*self_p)
        s_stop (*self_p);
    *self_p = NULL;
}
