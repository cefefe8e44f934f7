/*  http_front.c: HTTP routes, request bodies, suspended connections, stream relay. */
#include "http_front.h"
#include "chat_request.h"
#include "gw_buf.h"
#include "gw_error.h"
#include "gw_id.h"
#include "gw_log.h"
#include "gw_time.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct http_front_t {
    gw_loop_t *loop;
    dispatcher_pool_t *pool;
    report_client_t *reports;
    http_config_t config;
    struct MHD_Daemon *daemon;
    int epoll_fd;
    bool run_needed;  //  a connection was resumed: MHD_run before sleeping
    bool quiesced;  //  no longer accepting connections
    struct http_req_t *reqs;  //  every chat request alive, for shutdown
    size_t active;
};

typedef struct http_req_t {
    http_front_t *front;
    struct http_req_t *prev, *next;
    struct MHD_Connection *conn;
    char request_id[37];
    gw_buf_t body;  //  request body as it arrives
    bool too_large;
    pool_job_t *job;  //  set while the pool may call us
    bool report_pending;  //  set while the report client may call us
    bool suspended;
    bool submitted;
    bool have_head;  //  a stream started: status and type are sent
    bool ended;  //  no more bytes will come from the pool
    uint32_t status;
    char content_type[96];
    gw_buf_t out;  //  bytes for the client not yet handed to MHD
    size_t out_off;  //  how much of out MHD already took
} http_req_t;

/* ---- small helpers ---- */

static enum MHD_Result
s_reply (struct MHD_Connection *conn, unsigned status, const char *type, char *body,
         const char *request_id)
{
    //  body is taken over (freed by MHD).
    struct MHD_Response *r = MHD_create_response_from_buffer (body ? strlen (body) : 0, body,
                                                              MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (request_id)
        MHD_add_response_header (r, "x-request-id", request_id);
    enum MHD_Result rc = MHD_queue_response (conn, status, r);
    MHD_destroy_response (r);
    return rc;
}

static enum MHD_Result
s_reply_error (struct MHD_Connection *conn, unsigned status, const char *type, const char *code,
               const char *request_id, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (message, sizeof message, fmt, ap);
    va_end (ap);
    return s_reply (conn, status, "application/json", gw_error_json (type, code, NULL, "%s", message),
                    request_id);
}

static void
s_wake (http_req_t *req)
{
    if (req->suspended) {
        req->suspended = false;
        MHD_resume_connection (req->conn);
        req->front->run_needed = true;
    }
}

/* ---- callbacks from the dispatcher pool ---- */

static void
s_pool_head (void *client, uint32_t status, const char *content_type)
{
    http_req_t *req = client;
    req->have_head = true;
    req->status = status;
    snprintf (req->content_type, sizeof req->content_type, "%s", content_type);
    s_wake (req);
}

static void
s_pool_chunk (void *client, const uint8_t *data, size_t size)
{
    http_req_t *req = client;
    if (gw_buf_append (&req->out, data, size))
        gw_error ("http", "out of memory request_id=%s", req->request_id);
    s_wake (req);
}

static void
s_pool_end (void *client, uint32_t status, const char *content_type, const uint8_t *body, size_t size)
{
    http_req_t *req = client;
    req->job = NULL;
    req->report_pending = false;
    req->ended = true;
    if (!req->have_head) {
        req->status = status;
        snprintf (req->content_type, sizeof req->content_type, "%s", content_type);
    }
    if (gw_buf_append (&req->out, body, size))
        gw_error ("http", "out of memory request_id=%s", req->request_id);
    s_wake (req);
}

const pool_client_fns_t http_front_pool_fns = { s_pool_head, s_pool_chunk, s_pool_end };

/* ---- the stream relay ---- */

static ssize_t
s_read_stream (void *cls, uint64_t pos, char *buf, size_t max)
{
    (void) pos;
    http_req_t *req = cls;
    size_t avail = req->out.len - req->out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy (buf, req->out.data + req->out_off, n);
        req->out_off += n;
        //  Rewind instead of shifting bytes: the reader usually empties the buffer.
        if (req->out_off == req->out.len)
            req->out_off = req->out.len = 0;
        return (ssize_t) n;
    }
    if (req->ended)
        return MHD_CONTENT_READER_END_OF_STREAM;
    //  Nothing yet: park the connection until the pool brings more (s_wake).
    //  Returning 0 without suspending would make MHD spin on this callback.
    req->suspended = true;
    MHD_suspend_connection (req->conn);
    return 0;
}

