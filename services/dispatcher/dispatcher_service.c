/*  dispatcher_service: one dispatcher, configured from the environment: the
    provider and price tables, the usage path (spool and sender to accounting,
    optional JSON log), the job runner (libcurl) and the ingress links (ZeroMQ),
    on a loop of its own.

    The dispatcher process runs it on its main thread. An ingress with
    GW_LOCAL_DISPATCHER=1 runs one on a thread of its own, joined to it over
    inproc: on one host that saves each message its two trips through libzmq's
    I/O threads and loopback TCP, and the host a process (docs/architecture.md,
    "Local dispatcher"). */
#include "dispatcher_service.h"
#include "balance_probe.h"
#include "gw_env.h"
#include "gw_host.h"
#include "gw_id.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "gw_trim.h"
#include "ingress_link.h"
#include "job_runner.h"
#include "price_table.h"
#include "provider_table.h"
#include "usage_log.h"
#include "usage_sender.h"
#include "usage_spool.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

typedef struct {
    usage_log_t *log;
    usage_sender_t *sender;
    usage_spool_t *spool;
    size_t spool_max;
    bool refuse_when_full;  //  GW_SPOOL_FULL_POLICY=refuse
    ingress_links_t *links;
    const char *id;  //  this dispatcher, in its STATUS
    const char *spool_dir;
    int status_ms;
    balance_probe_t *balance;  //  NULL: no provider's balance is asked
} s_usage_out_t;

/*  Every GW_STATUS_MS: this dispatcher is alive, with its spool and its host's
    load, for the alerter (silent dispatchers, growing spools, busy hosts).
    The last one, at a clean stop, says it is leaving: not silent, gone. */
static void
s_status (s_usage_out_t *out, bool leaving)
{
    gw_host_t host;
    gw_host_sample (out->spool_dir, &host);
    balance_t balance = { 0 };
    if (out->balance)
        balance_probe_get (out->balance, &balance);
    gw_status_t status = { "dispatcher", (char *) out->id, host.name, usage_spool_pending (out->spool),
                           usage_spool_bytes (out->spool), host.cpu_permille, host.mem_permille,
                           host.disk_permille, balance.known ? balance.provider : "", balance.currency,
                           balance.total, balance.available, leaving };
    usage_sender_status (out->sender, &status);
}

static void
s_send_status (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    s_usage_out_t *out = arg;
    s_status (out, false);
    gw_timer_start (loop, timer, out->status_ms);
}

/*  The spool-full policy. "refuse": near full, take no new jobs (calls that are
    running still record their usage) until accounting has drained it to half.
    "hold": keep serving; events that do not fit wait in memory (lost if the
    process dies meanwhile). */
static void
s_check_spool (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    s_usage_out_t *out = arg;
    size_t bytes = usage_spool_bytes (out->spool);
    bool congested = usage_sender_held (out->sender) > 0 || bytes > out->spool_max / 10 * 9;
    if (out->refuse_when_full && congested)
        ingress_links_pause (out->links, "usage spool full");
    else if (ingress_links_paused (out->links) && usage_sender_held (out->sender) == 0
             && bytes < out->spool_max / 2)
        ingress_links_resume (out->links);
    gw_timer_start (loop, timer, 100);
}

/*  Every upstream call's usage: to the spool (durable, then accounting) and,
    when configured, to the JSON-lines log. */
static void
s_on_usage (void *arg, const gw_usage_t *event)
{
    s_usage_out_t *out = arg;
    if (out->sender)
        usage_sender_submit (out->sender, event);
    if (out->log)
        usage_log_write (out->log, event);
}

/*  Jobs in progress (for the memory trimmer). */
static size_t
s_active (void *arg)
{
    return job_runner_active (arg);
}

/*  What says when to stop: a count of stops asked through stop_fd (an
    eventfd adds up writes that come before a read, so it is counted, not seen). */
typedef struct {
    job_runner_t *runner;
    uint64_t stops;
} s_stop_t;

/*  During the shutdown grace period: nothing left in progress, or a second
    stop asked? */
static bool
s_drained (void *arg)
{
    s_stop_t *stop = arg;
    return job_runner_active (stop->runner) == 0 || stop->stops >= 2;
}

/*  The stop_fd fired: the same as SIGTERM to a dispatcher process. */
static void
s_on_stop (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) events;
    s_stop_t *stop = arg;
    uint64_t n = 0;
    if (read (fd, &n, sizeof n) == sizeof n)
        stop->stops += n;
    gw_info ("main", "asked to stop");
    gw_loop_stop (loop);
}

