/*  alert_engine.c: lease, evaluate, claim, deliver, on the alerter's loop. */
#include "alert_engine.h"
#include "gw_log.h"
#include "gw_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define INFLIGHT_MAX 256  //  deliveries being sent at once

typedef void (s_answer_fn) (alert_engine_t *self, json_t *answer, void *ctx);

typedef struct s_question_t {
    struct s_question_t *next;
    uint64_t correlation;
    int64_t deadline_ms;
    s_answer_fn *fn;
    void *ctx;
} s_question_t;

typedef struct {
    alert_engine_t *engine;
    int64_t id;
    int64_t attempts;
    bool ok;  //  the outcome, kept until accounting has recorded it
    int64_t retry_ms;
    char error[256];
} s_delivery_t;

struct alert_engine_t {
    gw_loop_t *loop;
    engine_config_t config;
    notifier_t *notifier;
    void *dealer;
    gw_timer_t *tick, *sweep;
    s_question_t *questions;
    uint64_t next_correlation;
    bool leader;
    bool cycling;  //  a cycle is in progress
    int claims_open;  //  claims and resolves of this cycle not answered yet
    //  Deliveries being sent or recorded (NULL: a free slot). Owned here, so
    //  that destroying the engine after the notifier frees them.
    s_delivery_t *inflight[INFLIGHT_MAX];
};

/* ---- questions to accounting ---- */

static void
s_ask (alert_engine_t *self, const char *op, json_t *body, s_answer_fn *fn, void *ctx)
{
    //  body is taken over.
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    s_question_t *q = calloc (1, sizeof *q);
    if (!q || !text) {
        free (q);
        free (text);
        fn (self, NULL, ctx);
        return;
    }
    q->correlation = ++self->next_correlation;
    q->deadline_ms = gw_now_ms () + self->config.timeout_ms;
    q->fn = fn;
    q->ctx = ctx;
    q->next = self->questions;
    self->questions = q;
    gw_msg_t msg = { .id = GW_MSG_ALERT_REQUEST };
    msg.alert_request = (gw_alert_request_t) { q->correlation, (char *) op, { (uint8_t *) text, strlen (text) } };
    //  No accounting connected: the send fails and the sweep answers NULL.
    gw_msg_send (self->dealer, NULL, 0, &msg);
    free (text);
}

static void
s_answer (alert_engine_t *self, uint64_t correlation, json_t *answer)
{
    for (s_question_t **link = &self->questions; *link; link = &(*link)->next)
        if ((*link)->correlation == correlation) {
            s_question_t *q = *link;
            *link = q->next;
            q->fn (self, answer, q->ctx);
            free (q);
            return;
        }
}

static void
s_on_dealer (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    alert_engine_t *self = arg;
    for (int i = 0; i < 256; i++) {
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, NULL, NULL, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc == GW_DECODE_OK && msg.id == GW_MSG_ALERT_REPLY) {
            json_t *answer = NULL;
            if (msg.alert_reply.status == 200)
                answer = json_loadb ((const char *) msg.alert_reply.body.data, msg.alert_reply.body.size, 0, NULL);
            else
                gw_warn ("engine", "accounting answered status=%u body=%.*s", msg.alert_reply.status,
                         (int) msg.alert_reply.body.size, (const char *) msg.alert_reply.body.data);
            s_answer (self, msg.alert_reply.correlation, answer);
            json_decref (answer);
        }
        gw_msg_clear (&msg);
    }
}

static void
s_on_sweep (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    alert_engine_t *self = arg;
    int64_t now = gw_now_ms ();
    for (s_question_t **link = &self->questions; *link;) {
        s_question_t *q = *link;
        if (q->deadline_ms <= now) {
            *link = q->next;
            q->fn (self, NULL, q->ctx);
            free (q);
        }
        else
            link = &q->next;
    }
    gw_timer_start (loop, timer, 100);
}

/* ---- deliveries ---- */

/*  True when delivery id is in flight already. */
static bool
s_inflight (alert_engine_t *self, int64_t id)
{
    for (int i = 0; i < INFLIGHT_MAX; i++)
        if (self->inflight[i] && self->inflight[i]->id == id)
            return true;
    return false;
}

/*  Takes a slot for d; -1 when all are busy. */
static int
s_inflight_take (alert_engine_t *self, s_delivery_t *d)
{
    for (int i = 0; i < INFLIGHT_MAX; i++)
        if (!self->inflight[i]) {
            self->inflight[i] = d;
            return 0;
        }
    return -1;
}

static void
s_inflight_done (alert_engine_t *self, s_delivery_t *d)
{
    for (int i = 0; i < INFLIGHT_MAX; i++)
        if (self->inflight[i] == d)
            self->inflight[i] = NULL;
    free (d);
}

static void s_record (alert_engine_t *self, s_delivery_t *d);