static enum MHD_Result
s_respond (http_req_t *req)
{
    struct MHD_Response *r;
    if (req->have_head) {
        r = MHD_create_response_from_callback (MHD_SIZE_UNKNOWN, 16 * 1024, s_read_stream, req, NULL);
        MHD_add_response_header (r, "Cache-Control", "no-cache");
        //  Tell buffering proxies in front of us (nginx) to pass events through.
        MHD_add_response_header (r, "X-Accel-Buffering", "no");
    }
    else {
        size_t len = req->out.len;
        r = MHD_create_response_from_buffer (len, gw_buf_take (&req->out), MHD_RESPMEM_MUST_FREE);
    }
    MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE,
                             req->content_type[0] ? req->content_type : "application/json");
    MHD_add_response_header (r, "x-request-id", req->request_id);
    enum MHD_Result rc = MHD_queue_response (req->conn, req->status, r);
    MHD_destroy_response (r);
    return rc;
}

/* ---- routes ---- */

static enum MHD_Result
s_submit_chat (http_front_t *self, http_req_t *req)
{
    chat_request_t chat;
    if (req->too_large)
        return s_reply_error (req->conn, 413, "invalid_request_error", "request_too_large",
                              req->request_id, "Request body too large: the limit is %zu bytes",
                              self->config.max_body_bytes);
    if (chat_request_parse (req->body.data ? req->body.data : "", req->body.len, &chat))
        return s_reply (req->conn, (unsigned) chat.status, "application/json", chat.error,
                        req->request_id);
    if (dispatcher_pool_knows_model (self->pool, chat.model) == 0)
        return s_reply (req->conn, 400, "application/json",
                        gw_error_json ("invalid_request_error", "invalid_request_error", NULL,
                                       "Model Not Exist"),
                        req->request_id);
    req->job = dispatcher_pool_submit (self->pool, req, req->request_id, chat.model, chat.stream,
                                       chat.client_usage, req->body.data, req->body.len);
    if (!req->job)
        return s_reply_error (req->conn, 500, "api_error", NULL, req->request_id, "out of memory");
    req->submitted = true;
    gw_buf_free (&req->body);
    //  The pool may have ended the job already (never today, but cheap to honour).
    if (!req->ended && !req->have_head) {
        req->suspended = true;
        MHD_suspend_connection (req->conn);
    }
    return MHD_YES;
}

