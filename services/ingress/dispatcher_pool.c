/*  dispatcher_pool.c: dispatchers, their credits and liveness, the job queue. */
#include "dispatcher_pool.h"
#include "gw_error.h"
#include "gw_log.h"
#include "gw_proto.h"

#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    char *id;  //  routing id, printable (dispatchers set their own)
    uint32_t version;  //  protocol of its HELLO: JOBs go out in a shape it reads
    uint64_t id_hash;  //  of its id, for the response cache's affinity (s_pick)
    uint32_t credits;
    bool leaving;  //  said BYE: finishes its jobs, takes no new ones
    int64_t last_seen_ms;
    gw_strlist_t models;
    gw_strlist_t owners;
    zlistx_t *jobs;  //  running here
} dispatcher_t;

struct pool_job_t {
    dispatcher_pool_t *pool;
    uint64_t api_key_id;
    pool_cache_t cache;
    //  Flow control of a stream (STREAM_ACK): CHUNK bytes received, how many
    //  the client has taken, how many its dispatcher was told of; when the
    //  last CHUNK came, and whether a stalled stream's ack was said again.
    uint64_t chunk_bytes, taken, acked;
    int64_t last_chunk_ms;
    bool ack_repeated;
    bool admitted;  //  tell the done hook when the job goes
    bool ever_dispatched;
    bool attempts_known;  //  the current dispatch's END came back
    uint32_t attempts;
    uint64_t job_id;  //  id of the current dispatch; 0 while queued
    char *request_id;
    char *model;
    bool stream;
    bool client_usage;
    uint8_t *body;
    size_t body_size;
    uint32_t dispatch;  //  dispatches before the current one
    int64_t queued_us;
    int64_t deadline_ms;
    void *client;  //  NULL once the client went away
    bool started;  //  a byte was handed to the client: the job can no longer move
    dispatcher_t *dispatcher;  //  where it runs, NULL while queued
    void *handle;  //  its node in the queue or in dispatcher->jobs
};

struct dispatcher_pool_t {
    gw_loop_t *loop;
    void *router;
    pool_config_t config;
    pool_client_fns_t fns;
    pool_done_fn *done_fn;
    void *done_arg;
    zhashx_t *dispatchers;  //  routing id -> dispatcher_t
    zhashx_t *jobs;  //  job id -> running pool_job_t
    zhashx_t *resets;  //  routing id -> time we last told it RESET
    zlistx_t *queue;  //  waiting jobs, oldest first
    uint64_t next_job_id;
    gw_timer_t *heartbeat_timer;
    gw_timer_t *queue_timer;
};

/* ---- job table keyed by the integer id itself ---- */

static size_t
s_job_hash (const void *key)
{
    uint64_t x = (uint64_t) (uintptr_t) key;
    //  Ids are sequential; a multiplicative mix spreads them over the buckets.
    return (size_t) (x * 0x9E3779B97F4A7C15ull);
}

static int
s_job_compare (const void *a, const void *b)
{
    return (uintptr_t) a < (uintptr_t) b ? -1 : (uintptr_t) a > (uintptr_t) b;
}

static void
s_job_destroy (pool_job_t **job_p)
{
    pool_job_t *job = *job_p;
    if (!job)
        return;
    if (job->admitted && job->pool->done_fn) {
        uint32_t attempts = job->attempts_known ? job->attempts
                            : job->ever_dispatched ? POOL_ATTEMPTS_UNKNOWN
                                                   : 0;
        job->pool->done_fn (job->pool->done_arg, job->request_id, job->api_key_id, job->ever_dispatched,
                            job->dispatch, attempts);
    }
    free (job->request_id);
    free (job->model);
    free (job->body);
    free (job);
    *job_p = NULL;
}

static void
s_dispatcher_destroy (dispatcher_t **self_p)
{
    dispatcher_t *self = *self_p;
    if (!self)
        return;
    free (self->id);
    gw_strlist_clear (&self->models);
    gw_strlist_clear (&self->owners);
    zlistx_destroy (&self->jobs);
    free (self);
    *self_p = NULL;
}

static bool
s_serves (const dispatcher_t *d, const char *model)
{
    for (size_t i = 0; i < d->models.count; i++)
        if (strcmp (d->models.items[i], model) == 0)
            return true;
    return false;
}

static void s_drain_queue (dispatcher_pool_t *self);

static void
s_end_job (dispatcher_pool_t *self, pool_job_t *job, uint32_t status, const char *type,
           const char *body)
{
    if (job->client)
        self->fns.end (job->client, status, type, (const uint8_t *) body, body ? strlen (body) : 0, NULL);
    job->client = NULL;
}

/*  Takes a dispatcher out of service: what it was running either goes back to the
    front of the queue or, if the client already has bytes of it, ends in error. */
