/*  ingress: the HTTP front of the gateway. Wires configuration, the dispatcher
    pool (ZeroMQ side) and the HTTP front (libmicrohttpd side) onto one loop. */
#include "dispatcher_pool.h"
#include "dispatcher_service.h"
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "http_front.h"
#include "control_client.h"
#include "key_cache.h"
#include "gw_trim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <zmq.h>

/*  During the shutdown grace period: nothing left in progress? */
static bool
s_drained (void *arg)
{
    return http_front_active (arg) == 0;
}

/*  Requests in progress (for the memory trimmer). */
static size_t
s_active (void *arg)
{
    return http_front_active (arg);
}

/*  The local dispatcher and whether it was asked to stop. */
typedef struct {
    dispatcher_thread_t *thread;
    bool stopping;
    bool ended;   //  its thread said so (dispatcher_thread_ended_fd)
    bool failed;  //  it ended on its own
} s_local_t;

/*  The local dispatcher has finished its own drain. */
static bool
s_local_ended (void *arg)
{
    return ((s_local_t *) arg)->ended;
}

/*  Its thread ended. Asked to, that is the end of its drain; on its own (its
    loop failed), this ingress has no dispatcher it can count on: it stops too
    and exits 1, as a dispatcher process would, for its supervisor to see. */
static void
s_on_local_ended (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) events;
    s_local_t *local = arg;
    uint64_t n;
    if (read (fd, &n, sizeof n) < 0) { }
    local->ended = true;
    if (local->stopping || local->failed)
        return;
    gw_error ("main", "the local dispatcher stopped on its own: stopping");
    local->failed = true;
    gw_loop_stop (loop);
}