int
dispatcher_service_run (void *zmq_ctx, const char *ingress_endpoints, int stop_fd, int ready_fd)
{
    char host[64] = "host", uuid[37], default_id[128];
    gethostname (host, sizeof host - 1);
    gw_id_uuid (uuid);
    snprintf (default_id, sizeof default_id, "d-%s-%d-%.8s", host, (int) getpid (), uuid);
    links_config_t links_config = {
        .endpoints = ingress_endpoints ? ingress_endpoints : gw_env_str ("GW_INGRESS_ENDPOINTS", "tcp://127.0.0.1:5555"),
        .dispatcher_id = gw_env_str ("GW_DISPATCHER_ID", default_id),
        .slots = (int) gw_env_int ("GW_DISPATCHER_SLOTS", 256, 1, 1000000),
        .heartbeat_ms = (int) gw_env_int ("GW_HEARTBEAT_MS", 1000, 10, 60000),
        .liveness = (int) gw_env_int ("GW_HEARTBEAT_LIVENESS", 3, 2, 100),
    };
    runner_config_t runner_config = {
        .connect_timeout_ms = (int) gw_env_int ("GW_UPSTREAM_CONNECT_TIMEOUT_MS", 5000, 1, 600000),
        .first_byte_timeout_ms = (int) gw_env_int ("GW_UPSTREAM_FIRST_BYTE_TIMEOUT_MS", 60000, 1, 3600000),
        .total_timeout_ms = (int) gw_env_int ("GW_UPSTREAM_TOTAL_TIMEOUT_MS", 900000, 1, 86400000),
        .drain_timeout_ms = (int) gw_env_int ("GW_DRAIN_TIMEOUT_MS", 120000, 0, 3600000),
        .retry_max = (int) gw_env_int ("GW_RETRY_MAX", 2, 0, 20),
        .retry_base_ms = (int) gw_env_int ("GW_RETRY_BASE_MS", 250, 1, 60000),
        .retry_cap_ms = (int) gw_env_int ("GW_RETRY_CAP_MS", 8000, 1, 600000),
        .retry_after_max_ms = (int) gw_env_int ("GW_RETRY_AFTER_MAX_MS", 30000, 0, 3600000),
        .max_body_bytes = (size_t) gw_env_int ("GW_UPSTREAM_MAX_BODY_BYTES", 32 << 20, 1024, 60 << 20),
        .currency = gw_env_str ("GW_CURRENCY", "CNY"),
        .cache_max_bytes = (size_t) gw_env_int ("GW_CACHE_MAX_BYTES", 64 << 20, 0, (int64_t) 1 << 40),
        .cache_entry_max_bytes = (size_t) gw_env_int ("GW_CACHE_ENTRY_MAX_BYTES", 1 << 20, 1024, 60 << 20),
        .cache_ttl_max_s = (uint32_t) gw_env_int ("GW_CACHE_TTL_MAX_S", 86400, 1, 30 * 86400),
    };
    //  The same file and currency as accounting, so the cost an END reports is
    //  the cost accounting stores. Without it requests still run; their cost is
    //  reported as unknown.
    const char *prices_path = gw_env_str ("GW_PRICES", "prices/prices.csv");
    char err[256] = "";
    price_table_t *prices = price_table_load (prices_path, err, sizeof err);
    if (!prices)
        gw_warn ("main", "no price table, request costs are reported unknown path=%s error=%s", prices_path, err);
    gw_loop_t *loop = gw_loop_new ();
    s_stop_t stop = { NULL, 0 };
    if (loop && stop_fd >= 0) {
        //  On a thread of another service's process: that service's loop takes
        //  the signals and says when to stop.
        gw_loop_leave_signals (loop);
        //  Unwatched, nothing could stop it: better not to start.
        if (gw_loop_watch (loop, stop_fd, EPOLLIN, s_on_stop, &stop)) {
            gw_error ("main", "cannot watch the stop descriptor");
            gw_loop_destroy (&loop);
        }
    }
    provider_table_t *providers = provider_table_new ();
    s_usage_out_t usage = { 0 };
    bool usage_ok = true;
    const char *usage_log_path = gw_env_str ("GW_USAGE_LOG", NULL);
    const char *accounting = gw_env_str ("GW_ACCOUNTING_ENDPOINTS", NULL);
    //  Without accounting the log (stderr at least) is the only record.
    if (usage_log_path || !accounting)
        usage_ok &= (usage.log = usage_log_new (usage_log_path)) != NULL;
    usage_spool_t *spool = NULL;
    if (accounting && loop) {
        sender_config_t sender_config = {
            .endpoints = accounting,
            .resend_ms = (int) gw_env_int ("GW_USAGE_RESEND_MS", 2000, 10, 600000),
        };
        usage.spool_max = (size_t) gw_env_int ("GW_SPOOL_MAX_BYTES", 256 << 20, 1 << 16, (int64_t) 1 << 40);
        const char *policy = gw_env_str ("GW_SPOOL_FULL_POLICY", "refuse");
        usage.refuse_when_full = strcmp (policy, "hold") != 0;
        if (usage.refuse_when_full && strcmp (policy, "refuse"))
            gw_warn ("main", "unknown GW_SPOOL_FULL_POLICY=%s, using refuse", policy);
        usage.spool_dir = gw_env_str ("GW_SPOOL_DIR", "var/spool/dispatcher");
        usage.status_ms = (int) gw_env_int ("GW_STATUS_MS", 10000, 100, 3600000);
        spool = usage_spool_new (usage.spool_dir, usage.spool_max);
        usage.spool = spool;
        usage.sender = spool ? usage_sender_new (loop, zmq_ctx, &sender_config, spool) : NULL;
        usage_ok &= usage.sender != NULL;
    }
    else
        gw_warn ("main", "GW_ACCOUNTING_ENDPOINTS unset: usage events are only logged, not stored");
    job_runner_t *runner = providers && usage_ok && loop
                               ? job_runner_new (loop, providers, prices, s_on_usage, &usage, &runner_config,
                                                 &ingress_link_runner_fns)
                               : NULL;
    ingress_links_t *links = runner ? ingress_links_new (loop, zmq_ctx, &links_config, providers, runner) : NULL;
    int rc = 1;
    gw_timer_t *spool_check = NULL, *status = NULL;
    //  After a burst (thousands of streams), memory goes back to the system.
    //  (In another service's process, that service's trimmer does it.)
    gw_trim_t *trim = runner && stop_fd < 0 ? gw_trim_new (loop, s_active, runner) : NULL;
    if (links && usage.sender) {
        usage.links = links;
        usage.id = links_config.dispatcher_id;
        spool_check = gw_timer_new (s_check_spool, &usage);
        gw_timer_start (loop, spool_check, 100);
        status = gw_timer_new (s_send_status, &usage);
        gw_timer_start (loop, status, 0);
        //  The account balance of one provider (DeepSeek's GET /user/balance).
        int poll_ms = (int) gw_env_int ("GW_BALANCE_POLL_MS", 300000, 0, 86400000);
        const provider_t *p = provider_table_find (providers, gw_env_str ("GW_BALANCE_PROVIDER", "deepseek"));
        if (poll_ms > 0 && p && p->api_key && *p->api_key)
            usage.balance = balance_probe_new (p, poll_ms, runner_config.currency);
    }
    if (links) {
        gw_info ("main", "started id=%s ingresses=%s slots=%d", links_config.dispatcher_id,
                 links_config.endpoints, links_config.slots);
        uint64_t one = 1;
        if (ready_fd >= 0 && write (ready_fd, &one, sizeof one) < 0)
            gw_warn ("main", "cannot say it started errno=%d", errno);
        rc = gw_loop_run (loop) ? 1 : 0;
        //  SIGTERM (or the stop_fd): take no more jobs, let running ones finish
        //  (and report their usage) for a while; a second one cuts this short.
        ingress_links_bye (links);
        int64_t grace_ms = gw_env_int ("GW_SHUTDOWN_GRACE_MS", 10000, 0, 3600000);
        stop.runner = runner;
        if (!s_drained (&stop))
            gw_loop_run_until (loop, s_drained, &stop, grace_ms);
    }
    if (status)
        s_status (&usage, true);
    gw_trim_destroy (&trim);
    gw_timer_destroy (loop, &spool_check);
    gw_timer_destroy (loop, &status);
    balance_probe_destroy (&usage.balance);
    //  The runner records the usage of calls cut at shutdown and ends their jobs
    //  through the links: the links, the sender and the spool go after it.
    job_runner_destroy (&runner);
    ingress_links_destroy (&links);
    usage_sender_destroy (&usage.sender);
    usage_spool_destroy (&spool);
    usage_log_destroy (&usage.log);
    provider_table_destroy (&providers);
    price_table_destroy (&prices);
    if (loop && stop_fd >= 0)
        gw_loop_unwatch (loop, stop_fd);
    gw_loop_destroy (&loop);
    gw_info ("main", "stopped");
    return rc;
}