static void
s_dispatcher_lost (dispatcher_pool_t *self, dispatcher_t *d, const char *reason)
{
    gw_warn ("pool", "dispatcher lost id=%s reason=%s jobs=%zu", d->id, reason, zlistx_size (d->jobs));
    pool_job_t *job;
    int64_t now_ms = gw_now_ms ();
    //  Walk backwards so that re-queued jobs keep their order at the queue front.
    while ((job = zlistx_last (d->jobs))) {
        zlistx_delete (d->jobs, zlistx_cursor (d->jobs));
        zhashx_delete (self->jobs, (void *) (uintptr_t) job->job_id);
        if (!job->client)
            s_job_destroy (&job);
        else if (!job->started) {
            gw_info ("pool", "re-queueing request_id=%s job_id=%llu", job->request_id,
                     (unsigned long long) job->job_id);
            job->dispatcher = NULL;
            job->job_id = 0;
            job->dispatch++;
            job->deadline_ms = now_ms + self->config.queue_timeout_ms;
            job->queued_us = gw_now_us ();
            job->handle = zlistx_add_start (self->queue, job);
        }
        else {
            char *tail = gw_error_sse ("api_error", "dispatcher_lost",
                                       "The gateway lost the worker serving this stream "
                                       "(request_id %s); the answer is incomplete.",
                                       job->request_id);
            s_end_job (self, job, 502, "text/event-stream; charset=utf-8", tail);
            free (tail);
            s_job_destroy (&job);
        }
    }
    zhashx_delete (self->dispatchers, d->id);
}

static void
s_send_reset (dispatcher_pool_t *self, const char *rid, size_t rid_size)
{
    //  One RESET per peer per heartbeat interval: a dispatcher that lost us sends a
    //  burst of messages, and answering each would make it say HELLO many times.
    int64_t now = gw_now_ms ();
    int64_t *last = zhashx_lookup (self->resets, rid);
    if (last && now - *last < self->config.heartbeat_ms)
        return;
    if (!last) {
        last = malloc (sizeof *last);
        if (!last)
            return;
        zhashx_insert (self->resets, rid, last);
    }
    *last = now;
    gw_msg_t msg = { .id = GW_MSG_RESET };
    msg.reset.reason = "unknown dispatcher, say HELLO";
    gw_msg_send (self->router, rid, rid_size, &msg);
}

/*  FNV-1a over bytes, from a seed; and a 64-bit finaliser (splitmix64) so that
    nearby inputs score far apart. */