static enum MHD_Result
s_get (http_front_t *self, struct MHD_Connection *conn, const char *url)
{
    if (strcmp (url, "/health") == 0)
        return s_reply (conn, 200, "application/json", strdup ("{\"status\":\"ok\"}"), NULL);
    if (strcmp (url, "/ready") == 0) {
        bool ready = dispatcher_pool_ready (self->pool);
        return s_reply (conn, ready ? 200 : 503, "application/json",
                        strdup (ready ? "{\"status\":\"ready\"}" : "{\"status\":\"no dispatcher\"}"), NULL);
    }
    json_t *models = dispatcher_pool_models (self->pool);
    char *body = json_dumps (models, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (models);
    return s_reply (conn, 200, "application/json", body, NULL);
}

typedef enum { ROUTE_NONE, ROUTE_CHAT, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_USAGE } route_t;

static route_t
s_route (const char *url)
{
    if (strcmp (url, "/v1/chat/completions") == 0 || strcmp (url, "/chat/completions") == 0)
        return ROUTE_CHAT;
    if (strcmp (url, "/v1/models") == 0 || strcmp (url, "/models") == 0)
        return ROUTE_MODELS;
    if (strcmp (url, "/health") == 0 || strcmp (url, "/ready") == 0)
        return ROUTE_HEALTH;
    if (strcmp (url, "/v1/usage") == 0)
        return ROUTE_USAGE;
    return ROUTE_NONE;
}

static http_req_t *
s_req_new (http_front_t *self, struct MHD_Connection *conn)
{
    http_req_t *req = calloc (1, sizeof *req);
    if (!req)
        return NULL;
    req->front = self;
    req->conn = conn;
    req->next = self->reqs;
    if (self->reqs)
        self->reqs->prev = req;
    self->reqs = req;
    self->active++;
    gw_id_uuid (req->request_id);
    return req;
}

/*  GET /v1/usage?period=&group_by=&from=&to=: asked of accounting, answered
    when it replies (the connection waits suspended meanwhile). */
static enum MHD_Result
s_ask_usage (http_front_t *self, http_req_t *req)
{
    if (!self->reports)
        return s_reply_error (req->conn, 503, "api_error", "accounting_unavailable", req->request_id,
                              "Usage reports need the accounting service (set GW_ACCOUNTING_ENDPOINTS).");
    const char *period = MHD_lookup_connection_value (req->conn, MHD_GET_ARGUMENT_KIND, "period");
    const char *group_by = MHD_lookup_connection_value (req->conn, MHD_GET_ARGUMENT_KIND, "group_by");
    const char *from = MHD_lookup_connection_value (req->conn, MHD_GET_ARGUMENT_KIND, "from");
    const char *to = MHD_lookup_connection_value (req->conn, MHD_GET_ARGUMENT_KIND, "to");
    gw_report_request_t ask = { .period = (char *) (period ? period : "today"),
                                .group_by = (char *) (group_by ? group_by : "none"),
                                .api_key_id = "" };
    int64_t from_ms = 0, to_ms = 0;
    if (from || to) {
        if (gw_time_parse_ms (from, &from_ms) || gw_time_parse_ms (to, &to_ms) || from_ms < 0 || to_ms <= from_ms)
            return s_reply_error (req->conn, 400, "invalid_request_error", "invalid_period", req->request_id,
                                  "from and to must both be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC), "
                                  "from before to, not before 1970");
        ask.period = "custom";
        ask.from_ms = (uint64_t) from_ms;
        ask.to_ms = (uint64_t) to_ms;
    }
    req->submitted = true;
    req->report_pending = true;
    report_client_ask (self->reports, req, &ask);
    if (!req->ended) {
        req->suspended = true;
        MHD_suspend_connection (req->conn);
    }
    return MHD_YES;
}

static enum MHD_Result
s_on_request (void *cls, struct MHD_Connection *conn, const char *url, const char *method,
              const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void) version;
    http_front_t *self = cls;
    http_req_t *req = *con_cls;
    if (!req) {
        route_t route = s_route (url);
        bool post = strcmp (method, "POST") == 0, get = strcmp (method, "GET") == 0;
        if (route == ROUTE_NONE)
            return s_reply_error (conn, 404, "invalid_request_error", "unknown_url", NULL,
                                  "Invalid URL (%s %s)", method, url);
        if (route != ROUTE_CHAT) {
            if (!get)
                return s_reply_error (conn, 405, "invalid_request_error", "method_not_allowed", NULL,
                                      "Method %s not allowed on %s", method, url);
            if (route != ROUTE_USAGE)
                return s_get (self, conn, url);
            if (!(req = s_req_new (self, conn)))
                return MHD_NO;
            *con_cls = req;
            return s_ask_usage (self, req);
        }
        if (!post)
            return s_reply_error (conn, 405, "invalid_request_error", "method_not_allowed", NULL,
                                  "Method %s not allowed on %s", method, url);
        if (!(req = s_req_new (self, conn)))
            return MHD_NO;
        *con_cls = req;
        //  Refuse an announced oversize body before reading any of it (and before
        //  MHD answers "100 Continue").
        const char *cl = MHD_lookup_connection_value (conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull (cl, NULL, 10) > self->config.max_body_bytes) {
            req->too_large = true;
            return s_submit_chat (self, req);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        //  A chunked body has no length up front: count it as it arrives.
        if (!req->too_large) {
            if (req->body.len + *upload_data_size > self->config.max_body_bytes) {
                req->too_large = true;
                gw_buf_free (&req->body);
            }
            else if (gw_buf_append (&req->body, upload_data, *upload_data_size))
                return MHD_NO;
        }
        //  MHD cannot answer in the middle of a body it is reading, so an oversize
        //  chunked body is discarded as it comes and answered 413 at its end.
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!req->submitted)
        return s_submit_chat (self, req);
    //  Resumed by the pool: a stream started or the answer is complete.
    return s_respond (req);
}

static void
s_on_completed (void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void) conn;
    http_front_t *self = cls;
    http_req_t *req = *con_cls;
    if (!req)
        return;
    if (req->job) {
        gw_info ("http", "client went away request_id=%s reason=%d", req->request_id, (int) toe);
        dispatcher_pool_cancel (self->pool, req->job);
    }
    if (req->report_pending)
        report_client_forget (self->reports, req);
    if (req->prev)
        req->prev->next = req->next;
    else
        self->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    self->active--;
    gw_buf_free (&req->body);
    gw_buf_free (&req->out);
    free (req);
    *con_cls = NULL;
}

