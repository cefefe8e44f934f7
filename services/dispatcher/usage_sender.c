/*  usage_sender.c: spool first, then send, then forget on acknowledgement. */
#include "usage_sender.h"
#include "gw_log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <zmq.h>

#define SENDER_WINDOW 20000  //  most events handed to the socket per turn
/*  Events that may wait in the socket. Kept to about one accounting batch: a
    deeper pipe holds events longer than the resend interval under load, and
    they are then sent twice for nothing. What does not fit stays due in the
    spool and goes out as acknowledgements free the pipe. */
#define SENDER_PIPE 5000

struct usage_sender_t {
    gw_loop_t *loop;
    sender_config_t config;
    usage_spool_t *spool;
    void *dealer;
    gw_timer_t *flush_timer;  //  end of this turn: sync, then send
    gw_timer_t *resend_timer;
    gw_msg_t *overflow;  //  events the full spool refused, in order
    size_t noverflow, overflow_cap;
    bool full_warned;
};

static bool
s_send_one (void *arg, const char *event_id, const void *bytes, size_t size)
{
    usage_sender_t *self = arg;
    (void) event_id;
    //  Not connected or the pipe is full: the event stays due for the next turn.
    return zmq_send (self->dealer, bytes, size, ZMQ_DONTWAIT) >= 0;
}

/*  Moves waiting overflow events into the spool while it has room. */
static void
s_retry_overflow (usage_sender_t *self)
{
    size_t taken = 0;
    while (taken < self->noverflow && usage_spool_append (self->spool, &self->overflow[taken].usage) == 0)
        gw_msg_clear (&self->overflow[taken++]);
    if (!taken)
        return;
    memmove (self->overflow, self->overflow + taken, (self->noverflow - taken) * sizeof *self->overflow);
    self->noverflow -= taken;
    if (self->noverflow == 0 && self->full_warned) {
        gw_info ("sender", "spool has room again");
        self->full_warned = false;
    }
}

static void
s_flush (usage_sender_t *self)
{
    s_retry_overflow (self);
    //  New events go to the spool's syncer, and the loop goes on: their
    //  fdatasync never holds up a job. They are sent once it returned
    //  (s_on_synced); what was durable before goes now.
    usage_spool_sync_start (self->spool);
    //  A window per turn: what is queued in the socket but not yet stored is
    //  bounded, so a slow accounting is not sent the same events again and again.
    usage_spool_due (self->spool, gw_now_ms (), self->config.resend_ms, SENDER_WINDOW, s_send_one, self);
}

static void
s_on_synced (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) loop, (void) fd, (void) events;
    usage_sender_t *self = arg;
    if (usage_spool_sync_finish (self->spool) == 1)
        return;
    //  Send the batch, and hand over what gathered meanwhile.
    s_flush (self);
}

static void
s_on_flush (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    s_flush (arg);
}

static void
s_on_resend (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    usage_sender_t *self = arg;
    s_flush (self);
    gw_timer_start (loop, timer, self->config.resend_ms / 2 > 10 ? self->config.resend_ms / 2 : 10);
}

static void
s_on_dealer (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    usage_sender_t *self = arg;
    for (int i = 0; i < 512; i++) {
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, NULL, NULL, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc == GW_DECODE_OK && msg.id == GW_MSG_USAGE_ACK) {
            for (size_t k = 0; k < msg.usage_ack.event_ids.count; k++)
                usage_spool_ack (self->spool, msg.usage_ack.event_ids.items[k]);
            //  Accounting has room again: send what waits without waiting for
            //  the resend timer.
            if (!gw_timer_active (self->flush_timer))
                gw_timer_start (self->loop, self->flush_timer, 0);
        }
        else
            gw_warn ("sender", "unexpected or malformed message from accounting");
        gw_msg_clear (&msg);
    }
}

