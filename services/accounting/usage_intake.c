/*  usage_intake.c: batches of usage events, priced, stored, then acknowledged. */
#include "usage_intake.h"
#include "alert_store.h"
#include "gw_log.h"
#include "gw_env.h"
#include "gw_host.h"
#include "gw_proto.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <unistd.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct {
    char rid[256];  //  the dispatcher that sent it
    size_t rid_size;
    gw_msg_t msg;
} s_item_t;

struct usage_intake_t {
    gw_loop_t *loop;
    intake_config_t config;
    usage_store_t *store;
    price_table_t *prices;
    void *router;
    s_item_t *items;
    size_t nitems;  //  received, not stored yet
    usage_row_t *rows;
    gw_timer_t *linger_timer;  //  stores what gathered, GW_ACCOUNTING_LINGER_MS after the first
    gw_timer_t *reconnect_timer;
    gw_timer_t *status_timer;  //  accounting's own STATUS row
    char instance[400];
    int status_ms;
    int reconnect_ms;
    uint64_t stored, unpriced, batches;
};

/*  An event PostgreSQL would refuse (a count beyond bigint, an absurd date)
    would fail every batch it joins, forever, since its dispatcher resends it.
    Such an event comes from a broken sender: it is logged whole and
    acknowledged without a row, so it cannot block everyone else's usage. */
static bool
s_storable (const gw_usage_t *e)
{
    const uint64_t limit = (uint64_t) INT64_MAX;
    return e->cache_hit_tokens <= limit && e->cache_miss_tokens <= limit && e->completion_tokens <= limit
           && e->reasoning_tokens <= limit && e->queue_wait_us <= limit && e->ttfb_us <= limit
           && e->total_us <= limit && e->attempt <= (uint32_t) INT32_MAX && e->dispatch <= (uint32_t) INT32_MAX
           && e->status <= (uint32_t) INT32_MAX && e->started_ms < 253402300799000ull  //  year 9999
           && e->event_id[0];
}

static void
s_ack (usage_intake_t *self, size_t n)
{
    //  One USAGE_ACK per dispatcher per batch, with all of its events.
    bool *done = calloc (n, sizeof *done);
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        gw_msg_t ack = { .id = GW_MSG_USAGE_ACK };
        for (size_t k = i; k < n; k++)
            if (!done[k] && self->items[k].rid_size == self->items[i].rid_size
                && memcmp (self->items[k].rid, self->items[i].rid, self->items[i].rid_size) == 0) {
                gw_strlist_append (&ack.usage_ack.event_ids, self->items[k].msg.usage.event_id);
                done[k] = true;
            }
        //  A dispatcher that left meanwhile gets nothing; it resends after restart.
        gw_msg_send (self->router, self->items[i].rid, self->items[i].rid_size, &ack);
        gw_strlist_clear (&ack.usage_ack.event_ids);
    }
    free (done);
}

static void
s_on_reconnect (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    usage_intake_t *self = arg;
    if (usage_store_connect (self->store) == 0) {
        self->reconnect_ms = 100;
        return;
    }
    //  Back off up to 5 s: events wait safely in the dispatchers' spools.
    self->reconnect_ms = self->reconnect_ms < 2500 ? self->reconnect_ms * 2 : 5000;
    gw_timer_start (loop, timer, self->reconnect_ms);
}

/*  An instance's STATUS (or accounting's own): upserted without waiting for
    the WAL flush (a lost one is replaced by the next), skipped while the
    database is away (the spools' events matter more than liveness). */
static void
s_store_status (usage_intake_t *self, const gw_status_t *st)
{
    if (!usage_store_ready (self->store))
        return;
    PGresult *res = usage_store_exec (self->store, "BEGIN", 0, NULL);
    PQclear (res);
    res = usage_store_exec (self->store, "SET LOCAL synchronous_commit = off", 0, NULL);
    PQclear (res);
    //  A report later than three intervals breaks the instance's run of fresh
    //  reports (the alerter waits for accounting's own to be long enough).
    bool ok = alert_store_instance (self->store, st, 3 * self->status_ms) == 0;
    res = usage_store_exec (self->store, ok ? "COMMIT" : "ROLLBACK", 0, NULL);
    PQclear (res);
}