/*  After it: every release acknowledged (concurrency slots given back)? */
static bool
s_released (void *arg)
{
    return control_client_unacked (arg) == 0;
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
        .stream_window = (uint32_t) gw_env_int ("GW_STREAM_WINDOW_BYTES", 4096, 0, 64 << 20),
    };
    //  A dispatcher on a thread of this process, joined over inproc (README,
    //  "One host"): dispatchers elsewhere still join over GW_JOBS_BIND.
    bool local_dispatcher = gw_env_bool ("GW_LOCAL_DISPATCHER", false);
    if (local_dispatcher)
        pool_config.local_endpoint = "inproc://local-dispatcher";
    http_config_t http_config = {
        .host = gw_env_str ("GW_HTTP_HOST", "127.0.0.1"),
        .port = (int) gw_env_int ("GW_HTTP_PORT", 8080, 0, 65535),
        .max_body_bytes = (size_t) gw_env_int ("GW_MAX_BODY_BYTES", 4 * 1024 * 1024, 1024, 60 << 20),
        .idle_timeout_s = (int) gw_env_int ("GW_HTTP_IDLE_TIMEOUT_S", 300, 1, 86400),
        .conn_memory_bytes = (size_t) gw_env_int ("GW_HTTP_CONN_MEMORY_BYTES", 8192, 4096, 1 << 20),
        .admin_key = gw_env_str ("GW_ADMIN_KEY", NULL),
        .currency = gw_env_str ("GW_CURRENCY", "CNY"),
        .cache_ttl_s = (uint32_t) gw_env_int ("GW_CACHE_TTL_S", 300, 1, CACHE_TTL_MAX_S),
    };
    const char *auth = gw_env_str ("GW_AUTH", "keys");
    if (strcmp (auth, "keys") && strcmp (auth, "none")) {
        gw_error ("main", "GW_AUTH must be keys or none, not %s", auth);
        return 1;
    }
    http_config.auth = strcmp (auth, "keys") == 0;
    if (http_config.admin_key && strlen (http_config.admin_key) < 16) {
        gw_error ("main", "GW_ADMIN_KEY is too short: use at least 16 random characters");
        return 1;
    }
    if (!http_config.auth)
        gw_warn ("main", "GW_AUTH=none: requests are not authenticated, limited or attributed to keys");
    void *zmq_ctx = gw_proto_context ();
    gw_loop_t *loop = gw_loop_new ();
    dispatcher_pool_t *pool = loop ? dispatcher_pool_new (loop, zmq_ctx, &pool_config, &http_front_pool_fns) : NULL;
    s_local_t local = { NULL, false, false, false };
    if (pool && local_dispatcher) {
        local.thread = dispatcher_thread_start (zmq_ctx, pool_config.local_endpoint);
        //  Unwatched, its end would go unseen: a stop would wait out the grace.
        if (local.thread
            && gw_loop_watch (loop, dispatcher_thread_ended_fd (local.thread), EPOLLIN, s_on_local_ended, &local)) {
            gw_error ("main", "cannot watch the local dispatcher");
            dispatcher_thread_destroy (&local.thread);
        }
    }
    //  Keys, admissions, reports and the admin API are accounting's. Without
    //  keys, accounting is optional (reports and the admin API then answer 503).
    const char *control_endpoints = gw_env_str ("GW_CONTROL_ENDPOINTS", http_config.auth ? "tcp://127.0.0.1:5557" : NULL);
    int control_timeout = (int) gw_env_int ("GW_CONTROL_TIMEOUT_MS", gw_env_int ("GW_REPORT_TIMEOUT_MS", 5000, 10, 600000),
                                            10, 600000);
    control_client_t *control = pool && control_endpoints
                                    ? control_client_new (loop, zmq_ctx, control_endpoints, control_timeout)
                                    : NULL;
    key_cache_t *keys = control ? key_cache_new (control, (int) gw_env_int ("GW_KEY_CACHE_MS", 5000, 0, 3600000),
                                                 (size_t) gw_env_int ("GW_KEY_CACHE_MAX", 100000, 1, 100000000))
                                : NULL;
    http_front_t *front = pool && (control || !control_endpoints) && (local.thread || !local_dispatcher)
                              ? http_front_new (loop, pool, control, keys, &http_config)
                              : NULL;
    //  After a burst (thousands of streams), memory goes back to the system.
    gw_trim_t *trim = front ? gw_trim_new (loop, s_active, front) : NULL;
    int rc = 1;
    if (front) {
        gw_info ("main", "listening url=http://%s:%d jobs=%s", http_config.host, http_front_port (front),
                 pool_config.endpoint);
        if (control) {
            //  Stable across restarts, so a restarted ingress takes its row back.
            char name[300], host[256] = "";
            gethostname (host, sizeof host - 1);
            snprintf (name, sizeof name, "%s:%d", host, http_front_port (front));
            control_client_set_instance (control, gw_env_str ("GW_INGRESS_ID", name));
        }
        rc = gw_loop_run (loop) ? 1 : 0;
        //  SIGTERM: stop accepting, let requests in progress finish for a while
        //  (a second signal cuts this short), then end what is left.
        http_front_quiesce (front);
        int64_t grace_ms = gw_env_int ("GW_SHUTDOWN_GRACE_MS", 10000, 0, 3600000);
        int64_t deadline_ms = gw_now_ms () + grace_ms;
        //  (Without its dispatcher nothing in progress can finish.)
        bool drained = !local.failed && gw_loop_run_until (loop, s_drained, front, grace_ms);
        //  The local dispatcher stops only now, as a dispatcher process that
        //  outlives its ingress (make run stops the ingress first): it has run
        //  the queue and whatever came on open connections meanwhile. Its calls
        //  whose clients left are drained for their usage within what is left
        //  of the one grace period, unless a second signal cut it short.
        local.stopping = true;
        dispatcher_thread_stop (local.thread);
        int64_t left_ms = deadline_ms - gw_now_ms ();
        if (local.thread && drained && !local.failed && left_ms > 0)
            gw_loop_run_until (loop, s_local_ended, &local, left_ms);
    }
    if (local.failed)
        rc = 1;
    //  The local dispatcher ends before the pool it talks to: what it still
    //  runs now is cut (a second stop), with its usage recorded.
    if (local.thread)
        gw_loop_unwatch (loop, dispatcher_thread_ended_fd (local.thread));
    local.stopping = true;
    if (dispatcher_thread_destroy (&local.thread))
        rc = 1;
    //  The front goes first: closing its connections cancels their jobs in the
    //  pool. Then the pool, whose jobs still at dispatchers are released (with
    //  their usage unknown: their reservations lapse) through the control client.
    gw_trim_destroy (&trim);
    http_front_destroy (&front);
    dispatcher_pool_destroy (&pool);
    //  Releases still unacknowledged get a moment to land; what does not lapses
    //  at accounting (the concurrency slot when this ingress stops saying it is alive).
    if (control && control_client_unacked (control))
        gw_loop_run_until (loop, s_released, control, 1000);
    key_cache_destroy (&keys);
    control_client_destroy (&control);
    gw_loop_destroy (&loop);
    zmq_ctx_term (zmq_ctx);
    gw_info ("main", "stopped");
    return rc;
}
