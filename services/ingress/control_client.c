/*  control_client.c: questions to accounting, and releases until acknowledged. */
#include "control_client.h"
#include "gw_host.h"
#include "gw_id.h"
#include "gw_log.h"

#include <czmq.h>
#include <stdlib.h>
#include <string.h>

#define RESEND_MS 1000  //  an unacknowledged RELEASE goes again after this
#define TICK_MS 20  //  new releases go out together on this tick
#define RELEASES_MAX 1000000  //  beyond this, reservations are left to lapse

typedef struct s_pending_t {
    struct s_pending_t *prev, *next;  //  in asking order = deadline order
    uint64_t correlation;
    control_reply_fn *fn;
    void *client;  //  NULL once forgotten
    int64_t deadline_ms;
    char *admit_request_id;  //  for an ADMIT: to release it if orphaned
    uint64_t admit_key_id;
} s_pending_t;

typedef struct {
    char *request_id;
    uint64_t key_id;
    bool dispatched;
    uint32_t dispatch, attempts;
    int64_t sent_ms;  //  0: not sent yet (waits in fresh)
} s_release_t;

struct control_client_t {
    gw_loop_t *loop;
    void *dealer;
    int timeout_ms;
    char ingress_id[37];
    char *instance;  //  stable name for the alerter; NULL until set
    uint64_t next_correlation;
    zhashx_t *by_correlation;  //  correlation -> s_pending_t
    s_pending_t *first, *last;
    zhashx_t *releases;  //  request id -> s_release_t, until acknowledged
    //  Releases not sent yet. They go out on the next tick, many at once: sent
    //  one by one, each would take accounting a transaction of its own, and an
    //  admission arriving meanwhile would wait behind it.
    s_release_t **fresh;
    size_t nfresh, fresh_max;
    gw_timer_t *timer;
    int64_t next_alive_ms, next_resend_ms;
};

static size_t
s_corr_hash (const void *key)
{
    return (size_t) ((uint64_t) (uintptr_t) key * 0x9E3779B97F4A7C15ull);
}

static int
s_corr_compare (const void *a, const void *b)
{
    return (uintptr_t) a < (uintptr_t) b ? -1 : (uintptr_t) a > (uintptr_t) b;
}

static void
s_release_destroy (void **item)
{
    s_release_t *r = *item;
    if (r) {
        free (r->request_id);
        free (r);
        *item = NULL;
    }
}

static void
s_send_release (control_client_t *self, s_release_t *r)
{
    gw_msg_t msg = { .id = GW_MSG_RELEASE };
    msg.release = (gw_release_t) { r->request_id, r->dispatched, r->dispatch, r->attempts };
    gw_msg_send (self->dealer, NULL, 0, &msg);
    r->sent_ms = gw_now_ms ();
}

void
control_client_release (control_client_t *self, const char *request_id, uint64_t key_id, bool dispatched,
                        uint32_t dispatch, uint32_t attempts)
{
    if (zhashx_size (self->releases) >= RELEASES_MAX) {
        gw_warn ("control", "too many unacknowledged releases, dropping request_id=%s", request_id);
        return;
    }
    s_release_t *r = calloc (1, sizeof *r);
    if (!r || !(r->request_id = strdup (request_id))) {
        free (r);
        return;
    }
    r->key_id = key_id;
    r->dispatched = dispatched;
    r->dispatch = dispatch;
    r->attempts = attempts;
    if (self->nfresh == self->fresh_max) {
        size_t max = self->fresh_max ? self->fresh_max * 2 : 256;
        s_release_t **fresh = realloc (self->fresh, max * sizeof *fresh);
        if (!fresh) {
            s_release_destroy ((void **) &r);
            return;
        }
        self->fresh = fresh;
        self->fresh_max = max;
    }
    //  A second release of one request replaces the first (the later knows more).
    //  (Deleted, then inserted: the table's key is the entry's own string.)
    s_release_t *old = zhashx_lookup (self->releases, request_id);
    for (size_t i = 0; old && i < self->nfresh; i++)
        if (self->fresh[i] == old)
            self->fresh[i] = self->fresh[--self->nfresh];
    if (old)
        zhashx_delete (self->releases, request_id);
    zhashx_insert (self->releases, r->request_id, r);
    self->fresh[self->nfresh++] = r;
}

size_t
control_client_unacked (control_client_t *self)
{
    return zhashx_size (self->releases);
}

static void
s_unlink (control_client_t *self, s_pending_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        self->first = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        self->last = p->prev;
    zhashx_delete (self->by_correlation, (void *) (uintptr_t) p->correlation);
}

static void
s_pending_free (s_pending_t *p)
{
    free (p->admit_request_id);
    free (p);
}

/*  After an ADMIT's answer (NULL: none came): gives its reservation and
    concurrency slot back when nobody will use them, that is when the asker
    went away and it was (or may have been) admitted, or when the answer is
    neither yes nor a decided no (503: the database may have committed it all
    the same). A release of what was never reserved costs nothing. */
