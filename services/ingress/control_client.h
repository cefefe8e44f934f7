/*  control_client.h: the ingress's line to accounting's control endpoints.

    One DEALER connected to every accounting instance (they share PostgreSQL,
    so any one may answer). Questions (KEY_LOOKUP, ADMIT, ADMIN_REQUEST,
    REPORT_REQUEST) carry a correlation id; each gets its answer or, after the
    timeout, a NULL answer, exactly once unless forgotten first. RELEASEs are
    kept and resent until accounting acknowledges them, and INGRESS_ALIVE tells
    accounting every two seconds that this ingress's admitted requests still run.
*/
#ifndef CONTROL_CLIENT_H_INCLUDED
#define CONTROL_CLIENT_H_INCLUDED

#include "gw_loop.h"
#include "gw_proto.h"

typedef struct control_client_t control_client_t;

/*  reply is NULL when no accounting instance answered in time. */
typedef void (control_reply_fn) (void *client, const gw_msg_t *reply);

control_client_t *control_client_new (gw_loop_t *loop, void *zmq_ctx, const char *endpoints, int timeout_ms);
void control_client_destroy (control_client_t **self_p);

/*  The stable name the alerter knows this ingress by (GW_INGRESS_ID, or
    host:port), sent with INGRESS_ALIVE from now on. */
void control_client_set_instance (control_client_t *self, const char *instance);

/*  This ingress instance's id (random per process), sent with ADMITs. */
const char *control_client_ingress_id (control_client_t *self);

/*  Sends msg, whose correlation field this fills in (and, for an ADMIT, the
    key's requests this ingress has ended but accounting has not yet heard
    the release of, so they do not count as in progress). Returns the correlation
    (never 0), to forget the question with; 0 when out of memory. */
uint64_t control_client_ask (control_client_t *self, gw_msg_t *msg, control_reply_fn *fn, void *client);

/*  The asker went away: its answer is dropped. A forgotten ADMIT that turns
    out admitted (or times out, so might have been) is released at once; so is
    any ADMIT answered neither 200, 429 nor 401, or not answered in time. */
void control_client_forget (control_client_t *self, uint64_t correlation);

/*  Ends an admitted request at accounting, reliably (resent until acknowledged). */
void control_client_release (control_client_t *self, const char *request_id, uint64_t key_id, bool dispatched,
                             uint32_t dispatch, uint32_t attempts);

/*  Releases not yet acknowledged. */
size_t control_client_unacked (control_client_t *self);

#endif
