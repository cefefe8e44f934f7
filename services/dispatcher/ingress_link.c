/*  ingress_link.c: credits, heartbeats and jobs between a dispatcher and its ingresses. */
#include "ingress_link.h"
#include "gw_log.h"
#include "gw_proto.h"

#include <czmq.h>
#include <errno.h>
#include <string.h>

#define MAX_LINKS 15

typedef struct ingress_link_t ingress_link_t;

struct ingress_link_t {
    ingress_links_t *parent;
    char *endpoint;
    void *dealer;
    bool active;  //  the ingress has heard our HELLO
    bool hello_queued;  //  the last HELLO went onto a live connection
    int64_t hello_ms;
    int64_t last_seen_ms;
    int64_t last_sent_ms;
    uint32_t share;  //  our slots reserved for this ingress
    uint32_t busy;  //  jobs of this ingress still running, forgotten ones included
    uint32_t owed;  //  credits freed since our last HELLO while the ingress was not listening
    bool rejoin;  //  paused and resumed: say HELLO again once our jobs here are done
    bool broken;  //  a job message could not be sent: resynchronise with a HELLO
    zhashx_t *jobs;  //  ingress job id -> runner_job_t, jobs the ingress knows
};

struct ingress_links_t {
    gw_loop_t *loop;
    links_config_t config;
    provider_table_t *providers;
    job_runner_t *runner;
    gw_strlist_t models, owners;
    bool paused;  //  taking no new jobs (BYE sent) until resumed
    ingress_link_t links[MAX_LINKS];
    size_t nlinks;
    gw_timer_t *tick;
};

static size_t
s_id_hash (const void *key)
{
    return (size_t) ((uint64_t) (uintptr_t) key * 0x9E3779B97F4A7C15ull);
}

static int
s_id_compare (const void *a, const void *b)
{
    return (uintptr_t) a < (uintptr_t) b ? -1 : (uintptr_t) a > (uintptr_t) b;
}

static void
s_send (ingress_link_t *link, gw_msg_t *msg)
{
    if (gw_msg_send (link->dealer, NULL, 0, msg) == 0) {
        link->last_sent_ms = gw_now_ms ();
        return;
    }
    //  With ZMQ_IMMEDIATE a send fails while the connection is being re-made.
    //  A lost heartbeat is harmless; a lost job message (HEAD, CHUNK, END,
    //  CREDIT) leaves the ingress with a wrong picture, so the next tick starts
    //  over with a HELLO, which makes the ingress settle every job it had here.
    if (msg->id != GW_MSG_HEARTBEAT && msg->id != GW_MSG_HELLO) {
        if (!link->broken)
            gw_warn ("link", "lost a message endpoint=%s message=%s errno=%d: resynchronising",
                     link->endpoint, gw_msg_name (msg->id), errno);
        link->broken = true;
    }
}

static void
s_send_hello (ingress_link_t *link)
{
    ingress_links_t *self = link->parent;
    gw_msg_t msg = { .id = GW_MSG_HELLO };
    msg.hello = (gw_hello_t) {
        .dispatcher_id = (char *) self->config.dispatcher_id,
        .credits = !self->paused && link->share > link->busy ? link->share - link->busy : 0,
        .models = self->models,
        .owners = self->owners,
    };
    //  ZMQ_IMMEDIATE makes this fail while there is no connection, so a HELLO
    //  never waits in a queue to reach a later ingress with stale credits.
    //  The grant already counts every slot free now.
    link->owed = 0;
    link->hello_queued = gw_msg_send (link->dealer, NULL, 0, &msg) == 0;
    link->hello_ms = gw_now_ms ();
    if (link->hello_queued) {
        link->last_sent_ms = link->hello_ms;
        gw_info ("link", "HELLO sent endpoint=%s credits=%u", link->endpoint, msg.hello.credits);
    }
}