static void
s_release_unused (control_client_t *self, s_pending_t *p, const gw_msg_t *reply)
{
    if (!p->admit_request_id)
        return;
    uint32_t status = reply ? reply->admit_reply.status : 0;
    bool decided = status == 200 || status == 429 || status == 401;
    if (!decided || (!p->client && status == 200))
        control_client_release (self, p->admit_request_id, p->admit_key_id, false, 0, 0);
}

static uint64_t
s_correlation_of (const gw_msg_t *msg)
{
    switch (msg->id) {
    case GW_MSG_KEY_INFO:
        return msg->key_info.correlation;
    case GW_MSG_ADMIT_REPLY:
        return msg->admit_reply.correlation;
    case GW_MSG_ADMIN_REPLY:
        return msg->admin_reply.correlation;
    case GW_MSG_REPORT_REPLY:
        return msg->report_reply.correlation;
    default:
        return 0;
    }
}

static void
s_on_dealer (gw_loop_t *loop, void *socket, void *arg)
{
    (void) loop;
    control_client_t *self = arg;
    for (int i = 0; i < 512; i++) {
        gw_msg_t msg;
        gw_decode_t rc = gw_msg_recv (socket, NULL, NULL, &msg);
        if (rc == GW_DECODE_INTERRUPTED)
            return;
        if (rc != GW_DECODE_OK) {
            gw_warn ("control", "malformed or foreign-version answer dropped");
            continue;
        }
        if (msg.id == GW_MSG_RELEASE_ACK) {
            for (size_t k = 0; k < msg.release_ack.request_ids.count; k++) {
                s_release_t *r = zhashx_lookup (self->releases, msg.release_ack.request_ids.items[k]);
                //  A newer release of the same request, not sent yet, stays.
                if (r && r->sent_ms)
                    zhashx_delete (self->releases, r->request_id);
            }
        }
        else {
            uint64_t corr = s_correlation_of (&msg);
            s_pending_t *p = corr ? zhashx_lookup (self->by_correlation, (void *) (uintptr_t) corr) : NULL;
            if (p) {
                s_unlink (self, p);
                if (p->client)
                    p->fn (p->client, &msg);
                s_release_unused (self, p, &msg);
                s_pending_free (p);
            }
        }
        gw_msg_clear (&msg);
    }
}

/*  INGRESS_ALIVE: this ingress's admissions still run, and how busy its host
    is (an ingress may be the only gateway service on its host). */
static void
s_send_alive (control_client_t *self, bool leaving)
{
    gw_host_t host;
    gw_host_sample (".", &host);
    gw_msg_t alive = { .id = GW_MSG_INGRESS_ALIVE,
                       .ingress_alive = { self->ingress_id, self->instance ? self->instance : "", host.name,
                                          host.cpu_permille, host.mem_permille, host.disk_permille, leaving } };
    gw_msg_send (self->dealer, NULL, 0, &alive);
}

static void
s_on_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    control_client_t *self = arg;
    int64_t now = gw_now_ms ();
    while (self->first && self->first->deadline_ms <= now) {
        s_pending_t *p = self->first;
        s_unlink (self, p);
        if (p->client)
            p->fn (p->client, NULL);
        //  Unanswered: accounting may have admitted it all the same.
        s_release_unused (self, p, NULL);
        s_pending_free (p);
    }
    for (size_t i = 0; i < self->nfresh; i++)
        s_send_release (self, self->fresh[i]);
    self->nfresh = 0;
    if (now >= self->next_alive_ms) {
        s_send_alive (self, false);
        self->next_alive_ms = now + GW_INGRESS_ALIVE_MS;
    }
    if (now >= self->next_resend_ms) {
        for (s_release_t *r = zhashx_first (self->releases); r; r = zhashx_next (self->releases))
            if (r->sent_ms && now - r->sent_ms >= RESEND_MS)
                s_send_release (self, r);
        self->next_resend_ms = now + RESEND_MS / 2;
    }
    gw_timer_start (loop, timer, TICK_MS);
}

/*  The key's ended requests whose release accounting has not acknowledged
    yet (sent or about to be): a request that ended a moment ago must not
    hold its concurrency slot against the same client's next one because its
    RELEASE and this ADMIT took different paths (another thread, another
    instance). Borrowed strings; at most ENDED_MAX, looking at most at
    ENDED_SCAN releases (a long outage can leave many). */
#define ENDED_MAX 256
#define ENDED_SCAN 4096
static void
s_ended_of_key (control_client_t *self, uint64_t key_id, gw_strlist_t *ended)
{
    *ended = (gw_strlist_t) { 0 };
    size_t scanned = 0;
    for (s_release_t *r = zhashx_first (self->releases); r && scanned < ENDED_SCAN && ended->count < ENDED_MAX;
         r = zhashx_next (self->releases), scanned++) {
        if (r->key_id != key_id)
            continue;
        if (!ended->items && !(ended->items = calloc (ENDED_MAX + 1, sizeof (char *))))
            return;
        ended->items[ended->count++] = r->request_id;
    }
}

