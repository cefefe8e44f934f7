/*  report_client.h: the ingress asks accounting for usage reports.

    One DEALER connected to every accounting endpoint; each question carries a
    correlation id and the answer goes back to the HTTP request that asked,
    through the same end() callback the dispatcher pool uses. A question not
    answered within the timeout gets 503.
*/
#ifndef REPORT_CLIENT_H_INCLUDED
#define REPORT_CLIENT_H_INCLUDED

#include "dispatcher_pool.h"
#include "gw_loop.h"
#include "gw_proto.h"

typedef struct report_client_t report_client_t;

report_client_t *report_client_new (gw_loop_t *loop, void *zmq_ctx, const char *endpoints, int timeout_ms,
                                    const pool_client_fns_t *fns);
void report_client_destroy (report_client_t **self_p);

/*  Sends the question; fns->end(client, ...) answers it exactly once, unless
    report_client_forget() is called first. Returns 0 or -1. */
int report_client_ask (report_client_t *self, void *client, const gw_report_request_t *request);

/*  The client went away: its answer, if it comes, is dropped. */
void report_client_forget (report_client_t *self, void *client);

#endif