/*  The ingress no longer knows our jobs: drain them quietly and start over. */
static void
s_forget_jobs (ingress_link_t *link, const char *reason)
{
    ingress_links_t *self = link->parent;
    size_t n = zhashx_size (link->jobs);
    gw_warn ("link", "ingress lost endpoint=%s reason=%s jobs=%zu", link->endpoint, reason, n);
    link->active = false;
    zlistx_t *jobs = zhashx_values (link->jobs);
    zhashx_purge (link->jobs);
    for (runner_job_t *job = zlistx_first (jobs); job; job = zlistx_next (jobs)) {
        runner_job_forget (job);
        job_runner_cancel (self->runner, job);
    }
    zlistx_destroy (&jobs);
}

static void
s_on_job (ingress_link_t *link, gw_msg_t *msg)
{
    ingress_links_t *self = link->parent;
    uint64_t job_id = msg->job.job_id;
    //  Usage event ids are built from the request id: a foreign or broken
    //  ingress must not make two of them collide by truncation.
    if (strlen (msg->job.request_id) > 64) {
        gw_warn ("link", "refusing job with a request id over 64 characters endpoint=%s", link->endpoint);
        runner_outcome_t none = job_runner_no_outcome (self->runner);
        gw_msg_t end = { .id = GW_MSG_END };
        end.end = (gw_end_t) { .job_id = job_id,
                               .status = 400,
                               .content_type = "application/json",
                               .attempts = none.attempts,
                               .cost_known = none.cost_known,
                               .cost_pico = none.cost_pico,
                               .currency = (char *) none.currency };
        s_send (link, &end);
        return;
    }
    link->busy++;
    runner_job_t *job = job_runner_start (self->runner, &msg->job, link);
    //  NULL: the job already ended (no route) and its END is sent.
    if (job)
        zhashx_insert (link->jobs, (void *) (uintptr_t) job_id, job);
}

static void
s_on_message (ingress_link_t *link, gw_msg_t *msg)
{
    ingress_links_t *self = link->parent;
    int64_t now = gw_now_ms ();
    link->last_seen_ms = now;
    if (msg->id == GW_MSG_RESET) {
        //  A RESET that answers messages sent before our latest HELLO is stale.
        if (link->hello_queued && now - link->hello_ms < self->config.heartbeat_ms)
            return;
        s_forget_jobs (link, "RESET");
        s_send_hello (link);
        return;
    }
    if (!link->active) {
        link->active = true;
        gw_info ("link", "ingress connected endpoint=%s", link->endpoint);
        if (self->paused) {
            //  It registered us with no credits; BYE keeps CREDITs of our
            //  finishing jobs from counting there until we resume.
            gw_msg_t bye = { .id = GW_MSG_BYE, .bye = { "paused" } };
            s_send (link, &bye);
        }
        else if (link->owed) {
            gw_msg_t credit = { .id = GW_MSG_CREDIT, .credit = { link->owed } };
            link->owed = 0;
            s_send (link, &credit);
        }
    }
    runner_job_t *job;
    switch (msg->id) {
    case GW_MSG_HEARTBEAT:
        break;
    case GW_MSG_JOB:
        s_on_job (link, msg);
        break;
    case GW_MSG_CANCEL:
        if ((job = zhashx_lookup (link->jobs, (void *) (uintptr_t) msg->cancel.job_id)))
            job_runner_cancel (self->runner, job);
        break;
    case GW_MSG_STREAM_ACK:
        if ((job = zhashx_lookup (link->jobs, (void *) (uintptr_t) msg->stream_ack.job_id)))
            job_runner_acked (self->runner, job, msg->stream_ack.bytes);
        break;
    default:
        gw_warn ("link", "unexpected message id=%s endpoint=%s", gw_msg_name (msg->id), link->endpoint);
    }
}

static void
s_on_dealer (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    ingress_link_t *link = arg;
    for (int i = 0; i < 512; i++) {
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, NULL, NULL, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc == GW_DECODE_OK)
            s_on_message (link, &msg);
        else
            gw_warn ("link", "%s message endpoint=%s",
                     rc == GW_DECODE_VERSION ? "protocol version mismatch in" : "malformed", link->endpoint);
        gw_msg_clear (&msg);
    }
}