static uint64_t
s_hash (const void *data, size_t size, uint64_t seed)
{
    uint64_t h = 14695981039346656037ULL ^ seed;
    const uint8_t *p = data;
    for (size_t i = 0; i < size; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static uint64_t
s_mix (uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void
s_on_hello (dispatcher_pool_t *self, const char *rid, dispatcher_t *d, gw_msg_t *msg)
{
    if (d)
        s_dispatcher_lost (self, d, "said HELLO again");
    d = calloc (1, sizeof *d);
    if (!d)
        return;
    d->id = strdup (rid);
    d->jobs = zlistx_new ();
    d->credits = msg->hello.credits;
    d->version = msg->version;
    d->id_hash = s_hash (rid, strlen (rid), 0);
    d->last_seen_ms = gw_now_ms ();
    //  The lists move from the message to the dispatcher.
    d->models = msg->hello.models;
    d->owners = msg->hello.owners;
    msg->hello.models = (gw_strlist_t) { 0 };
    msg->hello.owners = (gw_strlist_t) { 0 };
    zhashx_insert (self->dispatchers, d->id, d);
    zhashx_delete (self->resets, rid);
    gw_info ("pool", "dispatcher joined id=%s credits=%u models=%zu", d->id, d->credits,
             d->models.count);
    //  Answer at once so the dispatcher knows we heard it.
    gw_msg_t hb = { .id = GW_MSG_HEARTBEAT, .heartbeat = { (uint64_t) gw_wall_ms () } };
    gw_msg_send (self->router, rid, strlen (rid), &hb);
}

static pool_job_t *
s_job_of (dispatcher_pool_t *self, dispatcher_t *d, uint64_t job_id)
{
    pool_job_t *job = zhashx_lookup (self->jobs, (void *) (uintptr_t) job_id);
    //  A job that moved elsewhere must not hear from its former dispatcher.
    return job && job->dispatcher == d ? job : NULL;
}

static void
s_on_message (dispatcher_pool_t *self, const char *rid, size_t rid_size, gw_msg_t *msg)
{
    dispatcher_t *d = zhashx_lookup (self->dispatchers, rid);
    if (msg->id == GW_MSG_HELLO) {
        //  A dispatcher older than every JOB shape we can write (one without
        //  the request's key would store usage no budget sees) is refused
        //  until upgraded: taking it on would leave its jobs to time out.
        //  Newer ones get JOBs in the newest shape they read.
        if (!gw_msg_writable_for (GW_MSG_JOB, msg->version)) {
            gw_error ("pool", "dispatcher refused: it speaks protocol %u, too old for our jobs; upgrade it id=%s",
                      msg->version, rid);
            return;
        }
        s_on_hello (self, rid, d, msg);
        s_drain_queue (self);
        return;
    }
    if (!d) {
        s_send_reset (self, rid, rid_size);
        return;
    }
    d->last_seen_ms = gw_now_ms ();
    pool_job_t *job;
    switch (msg->id) {
    case GW_MSG_HEARTBEAT:
        break;
    case GW_MSG_CREDIT:
        if (!d->leaving)
            d->credits += msg->credit.credits;
        s_drain_queue (self);
        break;
    case GW_MSG_BYE:
        gw_info ("pool", "dispatcher leaving id=%s reason=%s jobs=%zu", d->id, msg->bye.reason,
                 zlistx_size (d->jobs));
        d->leaving = true;
        d->credits = 0;
        break;
    case GW_MSG_HEAD:
        if ((job = s_job_of (self, d, msg->head.job_id)) && job->client) {
            job->started = true;
            self->fns.head (job->client, msg->head.status, msg->head.content_type, msg->head.cached);
        }
        break;
    case GW_MSG_CHUNK:
        if ((job = s_job_of (self, d, msg->chunk.job_id)) && job->client) {
            job->started = true;
            job->chunk_bytes += msg->chunk.data.size;
            job->last_chunk_ms = gw_now_ms ();
            job->ack_repeated = false;
            self->fns.chunk (job->client, msg->chunk.data.data, msg->chunk.data.size);
        }
        break;
    case GW_MSG_END:
        //  Only a job we know returns its credit: the dispatcher returns the credit
        //  of jobs we forgot (after a RESET) with a CREDIT message instead.
        if ((job = s_job_of (self, d, msg->end.job_id))) {
            zlistx_delete (d->jobs, job->handle);
            zhashx_delete (self->jobs, (void *) (uintptr_t) job->job_id);
            if (!d->leaving)
                d->credits++;
            job->attempts_known = true;
            job->attempts = msg->end.attempts;
            if (job->client)
                self->fns.end (job->client, msg->end.status, msg->end.content_type,
                               msg->end.body.data, msg->end.body.size, &msg->end);
            s_job_destroy (&job);
            s_drain_queue (self);
        }
        break;
    default:
        gw_warn ("pool", "unexpected message id=%s from=%s", gw_msg_name (msg->id), rid);
    }
}

static void
s_on_router (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    dispatcher_pool_t *self = arg;
    //  A batch per turn so one busy dispatcher cannot starve the HTTP side.
    for (int i = 0; i < 512; i++) {
        char rid[256];
        size_t rid_size = 0;
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, rid, &rid_size, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        rid[rid_size] = 0;
        if (rid_size == 0 || strlen (rid) != rid_size) {
            //  Not a dispatcher of ours (they name themselves in printable text).
            gw_msg_clear (&msg);
            continue;
        }
        if (rc == GW_DECODE_VERSION)
            gw_warn ("pool", "protocol version mismatch from=%s", rid);
        else if (rc != GW_DECODE_OK)
            gw_warn ("pool", "malformed message from=%s", rid);
        else
            s_on_message (self, rid, rid_size, &msg);
        gw_msg_clear (&msg);
    }
}

/*  Sends one queued job to d. Returns 0, or -1 when d could not be reached. */
static int
s_dispatch (dispatcher_pool_t *self, pool_job_t *job, dispatcher_t *d)
{
    job->job_id = ++self->next_job_id;
    gw_msg_t msg = { .id = GW_MSG_JOB };
    msg.job = (gw_job_t) {
        .job_id = job->job_id,
        .request_id = job->request_id,
        .dispatch = job->dispatch,
        .model = job->model,
        .stream = job->stream,
        .client_usage = job->client_usage,
        .queue_wait_us = (uint64_t) (gw_now_us () - job->queued_us),
        .body = { job->body, job->body_size },
        .api_key_id = job->api_key_id,
        .cache_lookup = job->cache.lookup,
        .cache_ttl_s = job->cache.ttl_s,
        .flow_window = job->stream ? self->config.stream_window : 0,
    };
    if (gw_msg_send_as (self->router, d->id, strlen (d->id), &msg, d->version)) {
        job->job_id = 0;
        return -1;
    }
    d->credits--;
    job->ever_dispatched = true;
    job->dispatcher = d;
    job->handle = zlistx_add_end (d->jobs, job);
    zhashx_insert (self->jobs, (void *) (uintptr_t) job->job_id, job);
    return 0;
}

/*  The live dispatcher serving model with the most credits, so load spreads. */
static dispatcher_t *
s_pick (dispatcher_pool_t *self, pool_job_t *job)
{
    //  Each dispatcher keeps its own response cache: a job that may use or
    //  fill it goes to the dispatcher its key and body hash highest with
    //  (rendezvous hashing), so the same request finds its answer again there,
    //  and the rest still spread when dispatchers come and go.
    bool cacheable = job->cache.lookup || job->cache.ttl_s;
    uint64_t key = cacheable ? s_hash (job->body, job->body_size, job->api_key_id) : 0;
    dispatcher_t *best = NULL;
    uint64_t best_score = 0;
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers)) {
        if (!d->credits || !s_serves (d, job->model))
            continue;
        uint64_t score = cacheable ? s_mix (key ^ d->id_hash) : d->credits;
        if (!best || score > best_score) {
            best = d;
            best_score = score;
        }
    }
    return best;
}

static bool
s_any_credit (dispatcher_pool_t *self)
{
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers))
        if (d->credits)
            return true;
    return false;
}

