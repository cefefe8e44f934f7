/*  report_client.c: usage reports asked of accounting, answered to HTTP clients. */
#include "report_client.h"
#include "gw_error.h"
#include "gw_log.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct s_pending_t {
    struct s_pending_t *next;
    uint64_t correlation;
    void *client;
    int64_t deadline_ms;
} s_pending_t;

struct report_client_t {
    gw_loop_t *loop;
    void *dealer;
    int timeout_ms;
    pool_client_fns_t fns;
    s_pending_t *pending;  //  few at a time: a list is enough
    uint64_t next_correlation;
    gw_timer_t *timer;
};

static void
s_answer (report_client_t *self, s_pending_t **link, uint32_t status, const uint8_t *body, size_t size)
{
    s_pending_t *p = *link;
    *link = p->next;
    self->fns.end (p->client, status, "application/json", body, size);
    free (p);
}

static void
s_on_dealer (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    report_client_t *self = arg;
    for (int i = 0; i < 64; i++) {
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, NULL, NULL, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc == GW_DECODE_OK && msg.id == GW_MSG_REPORT_REPLY) {
            for (s_pending_t **link = &self->pending; *link; link = &(*link)->next)
                if ((*link)->correlation == msg.report_reply.correlation) {
                    s_answer (self, link, msg.report_reply.status, msg.report_reply.body.data,
                              msg.report_reply.body.size);
                    break;
                }
        }
        gw_msg_clear (&msg);
    }
}

static void
s_on_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    report_client_t *self = arg;
    int64_t now = gw_now_ms ();
    for (s_pending_t **link = &self->pending; *link;) {
        if ((*link)->deadline_ms <= now) {
            char *body = gw_error_json ("api_error", "accounting_unavailable", NULL,
                                        "No accounting instance answered within %d ms.", self->timeout_ms);
            s_answer (self, link, 503, (const uint8_t *) body, strlen (body));
            free (body);
        }
        else
            link = &(*link)->next;
    }
    if (self->pending)
        gw_timer_start (loop, timer, 50);
}

int
report_client_ask (report_client_t *self, void *client, const gw_report_request_t *request)
{
    s_pending_t *p = calloc (1, sizeof *p);
    if (!p)
        return -1;
    p->correlation = ++self->next_correlation;
    p->client = client;
    p->deadline_ms = gw_now_ms () + self->timeout_ms;
    gw_msg_t msg = { .id = GW_MSG_REPORT_REQUEST, .report_request = *request };
    msg.report_request.correlation = p->correlation;
    //  No accounting connected: the send fails at once and the timer answers 503.
    gw_msg_send (self->dealer, NULL, 0, &msg);
    p->next = self->pending;
    self->pending = p;
    if (!gw_timer_active (self->timer))
        gw_timer_start (self->loop, self->timer, 50);
    return 0;
}

void
report_client_forget (report_client_t *self, void *client)
{
    for (s_pending_t **link = &self->pending; *link; link = &(*link)->next)
        if ((*link)->client == client) {
            s_pending_t *p = *link;
            *link = p->next;
            free (p);
            return;
        }
}

report_client_t *
report_client_new (gw_loop_t *loop, void *zmq_ctx, const char *endpoints, int timeout_ms,
                   const pool_client_fns_t *fns)
{
    report_client_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->timeout_ms = timeout_ms;
    self->fns = *fns;
    self->dealer = gw_proto_dealer (zmq_ctx, endpoints, 0, "reports");
    if (!self->dealer) {
        free (self);
        return NULL;
    }
    gw_loop_add_socket (loop, self->dealer, s_on_dealer, self);
    self->timer = gw_timer_new (s_on_timer, self);
    return self;
}

void
report_client_destroy (report_client_t **self_p)
{
    report_client_t *self = *self_p;
    if (!self)
        return;
    while (self->pending) {
        s_pending_t *p = self->pending;
        self->pending = p->next;
        free (p);
    }
    gw_timer_destroy (self->loop, &self->timer);
    zmq_close (self->dealer);
    free (self);
    *self_p = NULL;
}