uint64_t
control_client_ask (control_client_t *self, gw_msg_t *msg, control_reply_fn *fn, void *client)
{
    gw_strlist_t ended = { 0 };
    s_pending_t *p = calloc (1, sizeof *p);
    if (!p)
        return 0;
    p->correlation = ++self->next_correlation;
    p->fn = fn;
    p->client = client;
    p->deadline_ms = gw_now_ms () + self->timeout_ms;
    switch (msg->id) {
    case GW_MSG_KEY_LOOKUP:
        msg->key_lookup.correlation = p->correlation;
        break;
    case GW_MSG_ADMIT:
        msg->admit.correlation = p->correlation;
        msg->admit.ingress_id = self->ingress_id;
        p->admit_key_id = msg->admit.key_id;
        if (!(p->admit_request_id = strdup (msg->admit.request_id))) {
            free (p);
            return 0;
        }
        s_ended_of_key (self, msg->admit.key_id, &ended);
        msg->admit.ended = ended;
        break;
    case GW_MSG_ADMIN_REQUEST:
        msg->admin_request.correlation = p->correlation;
        break;
    case GW_MSG_REPORT_REQUEST:
        msg->report_request.correlation = p->correlation;
        break;
    default:
        free (p);
        return 0;
    }
    //  No accounting connected: the send fails at once and the timer answers.
    gw_msg_send (self->dealer, NULL, 0, msg);
    if (msg->id == GW_MSG_ADMIT) {
        msg->admit.ended = (gw_strlist_t) { 0 };
        free (ended.items);  //  the strings are the releases' own
    }
    p->prev = self->last;
    if (self->last)
        self->last->next = p;
    else
        self->first = p;
    self->last = p;
    zhashx_insert (self->by_correlation, (void *) (uintptr_t) p->correlation, p);
    return p->correlation;
}

void
control_client_forget (control_client_t *self, uint64_t correlation)
{
    s_pending_t *p = zhashx_lookup (self->by_correlation, (void *) (uintptr_t) correlation);
    if (p)
        p->client = NULL;  //  kept until answered or timed out, for s_release_unused
}

void
control_client_set_instance (control_client_t *self, const char *instance)
{
    free (self->instance);
    self->instance = strdup (instance);
}

const char *
control_client_ingress_id (control_client_t *self)
{
    return self->ingress_id;
}

control_client_t *
control_client_new (gw_loop_t *loop, void *zmq_ctx, const char *endpoints, int timeout_ms)
{
    control_client_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->timeout_ms = timeout_ms;
    gw_id_uuid (self->ingress_id);
    self->by_correlation = zhashx_new ();
    zhashx_set_key_hasher (self->by_correlation, s_corr_hash);
    zhashx_set_key_comparator (self->by_correlation, s_corr_compare);
    zhashx_set_key_duplicator (self->by_correlation, NULL);
    zhashx_set_key_destructor (self->by_correlation, NULL);
    self->releases = zhashx_new ();
    //  The entry's own copy of the id is the key: no second copy.
    zhashx_set_key_duplicator (self->releases, NULL);
    zhashx_set_key_destructor (self->releases, NULL);
    zhashx_set_destructor (self->releases, s_release_destroy);
    //  Replies and releases can come in bursts at high request rates.
    self->dealer = gw_proto_dealer (zmq_ctx, endpoints, 100000, "control");
    if (!self->dealer) {
        control_client_destroy (&self);
        return NULL;
    }
    gw_loop_add_socket (loop, self->dealer, s_on_dealer, self);
    self->timer = gw_timer_new (s_on_timer, self);
    gw_timer_start (loop, self->timer, 0);
    gw_info ("control", "accounting control endpoints=%s ingress_id=%s", endpoints, self->ingress_id);
    return self;
}

void
control_client_destroy (control_client_t **self_p)
{
    control_client_t *self = *self_p;
    if (!self)
        return;
    //  Releases never sent go out once, in case accounting is there to take them.
    for (size_t i = 0; self->dealer && i < self->nfresh; i++)
        s_send_release (self, self->fresh[i]);
    if (self->releases && zhashx_size (self->releases))
        gw_warn ("control", "stopping with unacknowledged releases count=%zu (their reservations lapse)",
                 zhashx_size (self->releases));
    while (self->first) {
        s_pending_t *p = self->first;
        s_unlink (self, p);
        s_pending_free (p);
    }
    if (self->timer)
        gw_timer_destroy (self->loop, &self->timer);
    if (self->dealer) {
        //  A clean stop: this ingress is gone, not silent, and its slots free
        //  now. The last messages get a moment to leave.
        s_send_alive (self, true);
        int linger = 200;
        zmq_setsockopt (self->dealer, ZMQ_LINGER, &linger, sizeof linger);
        gw_loop_remove_socket (self->loop, self->dealer);
        zmq_close (self->dealer);
    }
    free (self->instance);
    zhashx_destroy (&self->by_correlation);
    zhashx_destroy (&self->releases);
    free (self->fresh);
    free (self);
    *self_p = NULL;
}