/*  Sends every queued job that some dispatcher can take now, oldest first. A job
    whose model has no free dispatcher does not hold up jobs for other models. */
static void
s_drain_queue (dispatcher_pool_t *self)
{
    for (pool_job_t *job = zlistx_first (self->queue); job; job = zlistx_next (self->queue)) {
        if (!s_any_credit (self))
            return;
        dispatcher_t *d = s_pick (self, job);
        if (!d)
            continue;
        if (s_dispatch (self, job, d) == 0)
            zlistx_detach_cur (self->queue);  //  moves the cursor back: iteration goes on
        else {
            //  The ROUTER could not route to it: the peer is gone. Its jobs went
            //  back to the queue front, so start over.
            s_dispatcher_lost (self, d, "unreachable");
            s_drain_queue (self);
            return;
        }
    }
}

static void
s_on_queue_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    dispatcher_pool_t *self = arg;
    int64_t now = gw_now_ms ();
    pool_job_t *job = zlistx_first (self->queue);
    while (job) {
        if (job->deadline_ms <= now) {
            zlistx_detach_cur (self->queue);
            gw_warn ("pool", "queue timeout request_id=%s model=%s", job->request_id, job->model);
            char *body = gw_error_json ("api_error", "no_capacity", NULL,
                                        "No worker could take this request within %d ms; "
                                        "the service is overloaded or no dispatcher is running.",
                                        self->config.queue_timeout_ms);
            s_end_job (self, job, 503, "application/json", body);
            free (body);
            s_job_destroy (&job);
            job = zlistx_first (self->queue);
        }
        else
            job = zlistx_next (self->queue);
    }
    gw_timer_start (loop, timer, 25);
}

static void s_heartbeat_acks (dispatcher_pool_t *self, dispatcher_t *d, int64_t now);

static void
s_on_heartbeat_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    dispatcher_pool_t *self = arg;
    int64_t now = gw_now_ms ();
    int64_t limit = (int64_t) self->config.heartbeat_ms * self->config.liveness;
    gw_msg_t hb = { .id = GW_MSG_HEARTBEAT, .heartbeat = { (uint64_t) gw_wall_ms () } };
    //  Collect the dead first: the hash must not change while we iterate it.
    zlistx_t *dead = zlistx_new ();
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers)) {
        if (now - d->last_seen_ms > limit)
            zlistx_add_end (dead, d);
        else if (gw_msg_send (self->router, d->id, strlen (d->id), &hb) && errno == EHOSTUNREACH)
            zlistx_add_end (dead, d);
        else
            s_heartbeat_acks (self, d, now);
    }
    for (dispatcher_t *d = zlistx_first (dead); d; d = zlistx_next (dead))
        s_dispatcher_lost (self, d, "silent");
    zlistx_destroy (&dead);
    if (zhashx_size (self->resets) > 1024)
        zhashx_purge (self->resets);
    s_drain_queue (self);
    gw_timer_start (loop, timer, self->config.heartbeat_ms);
}