static void
s_on_recorded (alert_engine_t *self, json_t *answer, void *ctx)
{
    s_delivery_t *d = ctx;
    if (!answer) {
        //  Not recorded: the delivery stays in flight and the outcome is told
        //  again, or a message that went out would go out a second time.
        gw_warn ("engine", "delivery outcome not recorded, telling again id=%lld", (long long) d->id);
        s_record (self, d);
        return;
    }
    s_inflight_done (self, d);
}

static void
s_record (alert_engine_t *self, s_delivery_t *d)
{
    s_ask (self, "delivered",
           json_pack ("{s:I, s:b, s:s, s:I}", "id", (json_int_t) d->id, "ok", d->ok, "error", d->error, "retry_ms",
                      (json_int_t) d->retry_ms),
           s_on_recorded, d);
}

static void
s_on_sent (void *arg, bool ok, const char *error)
{
    s_delivery_t *d = arg;
    alert_engine_t *self = d->engine;
    int64_t retry = self->config.retry_base_ms;
    for (int64_t i = 0; i < d->attempts && retry < self->config.retry_max_ms; i++)
        retry *= 2;
    if (retry > self->config.retry_max_ms)
        retry = self->config.retry_max_ms;
    if (ok)
        gw_info ("engine", "delivered id=%lld", (long long) d->id);
    else
        gw_warn ("engine", "delivery failed id=%lld attempts=%lld retry_ms=%lld error=%s", (long long) d->id,
                 (long long) d->attempts + 1, (long long) retry, error ? error : "");
    d->ok = ok;
    d->retry_ms = retry;
    snprintf (d->error, sizeof d->error, "%s", error ? error : "");
    s_record (self, d);
}

static void
s_on_outbox (alert_engine_t *self, json_t *answer, void *ctx)
{
    (void) ctx;
    self->cycling = false;
    size_t i;
    json_t *item;
    json_array_foreach (json_object_get (answer, "deliveries"), i, item) {
        int64_t id = json_integer_value (json_object_get (item, "id"));
        if (!id || s_inflight (self, id))
            continue;
        const char *channel = json_string_value (json_object_get (item, "channel"));
        size_t index = notifier_channels (self->notifier);
        for (size_t c = 0; channel && c < notifier_channels (self->notifier); c++)
            if (strcmp (notifier_channel_name (self->notifier, c), channel) == 0)
                index = c;
        s_delivery_t *d = calloc (1, sizeof *d);
        if (!d)
            return;
        d->engine = self;
        d->id = id;
        d->attempts = json_integer_value (json_object_get (item, "attempts"));
        if (s_inflight_take (self, d)) {
            free (d);
            return;
        }
        char alert_id[24];
        snprintf (alert_id, sizeof alert_id, "%lld", (long long) json_integer_value (json_object_get (item, "alert_id")));
        char *json = json_dumps (json_object_get (item, "alert"), JSON_COMPACT);
        notice_t notice = {
            .alert_id = alert_id,
            .severity = json_string_value (json_object_get (item, "severity")),
            .title = json_string_value (json_object_get (item, "title")),
            .text = json_string_value (json_object_get (item, "text")),
            .json = json ? json : "{}",
        };
        if (index == notifier_channels (self->notifier)) {
            //  A channel no longer configured: a failed attempt, kept pending
            //  (and retried with the usual backoff) until it comes back.
            s_on_sent (d, false, "channel not configured on this alerter");
        }
        else if (notifier_send (self->notifier, index, &notice, s_on_sent, d))
            s_on_sent (d, false, "could not start sending");
        free (json);
    }
}

/* ---- the cycle ---- */

static void
s_claims_done (alert_engine_t *self)
{
    if (--self->claims_open > 0)
        return;
    s_ask (self, "outbox", json_pack ("{s:i}", "limit", 100), s_on_outbox, NULL);
}

static void
s_on_claimed (alert_engine_t *self, json_t *answer, void *ctx)
{
    (void) ctx;
    if (answer && json_is_true (json_object_get (answer, "fresh")))
        gw_info ("engine", "alert fired id=%lld", (long long) json_integer_value (json_object_get (answer, "alert_id")));
    s_claims_done (self);
}

static json_t *
s_channels (alert_engine_t *self)
{
    json_t *channels = json_array ();
    for (size_t c = 0; c < notifier_channels (self->notifier); c++)
        json_array_append_new (channels, json_string (notifier_channel_name (self->notifier, c)));
    return channels;
}

static void
s_on_resolved (alert_engine_t *self, json_t *answer, void *ctx)
{
    (void) ctx;
    size_t i;
    json_t *id;
    json_array_foreach (json_object_get (answer, "resolved"), i, id)
        gw_info ("engine", "alert resolved id=%lld", (long long) json_integer_value (id));
    s_claims_done (self);
}