static void
s_on_status_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    usage_intake_t *self = arg;
    //  With no usage coming in, nothing else would bring the connection back
    //  after a database restart, and every row would go stale.
    if (!usage_store_ready (self->store) && !gw_timer_active (self->reconnect_timer))
        gw_timer_start (loop, self->reconnect_timer, 0);
    gw_host_t host;
    gw_host_sample (".", &host);
    gw_status_t st = { "accounting", self->instance, host.name, 0, 0, host.cpu_permille, host.mem_permille,
                       host.disk_permille, "", "", "", false, false };
    s_store_status (self, &st);
    gw_timer_start (loop, timer, self->status_ms);
}

static void s_store_batch (usage_intake_t *self);

static void
s_on_linger (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    s_store_batch (arg);
}

/*  Takes what the dispatchers sent. Events wait up to GW_ACCOUNTING_LINGER_MS
    for others, so that a steady trickle is stored many per transaction: a
    transaction's fixed cost (the commit's flush, the keys' rows) dwarfs an
    event's. A full batch goes at once. */
static void
s_on_router (gw_loop_t *loop, void *socket, void *arg)
{
    usage_intake_t *self = arg;
    size_t n = self->nitems;
    while (n < self->config.batch_max) {
        s_item_t *it = &self->items[n];
        gw_decode_t rc = gw_msg_recv (socket, it->rid, &it->rid_size, &it->msg);
        if (rc == GW_DECODE_INTERRUPTED)
            break;
        if (rc == GW_DECODE_OK && it->msg.id == GW_MSG_STATUS) {
            s_store_status (self, &it->msg.status);
            gw_msg_clear (&it->msg);
            continue;
        }
        if (rc != GW_DECODE_OK || it->msg.id != GW_MSG_USAGE) {
            if (rc == GW_DECODE_OK)
                gw_warn ("intake", "unexpected message id=%s", gw_msg_name (it->msg.id));
            else
                gw_warn ("intake", "malformed or foreign-version message dropped");
            gw_msg_clear (&it->msg);
            continue;
        }
        n++;
    }
    self->nitems = n;
    if (n == 0)
        return;
    if (n < self->config.batch_max && self->config.linger_ms > 0) {
        if (!gw_timer_active (self->linger_timer))
            gw_timer_start (loop, self->linger_timer, self->config.linger_ms);
        return;
    }
    s_store_batch (self);
}

static void
s_store_batch (usage_intake_t *self)
{
    gw_loop_t *loop = self->loop;
    size_t n = self->nitems;
    self->nitems = 0;
    if (gw_timer_active (self->linger_timer))
        gw_timer_stop (loop, self->linger_timer);
    if (n == 0)
        return;
    if (!usage_store_ready (self->store)) {
        //  Not stored, not acknowledged: the spools will send these again.
        if (!gw_timer_active (self->reconnect_timer))
            gw_timer_start (loop, self->reconnect_timer, 0);
    }
    else {
        //  Refused events move to the end, past the rows handed to the store.
        size_t good = n;
        for (size_t i = 0; i < good;) {
            if (s_storable (&self->items[i].msg.usage)) {
                i++;
                continue;
            }
            gw_error ("intake", "refusing malformed usage event event_id=%s request_id=%s provider=%s "
                      "hit=%llu miss=%llu completion=%llu started_ms=%llu",
                      self->items[i].msg.usage.event_id, self->items[i].msg.usage.request_id,
                      self->items[i].msg.usage.provider,
                      (unsigned long long) self->items[i].msg.usage.cache_hit_tokens,
                      (unsigned long long) self->items[i].msg.usage.cache_miss_tokens,
                      (unsigned long long) self->items[i].msg.usage.completion_tokens,
                      (unsigned long long) self->items[i].msg.usage.started_ms);
            s_item_t tmp = self->items[i];
            self->items[i] = self->items[--good];
            self->items[good] = tmp;
        }
        for (size_t i = 0; i < good; i++) {
            const gw_usage_t *e = &self->items[i].msg.usage;
            usage_row_t *row = &self->rows[i];
            row->event = e;
            //  An answer from the gateway's response cache bought nothing.
            row->cost_pico = 0;
            row->priced = e->cached
                          || price_table_cost (self->prices, e->provider, e->upstream_model, self->config.currency,
                                               (int64_t) e->started_ms, e->cache_hit_tokens, e->cache_miss_tokens,
                                               e->completion_tokens, &row->cost_pico)
                                 == 0;
            //  The column is a signed bigint: a cost beyond it is stored unpriced
            //  (and said) rather than fail its whole batch forever.
            if (row->priced && row->cost_pico > INT64_MAX) {
                gw_error ("intake", "cost out of range event_id=%s", e->event_id);
                row->priced = false;
            }
            if (!row->priced) {
                row->cost_pico = 0;
                self->unpriced++;
            }
        }
        if (good == 0 || usage_store_insert (self->store, self->rows, good) == 0) {
            self->stored += n;
            self->batches++;
            s_ack (self, n);
        }
        else if (!gw_timer_active (self->reconnect_timer))
            gw_timer_start (loop, self->reconnect_timer, self->reconnect_ms);
    }
    for (size_t i = 0; i < n; i++)
        gw_msg_clear (&self->items[i].msg);
}