void
usage_sender_submit (usage_sender_t *self, const gw_usage_t *event)
{
    if (self->noverflow == 0 && usage_spool_append (self->spool, event) == 0) {
        //  In the file before the job's answer leaves (its END follows this
        //  call): a crash of the process from here on cannot lose the event.
        //  The fdatasync (and the send) wait for the end of the turn.
        (void) usage_spool_write (self->spool);
        if (!gw_timer_active (self->flush_timer))
            gw_timer_start (self->loop, self->flush_timer, 0);
        return;
    }
    //  The spool is full (accounting has been away long): keep the event in
    //  memory, in order, rather than lose it.
    if (!self->full_warned) {
        gw_error ("sender", "usage spool full pending=%zu bytes=%zu: holding events in memory",
                  usage_spool_pending (self->spool), usage_spool_bytes (self->spool));
        self->full_warned = true;
    }
    if (self->noverflow == self->overflow_cap) {
        size_t cap = self->overflow_cap ? self->overflow_cap * 2 : 64;
        gw_msg_t *n = realloc (self->overflow, cap * sizeof *n);
        if (!n) {
            gw_error ("sender", "out of memory: usage event lost event_id=%s", event->event_id);
            return;
        }
        self->overflow = n;
        self->overflow_cap = cap;
    }
    //  Deep copy through the codec: the event's strings belong to the caller.
    gw_msg_t tmp = { .id = GW_MSG_USAGE, .usage = *event };
    char *bytes;
    size_t size;
    if (gw_msg_encode (&tmp, &bytes, &size) == 0) {
        if (gw_msg_decode (bytes, size, &self->overflow[self->noverflow], NULL, 0) == GW_DECODE_OK)
            self->noverflow++;
        free (bytes);
    }
}

void
usage_sender_status (usage_sender_t *self, const gw_status_t *status)
{
    gw_msg_t msg = { .id = GW_MSG_STATUS, .status = *status };
    gw_msg_send (self->dealer, NULL, 0, &msg);
}

size_t
usage_sender_held (usage_sender_t *self)
{
    return self->noverflow;
}

void
usage_sender_flush (usage_sender_t *self)
{
    s_retry_overflow (self);
    //  Waits for the disk: for the end, when nothing else runs.
    if (usage_spool_sync (self->spool) == 0)
        usage_spool_due (self->spool, gw_now_ms (), self->config.resend_ms, SENDER_WINDOW, s_send_one, self);
}

usage_sender_t *
usage_sender_new (gw_loop_t *loop, void *zmq_ctx, const sender_config_t *config, usage_spool_t *spool)
{
    usage_sender_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->spool = spool;
    self->dealer = gw_proto_dealer (zmq_ctx, config->endpoints, SENDER_PIPE, "sender");
    if (!self->dealer) {
        free (self);
        return NULL;
    }
    gw_loop_add_socket (loop, self->dealer, s_on_dealer, self);
    gw_loop_watch (loop, usage_spool_sync_fd (spool), EPOLLIN, s_on_synced, self);
    self->flush_timer = gw_timer_new (s_on_flush, self);
    self->resend_timer = gw_timer_new (s_on_resend, self);
    //  Whatever the spool replayed from a previous run goes out at once.
    gw_timer_start (loop, self->resend_timer, 0);
    gw_info ("sender", "sending usage to endpoints=%s pending=%zu", config->endpoints, usage_spool_pending (spool));
    return self;
}

void
usage_sender_destroy (usage_sender_t **self_p)
{
    usage_sender_t *self = *self_p;
    if (!self)
        return;
    usage_sender_flush (self);
    if (self->noverflow)
        gw_error ("sender", "stopping with events the full spool could not take count=%zu", self->noverflow);
    for (size_t i = 0; i < self->noverflow; i++)
        gw_msg_clear (&self->overflow[i]);
    free (self->overflow);
    gw_loop_unwatch (self->loop, usage_spool_sync_fd (self->spool));
    gw_timer_destroy (self->loop, &self->flush_timer);
    gw_timer_destroy (self->loop, &self->resend_timer);
    //  What was just sent (the last STATUS, flushed events) gets a moment to
    //  leave; with no accounting connected nothing was queued (IMMEDIATE).
    int linger = 200;
    zmq_setsockopt (self->dealer, ZMQ_LINGER, &linger, sizeof linger);
    gw_loop_remove_socket (self->loop, self->dealer);
    zmq_close (self->dealer);
    free (self);
    *self_p = NULL;
}