dispatcher_pool_t *
dispatcher_pool_new (gw_loop_t *loop, void *zmq_ctx, const pool_config_t *config,
                     const pool_client_fns_t *fns)
{
    dispatcher_pool_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->fns = *fns;
    self->dispatchers = zhashx_new ();
    zhashx_set_destructor (self->dispatchers, (zhashx_destructor_fn *) s_dispatcher_destroy);
    self->jobs = zhashx_new ();
    zhashx_set_key_hasher (self->jobs, s_job_hash);
    zhashx_set_key_comparator (self->jobs, s_job_compare);
    zhashx_set_key_duplicator (self->jobs, NULL);
    zhashx_set_key_destructor (self->jobs, NULL);
    self->resets = zhashx_new ();
    zhashx_set_destructor (self->resets, (zhashx_destructor_fn *) zstr_free);
    self->queue = zlistx_new ();
    self->router = zmq_socket (zmq_ctx, ZMQ_ROUTER);
    int one = 1, zero = 0;
    //  MANDATORY: a send to a vanished peer fails (EHOSTUNREACH) instead of being
    //  dropped silently, so the job is re-queued at once. HANDOVER: a dispatcher
    //  that reconnects under the same id takes over its old pipe.
    zmq_setsockopt (self->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt (self->router, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    zmq_setsockopt (self->router, ZMQ_LINGER, &zero, sizeof zero);
    //  Streams carry many small messages; the default HWM of 1000 would block
    //  busy dispatchers, so leave it unbounded and rely on job credits instead.
    zmq_setsockopt (self->router, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt (self->router, ZMQ_RCVHWM, &zero, sizeof zero);
    const char *endpoints[] = { config->endpoint, config->local_endpoint };
    for (int i = 0; i < 2; i++)
        if (endpoints[i] && zmq_bind (self->router, endpoints[i])) {
            gw_error ("pool", "cannot bind endpoint=%s error=%s", endpoints[i], zmq_strerror (errno));
            dispatcher_pool_destroy (&self);
            return NULL;
        }
    gw_loop_add_socket (loop, self->router, s_on_router, self);
    self->heartbeat_timer = gw_timer_new (s_on_heartbeat_timer, self);
    self->queue_timer = gw_timer_new (s_on_queue_timer, self);
    gw_timer_start (loop, self->heartbeat_timer, config->heartbeat_ms);
    gw_timer_start (loop, self->queue_timer, 25);
    gw_info ("pool", "jobs endpoint bound endpoint=%s", config->endpoint);
    return self;
}

void
dispatcher_pool_destroy (dispatcher_pool_t **self_p)
{
    dispatcher_pool_t *self = *self_p;
    if (!self)
        return;
    gw_timer_destroy (self->loop, &self->heartbeat_timer);
    gw_timer_destroy (self->loop, &self->queue_timer);
    pool_job_t *job;
    while ((job = zlistx_detach (self->queue, NULL)))
        s_job_destroy (&job);
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers))
        while ((job = zlistx_detach (d->jobs, NULL)))
            s_job_destroy (&job);
    zhashx_destroy (&self->dispatchers);
    zhashx_destroy (&self->jobs);
    zhashx_destroy (&self->resets);
    zlistx_destroy (&self->queue);
    if (self->router) {
        gw_loop_remove_socket (self->loop, self->router);
        zmq_close (self->router);
    }
    free (self);
    *self_p = NULL;
}

pool_job_t *
dispatcher_pool_submit (dispatcher_pool_t *self, void *client, const char *request_id,
                        const char *model, bool stream, bool client_usage, const char *body,
                        size_t body_size, uint64_t api_key_id, bool admitted, pool_cache_t cache)
{
    pool_job_t *job = calloc (1, sizeof *job);
    if (!job)
        return NULL;
    job->pool = self;
    job->api_key_id = api_key_id;
    job->cache = cache;
    job->request_id = strdup (request_id);
    job->model = strdup (model);
    job->body = malloc (body_size + 1);
    if (!job->request_id || !job->model || !job->body) {
        s_job_destroy (&job);
        return NULL;
    }
    memcpy (job->body, body, body_size);
    job->body[body_size] = 0;
    job->body_size = body_size;
    job->stream = stream;
    job->client_usage = client_usage;
    job->client = client;
    job->admitted = admitted;
    job->queued_us = gw_now_us ();
    job->deadline_ms = gw_now_ms () + self->config.queue_timeout_ms;
    job->handle = zlistx_add_end (self->queue, job);
    s_drain_queue (self);
    return job;
}

void
dispatcher_pool_on_done (dispatcher_pool_t *self, pool_done_fn *fn, void *arg)
{
    self->done_fn = fn;
    self->done_arg = arg;
}

/*  Tells the job's dispatcher how much of the stream the client has taken.
    Counted as told only once sent: a failed send is tried again. */
static void
s_send_ack (dispatcher_pool_t *self, pool_job_t *job)
{
    gw_msg_t msg = { .id = GW_MSG_STREAM_ACK, .stream_ack = { job->job_id, job->taken } };
    if (gw_msg_send (self->router, job->dispatcher->id, strlen (job->dispatcher->id), &msg) == 0)
        job->acked = job->taken;
}

/*  Whether the job's dispatcher runs it with a window (it reads STREAM_ACK). */
static bool
s_windowed (dispatcher_pool_t *self, pool_job_t *job)
{
    return self->config.stream_window && job->stream && job->dispatcher && job->job_id
           && job->dispatcher->version >= GW_VERSION_STREAM_ACK;
}

void
dispatcher_pool_stream_taken (dispatcher_pool_t *self, pool_job_t *job, uint64_t bytes)
{
    if (!s_windowed (self, job) || bytes <= job->taken)
        return;
    job->taken = bytes;
    //  Each half window, not each chunk: a fast client would double the
    //  messages. The dispatcher pauses a whole window ahead, so it hears of the
    //  client's progress before it has to stop.
    if (job->taken - job->acked >= self->config.stream_window / 2)
        s_send_ack (self, job);
}

/*  Each heartbeat: progress the dispatcher was not told of goes now (a client
    that took less than half a window, a send that failed), and a stream that
    the client has caught up on but that has sent nothing since a few
    heartbeats hears its ack once more, in case the last one was lost on the
    way (it may be paused, waiting for it). */
static void
s_heartbeat_acks (dispatcher_pool_t *self, dispatcher_t *d, int64_t now)
{
    for (pool_job_t *job = zlistx_first (d->jobs); job; job = zlistx_next (d->jobs)) {
        if (!job->client || !s_windowed (self, job))
            continue;
        if (job->taken > job->acked)
            s_send_ack (self, job);
        else if (!job->ack_repeated && job->taken && job->taken == job->chunk_bytes
                 && now - job->last_chunk_ms >= 2 * (int64_t) self->config.heartbeat_ms) {
            job->ack_repeated = true;
            s_send_ack (self, job);
        }
    }
}

void
dispatcher_pool_cancel (dispatcher_pool_t *self, pool_job_t *job)
{
    job->client = NULL;
    if (!job->dispatcher) {
        zlistx_delete (self->queue, job->handle);
        s_job_destroy (&job);
        return;
    }
    //  The job stays in the table until its END returns the credit.
    gw_msg_t msg = { .id = GW_MSG_CANCEL, .cancel = { job->job_id } };
    gw_msg_send (self->router, job->dispatcher->id, strlen (job->dispatcher->id), &msg);
}

bool
dispatcher_pool_ready (dispatcher_pool_t *self)
{
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers))
        if (!d->leaving)
            return true;
    return false;
}