usage_intake_t *
usage_intake_new (gw_loop_t *loop, void *zmq_ctx, const intake_config_t *config, usage_store_t *store,
                  price_table_t *prices)
{
    usage_intake_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->store = store;
    self->prices = prices;
    self->reconnect_ms = 100;
    self->items = calloc (config->batch_max, sizeof *self->items);
    self->rows = calloc (config->batch_max, sizeof *self->rows);
    self->reconnect_timer = gw_timer_new (s_on_reconnect, self);
    self->status_timer = gw_timer_new (s_on_status_timer, self);
    self->linger_timer = gw_timer_new (s_on_linger, self);
    //  As often as the dispatchers report theirs (GW_STATUS_MS): the alerter's
    //  GW_ALERT_SILENT_S must be longer than both.
    self->status_ms = (int) gw_env_int ("GW_STATUS_MS", 10000, 100, 3600000);
    gw_timer_start (loop, self->status_timer, 0);
    char host[64] = "";
    gethostname (host, sizeof host - 1);
    //  Named after its host and endpoint, which outlive a restart: a restarted
    //  instance takes its row back instead of leaving a silent one behind.
    snprintf (self->instance, sizeof self->instance, "%s %s", host, config->endpoint);
    self->router = zmq_socket (zmq_ctx, ZMQ_ROUTER);
    int zero = 0, hwm = (int) (2 * config->batch_max), sndhwm = 200000;
    zmq_setsockopt (self->router, ZMQ_LINGER, &zero, sizeof zero);
    //  About two batches may wait here. A deeper queue would hold events longer
    //  than the senders' resend interval under load, and they would come again
    //  for nothing; a full one pushes back to the senders' spools instead.
    zmq_setsockopt (self->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt (self->router, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
    if (!self->items || !self->rows || zmq_bind (self->router, config->endpoint)) {
        gw_error ("intake", "cannot bind endpoint=%s error=%s", config->endpoint, zmq_strerror (errno));
        usage_intake_destroy (&self);
        return NULL;
    }
    gw_loop_add_socket (loop, self->router, s_on_router, self);
    gw_timer_start (loop, self->reconnect_timer, 0);
    gw_info ("intake", "usage endpoint bound endpoint=%s currency=%s", config->endpoint, config->currency);
    return self;
}

void
usage_intake_destroy (usage_intake_t **self_p)
{
    usage_intake_t *self = *self_p;
    if (!self)
        return;
    gw_info ("intake", "stopping stored=%llu unpriced=%llu batches=%llu", (unsigned long long) self->stored,
             (unsigned long long) self->unpriced, (unsigned long long) self->batches);
    gw_timer_destroy (self->loop, &self->reconnect_timer);
    gw_timer_destroy (self->loop, &self->status_timer);
    gw_timer_destroy (self->loop, &self->linger_timer);
    //  Received, not stored: not acknowledged either, so the spools send them again.
    for (size_t i = 0; i < self->nitems; i++)
        gw_msg_clear (&self->items[i].msg);
    //  A clean stop: this instance is gone, not silent.
    gw_status_t leaving = { .kind = "accounting", .instance = self->instance, .host = "", .balance_provider = "",
                            .balance_currency = "", .balance_total = "", .leaving = true };
    if (self->store)
        s_store_status (self, &leaving);
    if (self->router) {
        gw_loop_remove_socket (self->loop, self->router);
        zmq_close (self->router);
    }
    free (self->items);
    free (self->rows);
    free (self);
    *self_p = NULL;
}
