/*  dispatcher: runs chat jobs from the ingresses against upstream providers
    (dispatcher_service: the whole dispatcher on this process's main thread). */
#include "dispatcher_service.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "gw_proto.h"

#include <curl/curl.h>
#include <zmq.h>

int
main (void)
{
    gw_loop_catch_signals ();
    gw_log_init ("dispatcher");
    gw_loop_raise_fd_limit ();
    curl_global_init (CURL_GLOBAL_DEFAULT);
    void *zmq_ctx = gw_proto_context ();
    int rc = dispatcher_service_run (zmq_ctx, NULL, -1, -1);
    zmq_ctx_term (zmq_ctx);
    curl_global_cleanup ();
    return rc;
}