int
dispatcher_pool_knows_model (dispatcher_pool_t *self, const char *model)
{
    if (!dispatcher_pool_ready (self))
        return -1;
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers))
        if (!d->leaving && s_serves (d, model))
            return 1;
    return 0;
}

json_t *
dispatcher_pool_models (dispatcher_pool_t *self)
{
    json_t *data = json_array ();
    for (dispatcher_t *d = zhashx_first (self->dispatchers); d; d = zhashx_next (self->dispatchers))
        for (size_t i = 0; i < d->models.count && !d->leaving; i++) {
            bool seen = false;
            for (size_t k = 0; k < json_array_size (data) && !seen; k++)
                seen = strcmp (json_string_value (json_object_get (json_array_get (data, k), "id")),
                               d->models.items[i])
                       == 0;
            if (!seen)
                json_array_append_new (
                    data, json_pack ("{s:s, s:s, s:s}", "id", d->models.items[i], "object", "model",
                                     "owned_by", i < d->owners.count ? d->owners.items[i] : "gateway"));
        }
    return json_pack ("{s:s, s:o}", "object", "list", "data", data);
}

/* ---- selftest: a fake dispatcher on inproc drives the pool ---- */

typedef struct {
    int heads, chunks, ends;
    uint32_t last_status;
    char data[256];
} s_test_client_t;

static void
s_test_head (void *client, uint32_t status, const char *type, bool cached)
{
    (void) cached;
    s_test_client_t *c = client;
    (void) type;
    c->heads++;
    c->last_status = status;
}

static void
s_test_chunk (void *client, const uint8_t *data, size_t size)
{
    s_test_client_t *c = client;
    c->chunks++;
    strncat (c->data, (const char *) data, size);
}

static void
s_test_end (void *client, uint32_t status, const char *type, const uint8_t *body, size_t size,
            const gw_end_t *info)
{
    s_test_client_t *c = client;
    (void) type, (void) body, (void) size, (void) info;
    c->ends++;
    c->last_status = status;
}

//  What the done hook heard, one line per job: "request dispatched dispatch attempts".
static char s_test_done[512];

static void
s_test_on_done (void *arg, const char *request_id, uint64_t api_key_id, bool dispatched, uint32_t dispatch,
                uint32_t attempts)
{
    (void) arg, (void) api_key_id;
    char line[96];
    snprintf (line, sizeof line, "%s %d %u %u;", request_id, dispatched, dispatch, attempts);
    strcat (s_test_done, line);
}