/*  GW_ALERT_RESOLVED_NOTICE: "all"/"1", "none"/"0", or a list of rules. */
static bool
s_notice_wanted (const char *setting, const char *rule)
{
    if (!setting || !rule || strcmp (setting, "none") == 0 || strcmp (setting, "0") == 0)
        return false;
    if (strcmp (setting, "all") == 0 || strcmp (setting, "1") == 0)
        return true;
    size_t len = strlen (rule);
    for (const char *p = setting; *p;) {
        size_t n = strcspn (p, ",");
        if (n == len && strncmp (p, rule, len) == 0)
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

static void
s_on_state (alert_engine_t *self, json_t *answer, void *ctx)
{
    (void) ctx;
    if (!answer) {
        self->cycling = false;
        return;
    }
    json_t *actions = alert_rules_evaluate (&self->config.rules, answer);
    self->claims_open = 1;  //  held until every question below is sent
    size_t i;
    json_t *claim;
    json_array_foreach (json_object_get (actions, "claims"), i, claim) {
        json_object_set_new (claim, "channels", s_channels (self));
        self->claims_open++;
        s_ask (self, "claim", json_incref (claim), s_on_claimed, NULL);
    }
    json_t *resolve;
    json_array_foreach (json_object_get (actions, "resolves"), i, resolve) {
        json_t *notice = NULL;
        const char *rule = json_string_value (json_object_get (resolve, "rule"));
        if (s_notice_wanted (self->config.resolved_notice, rule)) {
            char title[256];
            snprintf (title, sizeof title, "[resolved] %s (%s) is back under its threshold", rule,
                      json_string_value (json_object_get (resolve, "subject")) ?: "");
            notice = json_pack ("{s:s, s:s, s:s, s:s, s:s, s:s, s:{s:s}}", "rule", rule, "subject",
                                json_string_value (json_object_get (resolve, "subject")), "level", "resolved",
                                "severity", "resolved", "title", title, "text", title, "alert", "rule", rule);
        }
        json_t *ask = json_deep_copy (resolve);
        if (notice) {
            //  Recorded by accounting together with the resolution itself.
            json_object_set_new (notice, "channels", s_channels (self));
            json_object_set_new (ask, "notice", notice);
        }
        self->claims_open++;
        s_ask (self, "resolve", ask, s_on_resolved, NULL);
    }
    json_decref (actions);
    s_claims_done (self);
}

static void
s_on_lease (alert_engine_t *self, json_t *answer, void *ctx)
{
    (void) ctx;
    bool leader = answer && json_is_true (json_object_get (answer, "leader"));
    if (leader != self->leader)
        gw_info ("engine", leader ? "leading: this alerter evaluates and sends" : "standing by holder=%s",
                 leader ? "" : json_string_value (json_object_get (answer, "holder")) ?: "?");
    self->leader = leader;
    if (!leader) {
        self->cycling = false;
        return;
    }
    s_ask (self, "state", json_pack ("{s:i}", "window_s", self->config.rules.error_window_s), s_on_state, NULL);
}

static void
s_on_tick (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    alert_engine_t *self = arg;
    //  A cycle still waiting on accounting is not doubled; its questions time out.
    if (!self->cycling) {
        self->cycling = true;
        s_ask (self, "lease", json_pack ("{s:s, s:i}", "alerter", self->config.alerter_id, "ttl_ms", self->config.lease_ms),
               s_on_lease, NULL);
    }
    gw_timer_start (loop, timer, self->config.interval_ms);
}

alert_engine_t *
alert_engine_new (gw_loop_t *loop, void *zmq_ctx, const engine_config_t *config, notifier_t *notifier)
{
    alert_engine_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->notifier = notifier;
    self->dealer = gw_proto_dealer (zmq_ctx, config->endpoints, 0, "engine");
    if (!self->dealer) {
        free (self);
        return NULL;
    }
    gw_loop_add_socket (loop, self->dealer, s_on_dealer, self);
    self->tick = gw_timer_new (s_on_tick, self);
    self->sweep = gw_timer_new (s_on_sweep, self);
    gw_timer_start (loop, self->tick, 0);
    gw_timer_start (loop, self->sweep, 100);
    gw_info ("engine", "started alerter=%s endpoints=%s interval_ms=%d channels=%zu", config->alerter_id,
             config->endpoints, config->interval_ms, notifier_channels (notifier));
    return self;
}

void
alert_engine_destroy (alert_engine_t **self_p)
{
    alert_engine_t *self = *self_p;
    if (!self)
        return;
    //  Questions in flight are dropped; their callbacks own nothing that must
    //  outlive the engine except delivery records, freed here.
    while (self->questions) {
        s_question_t *q = self->questions;
        self->questions = q->next;
        free (q);
    }
    for (int i = 0; i < INFLIGHT_MAX; i++)
        free (self->inflight[i]);
    gw_timer_destroy (self->loop, &self->tick);
    gw_timer_destroy (self->loop, &self->sweep);
    gw_loop_remove_socket (self->loop, self->dealer);
    zmq_close (self->dealer);
    free (self);
    *self_p = NULL;
}