static void
s_mhd_log (void *cls, const char *fmt, va_list ap)
{
    (void) cls;
    char line[512];
    vsnprintf (line, sizeof line, fmt, ap);
    line[strcspn (line, "\n")] = 0;
    gw_warn ("mhd", "%s", line);
}

/* ---- loop integration ---- */

static void
s_on_epoll (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) loop, (void) fd, (void) events;
    http_front_t *self = arg;
    self->run_needed = false;
    MHD_run (self->daemon);
}

static int
s_prepare (gw_loop_t *loop, void *arg)
{
    (void) loop;
    http_front_t *self = arg;
    //  MHD also needs a turn when its own timeout is due: that is how it finishes
    //  writes to sockets it already knows are writable, and times out idle ones.
    MHD_UNSIGNED_LONG_LONG timeout;
    bool has_timeout = MHD_get_timeout (self->daemon, &timeout) == MHD_YES;
    if (self->run_needed || (has_timeout && timeout == 0)) {
        self->run_needed = false;
        MHD_run (self->daemon);
        has_timeout = MHD_get_timeout (self->daemon, &timeout) == MHD_YES;
    }
    if (has_timeout)
        return timeout > 60000 ? 60000 : (int) timeout;
    return -1;
}

http_front_t *
http_front_new (gw_loop_t *loop, dispatcher_pool_t *pool, report_client_t *reports, const http_config_t *config)
{
    http_front_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->pool = pool;
    self->reports = reports;
    self->config = *config;
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) config->port) };
    if (inet_pton (AF_INET, config->host, &addr.sin_addr) != 1) {
        gw_error ("http", "invalid listen address host=%s", config->host);
        free (self);
        return NULL;
    }
    //  LISTENING_ADDRESS_REUSE sets SO_REUSEPORT: several ingress processes can
    //  share one port and the kernel spreads connections between them.
    self->daemon = MHD_start_daemon (
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, (uint16_t) config->port, NULL,
        NULL, s_on_request, self, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED,
        s_on_completed, self, MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 65536,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) config->idle_timeout_s,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int) 1, MHD_OPTION_END);
    if (!self->daemon) {
        gw_error ("http", "cannot start HTTP server host=%s port=%d", config->host, config->port);
        free (self);
        return NULL;
    }
    self->epoll_fd = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
    gw_loop_watch (loop, self->epoll_fd, EPOLLIN, s_on_epoll, self);
    gw_loop_set_prepare (loop, s_prepare, self);
    return self;
}

void
http_front_quiesce (http_front_t *self)
{
    if (self->quiesced)
        return;
    self->quiesced = true;
    //  MHD stops accepting and hands the listening socket back; closing it lets
    //  another ingress on the same port (SO_REUSEPORT) take the new connections.
    int fd = MHD_quiesce_daemon (self->daemon);
    if (fd >= 0)
        close (fd);
    gw_info ("http", "no longer accepting connections active=%zu", self->active);
}

size_t
http_front_active (http_front_t *self)
{
    return self->active;
}

void
http_front_destroy (http_front_t **self_p)
{
    http_front_t *self = *self_p;
    if (!self)
        return;
    http_front_quiesce (self);
    //  MHD refuses to stop with suspended connections: answer each one (503, or
    //  an SSE error event for a stream already started) and let MHD flush it.
    for (http_req_t *req = self->reqs; req; req = req->next) {
        //  A stream still flowing would suspend again in the runs below: end
        //  it too. A request not yet answered is answered only if suspended.
        if (req->ended || (!req->suspended && !req->have_head))
            continue;
        char *body;
        if (req->have_head)
            body = gw_error_sse ("api_error", "shutting_down",
                                 "The gateway is shutting down; the answer is incomplete.");
        else {
            body = gw_error_json ("api_error", "shutting_down", NULL,
                                  "The gateway is shutting down; please retry.");
            req->status = 503;
            snprintf (req->content_type, sizeof req->content_type, "application/json");
        }
        if (body)
            gw_buf_append (&req->out, body, strlen (body));
        free (body);
        req->ended = true;
        s_wake (req);
    }
    for (int i = 0; i < 3; i++)
        MHD_run (self->daemon);
    gw_loop_unwatch (self->loop, self->epoll_fd);
    gw_loop_set_prepare (self->loop, NULL, NULL);
    MHD_stop_daemon (self->daemon);
    free (self);
    *self_p = NULL;
}

int
http_front_port (http_front_t *self)
{
    return MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_BIND_PORT)->port;
}