struct dispatcher_thread_t {
    pthread_t thread;
    void *zmq_ctx;
    char *endpoint;
    int stop_fd;   //  eventfd: written to stop it
    int ready_fd;  //  eventfd: written by it once it runs
    int ended_fd;  //  eventfd: written by it when it has ended
    int rc;
};

static void *
s_thread_main (void *arg)
{
    dispatcher_thread_t *self = arg;
    gw_log_thread_service ("dispatcher");
    self->rc = dispatcher_service_run (self->zmq_ctx, self->endpoint, self->stop_fd, self->ready_fd);
    uint64_t one = 1;
    if (write (self->ended_fd, &one, sizeof one) < 0)
        gw_warn ("main", "cannot say it ended errno=%d", errno);
    return NULL;
}

static void
s_thread_free (dispatcher_thread_t *self)
{
    int fds[] = { self->stop_fd, self->ready_fd, self->ended_fd };
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close (fds[i]);
    free (self->endpoint);
    free (self);
    curl_global_cleanup ();
}

dispatcher_thread_t *
dispatcher_thread_start (void *zmq_ctx, const char *ingress_endpoint)
{
    dispatcher_thread_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->zmq_ctx = zmq_ctx;
    self->endpoint = strdup (ingress_endpoint);
    self->stop_fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->ready_fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->ended_fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    //  Once per process, before any thread could use libcurl.
    curl_global_init (CURL_GLOBAL_DEFAULT);
    if (!self->endpoint || self->stop_fd < 0 || self->ready_fd < 0 || self->ended_fd < 0
        || pthread_create (&self->thread, NULL, s_thread_main, self)) {
        gw_error ("main", "cannot start the local dispatcher");
        s_thread_free (self);
        return NULL;
    }
    //  Running, or failed (its log says why): an ingress without the
    //  dispatcher it was told to run does not start either. It may take a
    //  while: opening the spool reads what an earlier run left in it.
    struct pollfd fds[2] = { { self->ready_fd, POLLIN, 0 }, { self->ended_fd, POLLIN, 0 } };
    while (poll (fds, 2, -1) < 0 && errno == EINTR)
        ;
    if (!(fds[0].revents & POLLIN)) {
        gw_error ("main", "the local dispatcher did not start");
        pthread_join (self->thread, NULL);
        s_thread_free (self);
        return NULL;
    }
    return self;
}