static void
s_on_tick (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    ingress_links_t *self = arg;
    int64_t now = gw_now_ms ();
    int64_t limit = (int64_t) self->config.heartbeat_ms * self->config.liveness;
    for (size_t i = 0; i < self->nlinks; i++) {
        ingress_link_t *link = &self->links[i];
        //  Back from a pause: a fresh HELLO re-registers us, which the ingress
        //  treats as a restart, so it waits until nothing of ours runs there.
        if (link->rejoin && link->busy == 0) {
            s_send_hello (link);
            link->rejoin = !link->hello_queued;  //  not connected: try again next tick
            continue;
        }
        if (link->broken) {
            link->broken = false;
            s_forget_jobs (link, "lost a message");
            s_send_hello (link);
            continue;
        }
        if (link->active) {
            if (now - link->last_seen_ms > limit) {
                s_forget_jobs (link, "silent");
                s_send_hello (link);
            }
            else if (now - link->last_sent_ms >= self->config.heartbeat_ms) {
                gw_msg_t hb = { .id = GW_MSG_HEARTBEAT, .heartbeat = { (uint64_t) gw_wall_ms () } };
                s_send (link, &hb);
            }
        }
        //  Not connected yet: retry soon. Connected but unanswered: the ingress
        //  may have missed it; say it again after a liveness period.
        else if (!link->hello_queued || now - link->hello_ms > limit)
            s_send_hello (link);
    }
    gw_timer_start (loop, timer, self->config.heartbeat_ms < 100 ? self->config.heartbeat_ms : 100);
}

/* ---- runner callbacks: the job's owner is its link ---- */

static void
s_job_head (runner_job_t *job, uint32_t status, const char *content_type)
{
    ingress_link_t *link = runner_job_owner (job);
    if (!runner_job_id (job))
        return;
    gw_msg_t msg = { .id = GW_MSG_HEAD };
    msg.head = (gw_head_t) { runner_job_id (job), status, (char *) content_type, runner_job_cached (job) };
    s_send (link, &msg);
}

static void
s_job_chunk (runner_job_t *job, const char *data, size_t size)
{
    ingress_link_t *link = runner_job_owner (job);
    if (!runner_job_id (job))
        return;
    gw_msg_t msg = { .id = GW_MSG_CHUNK };
    msg.chunk = (gw_chunk_t) { runner_job_id (job), { (uint8_t *) data, size } };
    s_send (link, &msg);
}

static void
s_job_end (runner_job_t *job, uint32_t status, const char *content_type, const char *body, size_t size,
           const runner_outcome_t *outcome)
{
    ingress_link_t *link = runner_job_owner (job);
    uint64_t job_id = runner_job_id (job);
    link->busy--;
    if (job_id) {
        if (zhashx_lookup (link->jobs, (void *) (uintptr_t) job_id) == job)
            zhashx_delete (link->jobs, (void *) (uintptr_t) job_id);
        gw_msg_t msg = { .id = GW_MSG_END };
        msg.end = (gw_end_t) { .job_id = job_id,
                               .status = status,
                               .content_type = (char *) content_type,
                               .body = { (uint8_t *) body, size },
                               .attempts = outcome->attempts,
                               .cost_known = outcome->cost_known,
                               .cost_pico = outcome->cost_pico,
                               .currency = (char *) outcome->currency,
                               .cached = outcome->cached };
        s_send (link, &msg);
    }
    else if (link->active && !link->parent->paused) {
        //  The ingress forgot this job, so its END would return nothing there.
        gw_msg_t msg = { .id = GW_MSG_CREDIT, .credit = { 1 } };
        s_send (link, &msg);
    }
    else
        link->owed++;  //  sent once the ingress answers our HELLO, or we resume
}

const runner_fns_t ingress_link_runner_fns = { s_job_head, s_job_chunk, s_job_end };

void
ingress_links_pause (ingress_links_t *self, const char *reason)
{
    if (self->paused)
        return;
    self->paused = true;
    gw_warn ("link", "pausing: taking no new jobs reason=%s", reason);
    gw_msg_t msg = { .id = GW_MSG_BYE, .bye = { (char *) reason } };
    for (size_t i = 0; i < self->nlinks; i++) {
        self->links[i].rejoin = false;
        if (self->links[i].active)
            s_send (&self->links[i], &msg);
    }
}

