/*  ingress_link.h: the dispatcher side of the job protocol, one DEALER per ingress.

    The dispatcher's slots are shared out between the ingresses it serves; each
    ingress gets its share as credits in HELLO and one credit back per finished
    job (in END, or in CREDIT for a job the ingress has forgotten). Heartbeats go
    both ways: an ingress that goes silent, or answers RESET, loses its running
    jobs (they are drained for usage) and gets a fresh HELLO.
*/
#ifndef INGRESS_LINK_H_INCLUDED
#define INGRESS_LINK_H_INCLUDED

#include "gw_loop.h"
#include "job_runner.h"
#include "provider_table.h"
#include <stdbool.h>

typedef struct ingress_links_t ingress_links_t;

typedef struct {
    const char *endpoints;  //  comma list of ingress jobs endpoints
    const char *dispatcher_id;
    int slots;  //  concurrent jobs this dispatcher runs
    int heartbeat_ms;
    int liveness;
} links_config_t;

/*  What the job runner calls back; the owner of each job is its link. */
extern const runner_fns_t ingress_link_runner_fns;

ingress_links_t *ingress_links_new (gw_loop_t *loop, void *zmq_ctx, const links_config_t *config,
                                    provider_table_t *providers, job_runner_t *runner);
void ingress_links_destroy (ingress_links_t **self_p);

/*  Tells every ingress to send no more jobs; running ones go on to their end. */
void ingress_links_bye (ingress_links_t *self);

/*  Like bye, but for a while (the usage spool is full); resume says HELLO again
    to each ingress once the jobs it had here are done. */
void ingress_links_pause (ingress_links_t *self, const char *reason);
void ingress_links_resume (ingress_links_t *self);
bool ingress_links_paused (ingress_links_t *self);

#endif