void
dispatcher_thread_stop (dispatcher_thread_t *self)
{
    uint64_t one = 1;
    if (self && write (self->stop_fd, &one, sizeof one) < 0)
        gw_warn ("main", "cannot ask the local dispatcher to stop errno=%d", errno);
}

int
dispatcher_thread_ended_fd (dispatcher_thread_t *self)
{
    return self->ended_fd;
}

int
dispatcher_thread_destroy (dispatcher_thread_t **self_p)
{
    dispatcher_thread_t *self = *self_p;
    if (!self)
        return 0;
    dispatcher_thread_stop (self);
    pthread_join (self->thread, NULL);
    int rc = self->rc;
    s_thread_free (self);
    *self_p = NULL;
    return rc;
}

/* ---- selftest ---- */

/*  The id of the next message on the test's router, 0 after 5 s of nothing. */
static int
s_test_next (void *router)
{
    zmq_pollitem_t item = { router, 0, ZMQ_POLLIN, 0 };
    uint8_t peer[256];
    size_t peer_size = sizeof peer;
    gw_msg_t msg;
    if (zmq_poll (&item, 1, 5000) != 1 || gw_msg_recv (router, peer, &peer_size, &msg) != GW_DECODE_OK)
        return 0;
    int id = msg.id;
    gw_msg_clear (&msg);
    //  An ingress answers a HELLO with a heartbeat: the link is then up.
    gw_msg_t hb = { .id = GW_MSG_HEARTBEAT, .heartbeat = { 1 } };
    if (id == GW_MSG_HELLO)
        assert (gw_msg_send (router, peer, peer_size, &hb) == 0);
    return id;
}

/*  A local dispatcher says HELLO on its inproc endpoint, keeps to its own
    loop's signals (none), and stops when asked, saying BYE. */
void
dispatcher_service_test (bool verbose)
{
    if (verbose)
        printf (" * dispatcher_service: ");
    setenv ("GW_SPOOL_DIR", "/tmp/gw-dispatcher-service-test", 1);
    unsetenv ("GW_ACCOUNTING_ENDPOINTS");
    setenv ("GW_USAGE_LOG", "/dev/null", 1);
    void *ctx = gw_proto_context ();
    void *router = zmq_socket (ctx, ZMQ_ROUTER);
    assert (zmq_bind (router, "inproc://dispatcher-service-test") == 0);
    dispatcher_thread_t *local = dispatcher_thread_start (ctx, "inproc://dispatcher-service-test");
    assert (local);
    //  HELLO first; after the stop, a BYE (heartbeats may come between).
    assert (s_test_next (router) == GW_MSG_HELLO);
    usleep (300 * 1000);  //  for the heartbeat to be read: an idle loop, at once
    dispatcher_thread_stop (local);
    int id = -1;
    for (int i = 0; i < 20 && id != GW_MSG_BYE && id != 0; i++)
        id = s_test_next (router);
    assert (id == GW_MSG_BYE);
    assert (dispatcher_thread_destroy (&local) == 0 && local == NULL);
    zmq_close (router);
    zmq_ctx_term (ctx);
    unsetenv ("GW_SPOOL_DIR");
    unsetenv ("GW_USAGE_LOG");
    if (verbose)
        printf ("OK\n");
}