void
ingress_links_resume (ingress_links_t *self)
{
    if (!self->paused)
        return;
    self->paused = false;
    gw_info ("link", "resuming: taking jobs again");
    for (size_t i = 0; i < self->nlinks; i++)
        self->links[i].rejoin = true;
}

bool
ingress_links_paused (ingress_links_t *self)
{
    return self->paused;
}

void
ingress_links_bye (ingress_links_t *self)
{
    //  Stopping for good: like a pause that never resumes, so that a HELLO we
    //  may still have to send (a RESET) grants nothing.
    self->paused = true;
    gw_msg_t msg = { .id = GW_MSG_BYE, .bye = { "shutting down" } };
    for (size_t i = 0; i < self->nlinks; i++)
        if (self->links[i].active)
            s_send (&self->links[i], &msg);
}

ingress_links_t *
ingress_links_new (gw_loop_t *loop, void *zmq_ctx, const links_config_t *config,
                   provider_table_t *providers, job_runner_t *runner)
{
    ingress_links_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->providers = providers;
    self->runner = runner;
    provider_table_models (providers, &self->models, &self->owners);
    char *list = strdup (config->endpoints), *save = NULL;
    for (char *ep = strtok_r (list, ", ", &save); ep; ep = strtok_r (NULL, ", ", &save)) {
        if (self->nlinks == MAX_LINKS) {
            gw_error ("link", "too many ingress endpoints max=%d", MAX_LINKS);
            break;
        }
        ingress_link_t *link = &self->links[self->nlinks++];
        link->parent = self;
        link->endpoint = strdup (ep);
        link->jobs = zhashx_new ();
        zhashx_set_key_hasher (link->jobs, s_id_hash);
        zhashx_set_key_comparator (link->jobs, s_id_compare);
        zhashx_set_key_duplicator (link->jobs, NULL);
        zhashx_set_key_destructor (link->jobs, NULL);
        link->dealer = zmq_socket (zmq_ctx, ZMQ_DEALER);
        int one = 1, zero = 0, ivl = 100;
        zmq_setsockopt (link->dealer, ZMQ_ROUTING_ID, config->dispatcher_id, strlen (config->dispatcher_id));
        zmq_setsockopt (link->dealer, ZMQ_IMMEDIATE, &one, sizeof one);
        zmq_setsockopt (link->dealer, ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt (link->dealer, ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt (link->dealer, ZMQ_RCVHWM, &zero, sizeof zero);
        zmq_setsockopt (link->dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
        if (zmq_connect (link->dealer, ep)) {
            gw_error ("link", "cannot connect endpoint=%s error=%s", ep, zmq_strerror (errno));
            free (list);
            ingress_links_destroy (&self);
            return NULL;
        }
        gw_loop_add_socket (loop, link->dealer, s_on_dealer, link);
    }
    free (list);
    if (self->nlinks == 0) {
        gw_error ("link", "no ingress endpoint given");
        ingress_links_destroy (&self);
        return NULL;
    }
    for (size_t i = 0; i < self->nlinks; i++) {
        uint32_t share = (uint32_t) config->slots / (uint32_t) self->nlinks;
        self->links[i].share = share ? share : 1;
    }
    self->tick = gw_timer_new (s_on_tick, self);
    gw_timer_start (loop, self->tick, 0);
    return self;
}

void
ingress_links_destroy (ingress_links_t **self_p)
{
    ingress_links_t *self = *self_p;
    if (!self)
        return;
    gw_timer_destroy (self->loop, &self->tick);
    //  The ENDs of jobs cut at shutdown were sent just before: give them a moment
    //  to leave (the context's termination waits for at most this long).
    int linger_ms = 500;
    for (size_t i = 0; i < self->nlinks; i++) {
        zhashx_destroy (&self->links[i].jobs);
        if (self->links[i].dealer) {
            zmq_setsockopt (self->links[i].dealer, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
            gw_loop_remove_socket (self->loop, self->links[i].dealer);
            zmq_close (self->links[i].dealer);
        }
        free (self->links[i].endpoint);
    }
    gw_strlist_clear (&self->models);
    gw_strlist_clear (&self->owners);
    free (self);
    *self_p = NULL;
}
