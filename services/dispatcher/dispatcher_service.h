/*  dispatcher_service: one whole dispatcher on a loop of its own, as the
    dispatcher process runs it and as an ingress runs its local dispatcher
    (GW_LOCAL_DISPATCHER=1) on a thread. */
#ifndef DISPATCHER_SERVICE_H
#define DISPATCHER_SERVICE_H

#include <stdbool.h>

/*  Runs a dispatcher configured from the environment (README, "Configuration")
    until it is told to stop, then takes no more jobs, lets running ones finish
    for GW_SHUTDOWN_GRACE_MS (a second stop cuts that short) and cleans up.
    ingress_endpoints: NULL reads GW_INGRESS_ENDPOINTS. stop_fd: -1 stops on
    SIGINT/SIGTERM (the caller blocked them: gw_loop_catch_signals); otherwise
    leaves the signals to the caller's loop and stops when stop_fd is readable
    (an eventfd; each write is one stop). ready_fd, unless -1, is written (an
    eventfd) once it runs. The caller owns zmq_ctx and libcurl's global state.
    Returns 0, or 1 when it could not start or its loop failed. */
int dispatcher_service_run (void *zmq_ctx, const char *ingress_endpoints, int stop_fd, int ready_fd);

/*  A dispatcher on a thread of the calling process, joined to the ingress at
    ingress_endpoint (inproc, in zmq_ctx). Returns once it runs; NULL when it
    could not start (its log says why). */
typedef struct dispatcher_thread_t dispatcher_thread_t;
dispatcher_thread_t *dispatcher_thread_start (void *zmq_ctx, const char *ingress_endpoint);
/*  Asks it to stop (as SIGTERM does a dispatcher process); a second call cuts
    its grace period short. Does not wait. */
void dispatcher_thread_stop (dispatcher_thread_t *self);
/*  An eventfd that becomes readable when it has ended (after a stop, or on its
    own: its loop failed), for the caller's loop. */
int dispatcher_thread_ended_fd (dispatcher_thread_t *self);
/*  Stops it if still running, waits for it to end and frees it. Returns its
    dispatcher_service_run result. */
int dispatcher_thread_destroy (dispatcher_thread_t **self_p);

void dispatcher_service_test (bool verbose);

#endif
