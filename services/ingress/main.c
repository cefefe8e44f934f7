/*  ingress: the HTTP front of the gateway. Wires configuration, the dispatcher
    pool (ZeroMQ side) and the HTTP front (libmicrohttpd side) onto one loop. */
#include "dispatcher_pool.h"
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "http_front.h"
#include "report_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

/*  During the shutdown grace period: nothing left in progress? */
static bool
s_drained (void *arg)
{
    return http_front_active (arg) == 0;
}

int
main (void)
{
    gw_loop_catch_signals ();
    gw_log_init ("ingress");
    gw_loop_raise_fd_limit ();
    pool_config_t pool_config = {
        .endpoint = gw_env_str ("GW_JOBS_BIND", "tcp://127.0.0.1:5555"),
        .heartbeat_ms = (int) gw_env_int ("GW_HEARTBEAT_MS", 1000, 10, 60000),
        .liveness = (int) gw_env_int ("GW_HEARTBEAT_LIVENESS", 3, 2, 100),
        .queue_timeout_ms = (int) gw_env_int ("GW_QUEUE_TIMEOUT_MS", 10000, 1, 3600000),
    };
    http_config_t http_config = {
        .host = gw_env_str ("GW_HTTP_HOST", "127.0.0.1"),
        .port = (int) gw_env_int ("GW_HTTP_PORT", 8080, 0, 65535),
        .max_body_bytes = (size_t) gw_env_int ("GW_MAX_BODY_BYTES", 4 * 1024 * 1024, 1024, 60 << 20),
        .idle_timeout_s = (int) gw_env_int ("GW_HTTP_IDLE_TIMEOUT_S", 300, 1, 86400),
    };
    void *zmq_ctx = zmq_ctx_new ();
    gw_loop_t *loop = gw_loop_new ();
    dispatcher_pool_t *pool = loop ? dispatcher_pool_new (loop, zmq_ctx, &pool_config, &http_front_pool_fns) : NULL;
    //  Usage reports come from accounting when one is configured.
    const char *accounting = gw_env_str ("GW_ACCOUNTING_ENDPOINTS", NULL);
    report_client_t *reports = pool && accounting
                                   ? report_client_new (loop, zmq_ctx, accounting,
                                                        (int) gw_env_int ("GW_REPORT_TIMEOUT_MS", 5000, 10, 600000),
                                                        &http_front_pool_fns)
                                   : NULL;
    http_front_t *front = pool ? http_front_new (loop, pool, reports, &http_config) : NULL;
    int rc = 1;
    if (front) {
        gw_info ("main", "listening url=http://%s:%d jobs=%s", http_config.host, http_front_port (front),
                 pool_config.endpoint);
        rc = gw_loop_run (loop) ? 1 : 0;
        //  SIGTERM: stop accepting, let requests in progress finish for a while
        //  (a second signal cuts this short), then end what is left.
        http_front_quiesce (front);
        int64_t grace_ms = gw_env_int ("GW_SHUTDOWN_GRACE_MS", 10000, 0, 3600000);
        gw_loop_run_until (loop, s_drained, front, grace_ms);
    }
    //  The front goes first: closing its connections cancels their jobs in the pool.
    http_front_destroy (&front);
    report_client_destroy (&reports);
    dispatcher_pool_destroy (&pool);
    gw_loop_destroy (&loop);
    zmq_ctx_term (zmq_ctx);
    gw_info ("main", "stopped");
    return rc;
}