static void
s_test_stop (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) timer, (void) arg;
    gw_loop_stop (loop);
}

static void
s_test_spin (gw_loop_t *loop, int ms)
{
    gw_timer_t *t = gw_timer_new (s_test_stop, NULL);
    gw_timer_start (loop, t, ms);
    gw_loop_run (loop);
    gw_timer_destroy (loop, &t);
}

/*  Receives what the pool sent the fake dispatcher; returns the message id or 0. */
static int
s_test_recv (void *dealer, gw_msg_t *msg)
{
    int id = gw_msg_recv (dealer, NULL, NULL, msg) == GW_DECODE_OK ? (int) msg->id : 0;
    return id;
}

void
dispatcher_pool_test (bool verbose)
{
    if (verbose)
        printf (" * dispatcher_pool: ");
    void *ctx = zmq_ctx_new ();
    gw_loop_t *loop = gw_loop_new ();
    pool_config_t config = { "inproc://pool-test", NULL, 50, 2, 150, 0 };
    pool_client_fns_t fns = { s_test_head, s_test_chunk, s_test_end };
    dispatcher_pool_t *pool = dispatcher_pool_new (loop, ctx, &config, &fns);
    assert (pool);
    dispatcher_pool_on_done (pool, s_test_on_done, NULL);
    s_test_done[0] = 0;
    assert (!dispatcher_pool_ready (pool));
    assert (dispatcher_pool_knows_model (pool, "m") == -1);

    //  No dispatcher: the job waits, then gets 503.
    s_test_client_t a = { 0 };
    dispatcher_pool_submit (pool, &a, "req-a", "m", false, false, "{}", 2, 7, true, (pool_cache_t) { 0 });
    s_test_spin (loop, 250);
    assert (a.ends == 1 && a.last_status == 503);
    //  Never dispatched: its release says no usage will come.
    assert (strcmp (s_test_done, "req-a 0 0 0;") == 0);
    s_test_done[0] = 0;

    //  A dispatcher with one credit: one job goes, the next waits for the credit.
    void *dealer = zmq_socket (ctx, ZMQ_DEALER);
    zmq_setsockopt (dealer, ZMQ_ROUTING_ID, "d-test", 6);
    zmq_connect (dealer, "inproc://pool-test");
    gw_msg_t msg = { .id = GW_MSG_HELLO };
    msg.hello.dispatcher_id = "d-test";
    msg.hello.credits = 1;
    gw_strlist_append (&msg.hello.models, "m");
    gw_msg_send (dealer, NULL, 0, &msg);
    gw_strlist_clear (&msg.hello.models);
    s_test_spin (loop, 20);
    assert (dispatcher_pool_ready (pool));
    assert (dispatcher_pool_knows_model (pool, "m") == 1 && dispatcher_pool_knows_model (pool, "x") == 0);
    s_test_client_t b = { 0 }, c = { 0 };
    dispatcher_pool_submit (pool, &b, "req-b", "m", true, false, "{\"b\":1}", 7, 42, true, (pool_cache_t) { true, 60 });
    dispatcher_pool_submit (pool, &c, "req-c", "m", true, false, "{\"c\":1}", 7, 42, true, (pool_cache_t) { 0 });
    s_test_spin (loop, 20);
    gw_msg_t in;
    uint64_t job_b = 0;
    while (s_test_recv (dealer, &in)) {
        if (in.id == GW_MSG_JOB) {
            assert (job_b == 0 && strcmp (in.job.request_id, "req-b") == 0);
            assert (in.job.body.size == 7 && in.job.stream && in.job.api_key_id == 42);
            assert (in.job.cache_lookup && in.job.cache_ttl_s == 60);
            job_b = in.job.job_id;
        }
        gw_msg_clear (&in);
    }
    assert (job_b);
    //  HEAD, CHUNK and END reach the client in order; END frees the credit for c.
    msg = (gw_msg_t) { .id = GW_MSG_HEAD, .head = { job_b, 200, "text/event-stream", false } };
    gw_msg_send (dealer, NULL, 0, &msg);
    msg = (gw_msg_t) { .id = GW_MSG_CHUNK, .chunk = { job_b, { (uint8_t *) "data: x\n\n", 9 } } };
    gw_msg_send (dealer, NULL, 0, &msg);
    msg = (gw_msg_t) { .id = GW_MSG_END, .end = { .job_id = job_b, .status = 200, .attempts = 2 } };
    gw_msg_send (dealer, NULL, 0, &msg);
    s_test_spin (loop, 20);
    assert (b.heads == 1 && b.chunks == 1 && b.ends == 1 && strcmp (b.data, "data: x\n\n") == 0);
    assert (strcmp (s_test_done, "req-b 1 0 2;") == 0);
    s_test_done[0] = 0;
    uint64_t job_c = 0;
    while (s_test_recv (dealer, &in)) {
        if (in.id == GW_MSG_JOB)
            job_c = in.job.job_id;
        gw_msg_clear (&in);
    }
    assert (job_c && job_c != job_b && c.ends == 0);

    //  The dispatcher falls silent with c unstarted: c goes back to the queue
    //  and, with no dispatcher left, times out with 503 rather than vanishing.
    s_test_spin (loop, 400);
    assert (!dispatcher_pool_ready (pool));
    assert (c.ends == 1 && c.last_status == 503);
    //  Its first dispatch was lost: how many calls it made is unknown.
    assert (strcmp (s_test_done, "req-c 1 1 2147483647;") == 0);
    //  A message from the forgotten dispatcher is answered with RESET.
    msg = (gw_msg_t) { .id = GW_MSG_HEARTBEAT };
    gw_msg_send (dealer, NULL, 0, &msg);
    s_test_spin (loop, 20);
    bool reset = false;
    while (s_test_recv (dealer, &in)) {
        reset |= in.id == GW_MSG_RESET;
        gw_msg_clear (&in);
    }
    assert (reset);

    zmq_close (dealer);
    dispatcher_pool_destroy (&pool);
    dispatcher_pool_destroy (&pool);

    //  The response cache's affinity: with two dispatchers, one of them with
    //  more credits, plain jobs go to the one with more; cacheable jobs spread
    //  by their body, and the same body goes to the same dispatcher each time.
    config.endpoint = "inproc://pool-affinity";
    pool = dispatcher_pool_new (loop, ctx, &config, &fns);
    void *dealers[2];
    const char *names[2] = { "d-many", "d-few" };
    for (int i = 0; i < 2; i++) {
        dealers[i] = zmq_socket (ctx, ZMQ_DEALER);
        zmq_setsockopt (dealers[i], ZMQ_ROUTING_ID, names[i], strlen (names[i]));
        zmq_connect (dealers[i], "inproc://pool-affinity");
        msg = (gw_msg_t) { .id = GW_MSG_HELLO };
        msg.hello.dispatcher_id = (char *) names[i];
        msg.hello.credits = i == 0 ? 64 : 32;
        gw_strlist_append (&msg.hello.models, "m");
        gw_msg_send (dealers[i], NULL, 0, &msg);
        gw_strlist_clear (&msg.hello.models);
    }
    s_test_spin (loop, 20);
    //  Each round: 16 cacheable bodies, then a plain job; where each JOB went.
    char first[16] = { 0 };
    s_test_client_t clients[17];
    for (int round = 0; round < 2; round++) {
        memset (clients, 0, sizeof clients);
        for (int k = 0; k < 17; k++) {
            char body[32], rid[32];
            snprintf (body, sizeof body, "{\"n\":%d}", k);
            snprintf (rid, sizeof rid, "aff-%d-%d", round, k);
            dispatcher_pool_submit (pool, &clients[k], rid, "m", false, false, body, strlen (body), 9, false,
                                    k < 16 ? (pool_cache_t) { true, 60 } : (pool_cache_t) { 0 });
        }
        s_test_spin (loop, 20);
        int got[2] = { 0, 0 };
        for (int i = 0; i < 2; i++)
            while (s_test_recv (dealers[i], &in)) {
                if (in.id == GW_MSG_JOB) {
                    int k = atoi (in.job.request_id + strlen ("aff-0-"));
                    got[i]++;
                    if (k == 16)
                        assert (i == 0);  //  plain: the most credits
                    else if (round == 0)
                        first[k] = (char) ('a' + i);
                    else
                        assert (first[k] == 'a' + i);  //  the same body, the same dispatcher
                    msg = (gw_msg_t) { .id = GW_MSG_END, .end = { .job_id = in.job.job_id, .status = 200 } };
                    gw_msg_send (dealers[i], NULL, 0, &msg);
                }
                gw_msg_clear (&in);
            }
        //  Both took some of the cacheable ones (2^-15 odds that one takes all 16).
        assert (got[0] + got[1] == 17 && got[0] > 1 && got[1] > 0);
        s_test_spin (loop, 20);
        for (int k = 0; k < 17; k++)
            assert (clients[k].ends == 1);
    }
    for (int i = 0; i < 2; i++)
        zmq_close (dealers[i]);
    dispatcher_pool_destroy (&pool);
    gw_loop_destroy (&loop);
    zmq_ctx_term (ctx);
    if (verbose)
        printf ("OK\n");
}
