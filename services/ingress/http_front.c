/*  http_front.c: HTTP routes, keys and admission, suspended connections, stream relay. */
#include "http_front.h"
#include "chat_request.h"
#include "gw_apikey.h"
#include "gw_buf.h"
#include "gw_error.h"
#include "gw_id.h"
#include "gw_log.h"
#include "gw_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

struct http_front_t {
    gw_loop_t *loop;
    dispatcher_pool_t *pool;
    control_client_t *control;
    key_cache_t *keys;
    http_config_t config;
    struct MHD_Daemon *daemon;
    int epoll_fd;
    bool run_needed;  //  a connection was resumed: MHD_run before sleeping
    bool quiesced;  //  no longer accepting connections
    struct http_req_t *reqs;  //  every request alive, for shutdown
    size_t active;
};

typedef enum { ROUTE_NONE, ROUTE_CHAT, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_USAGE, ROUTE_ADMIN } route_t;

typedef struct http_req_t {
    http_front_t *front;
    struct http_req_t *prev, *next;
    struct MHD_Connection *conn;
    route_t route;
    char method[8];
    char *url;  //  admin routes: forwarded as is
    char request_id[37];
    gw_buf_t body;  //  request body as it arrives
    bool too_large;
    bool body_done;  //  the whole body is in (or none was expected)
    //  Who is asking.
    bool admin;  //  presented the admin key
    bool auth_waiting;  //  the key's lookup is in flight
    bool key_known;  //  the key checked out (or keys are off)
    key_waiter_t waiter;
    uint64_t key_id;
    bool key_admit;
    uint32_t key_cache_ttl_s;
    gw_strlist_t key_models;
    //  The chat request, once its body parsed.
    bool parsed;
    chat_request_t chat;
    uint64_t question;  //  correlation of an ADMIT, ADMIN or REPORT question in flight
    bool admitted;
    gw_admit_reply_t limits;  //  rate figures for the headers (strings not kept)
    bool have_limits;
    //  The response cache: what this request asks of it, and whether its
    //  answer came from there (the x-gateway-cache header says which).
    pool_cache_t cache;
    bool cache_bypass;
    bool cached;
    pool_job_t *job;  //  set while the pool may call us
    bool suspended;
    bool have_head;  //  a stream started: status and type are sent
    bool ended;  //  no more bytes will come
    uint32_t status;
    char content_type[96];
    bool dispatched;  //  handed to the pool: an upstream call may have been made
    bool cost_known;
    uint64_t cost_pico;
    char currency[8];
    struct MHD_Response *stream;  //  the stream's response, for its trailers
    gw_buf_t out;  //  bytes for the client not yet handed to MHD
    size_t out_off;  //  how much of out MHD already took
    uint64_t chunk_bytes;  //  CHUNK bytes received: what the client took is this minus out's rest
} http_req_t;

/*  Said to every unknown, revoked or expired key alike: nothing in it depends on
    which, so the answer tells a guesser nothing. */
#define INVALID_KEY_MESSAGE "Invalid API key. Check the key, or ask your gateway operator for a new one."

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

/*  The request's answer is decided: body (taken over) is all of it. */
static void
s_finish (http_req_t *req, uint32_t status, char *body)
{
    req->status = status;
    snprintf (req->content_type, sizeof req->content_type, "application/json");
    req->out.len = req->out_off = 0;
    if (body)
        gw_buf_append (&req->out, body, strlen (body));
    free (body);
    req->ended = true;
    s_wake (req);
}

static void
s_finish_error (http_req_t *req, uint32_t status, const char *type, const char *code, const char *param,
                const char *fmt, ...) __attribute__ ((format (printf, 6, 7)));

static void
s_finish_error (http_req_t *req, uint32_t status, const char *type, const char *code, const char *param,
                const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (message, sizeof message, fmt, ap);
    va_end (ap);
    s_finish (req, status, gw_error_json (type, code, param, "%s", message));
}

static void
s_finish_invalid_key (http_req_t *req)
{
    s_finish_error (req, 401, "authentication_error", "invalid_api_key", NULL, INVALID_KEY_MESSAGE);
}

/*  An exact decimal of pico-units: at least 2 decimals, no trailing zeros beyond. */
static void
s_money (uint64_t pico, char *out, size_t size)
{
    char frac[13];
    snprintf (frac, sizeof frac, "%012" PRIu64, (uint64_t) (pico % 1000000000000ull));
    int keep = 12;
    while (keep > 2 && frac[keep - 1] == '0')
        keep--;
    snprintf (out, size, "%" PRIu64 ".%.*s", (uint64_t) (pico / 1000000000000ull), keep, frac);
}

/*  "1s", "6m0s", "250ms": the OpenAI x-ratelimit-reset-* style. */
static void
s_duration (uint64_t ms, char *out, size_t size)
{
    uint64_t s = (ms + 999) / 1000;  //  whole seconds first, so 119.5 s reads 2m0s
    if (ms < 1000)
        snprintf (out, size, "%" PRIu64 "ms", ms);
    else if (s < 60)
        snprintf (out, size, "%" PRIu64 "s", s);
    else
        snprintf (out, size, "%" PRIu64 "m%" PRIu64 "s", s / 60, s % 60);
}

static void
s_add_u64 (struct MHD_Response *r, const char *name, uint64_t v)
{
    char text[24];
    snprintf (text, sizeof text, "%" PRIu64, v);
    MHD_add_response_header (r, name, text);
}

/*  Headers every answer of a chat request gets from its admission and cost. */
static void
s_add_gateway_headers (http_req_t *req, struct MHD_Response *r)
{
    MHD_add_response_header (r, "x-request-id", req->request_id);
    if (req->dispatched && (req->cache.lookup || req->cache.ttl_s || req->cache_bypass))
        MHD_add_response_header (r, "x-gateway-cache",
                                 req->cached         ? "hit"
                                 : req->cache.lookup ? "miss"
                                 : req->cache.ttl_s  ? "refresh"
                                                     : "bypass");
    if (req->have_limits) {
        char text[32];
        if (req->limits.rpm_limit) {
            s_add_u64 (r, "x-ratelimit-limit-requests", req->limits.rpm_limit);
            s_add_u64 (r, "x-ratelimit-remaining-requests", req->limits.rpm_remaining);
            s_duration (req->limits.rpm_reset_ms, text, sizeof text);
            MHD_add_response_header (r, "x-ratelimit-reset-requests", text);
        }
        if (req->limits.tpm_limit) {
            s_add_u64 (r, "x-ratelimit-limit-tokens", req->limits.tpm_limit);
            s_add_u64 (r, "x-ratelimit-remaining-tokens", req->limits.tpm_remaining);
            s_duration (req->limits.tpm_reset_ms, text, sizeof text);
            MHD_add_response_header (r, "x-ratelimit-reset-tokens", text);
        }
        if (req->status == 429 && req->limits.retry_after_ms) {
            s_add_u64 (r, "Retry-After", (req->limits.retry_after_ms + 999) / 1000);
            s_add_u64 (r, "retry-after-ms", req->limits.retry_after_ms);
        }
    }
}

/* ---- callbacks from the dispatcher pool ---- */

static void
s_pool_head (void *client, uint32_t status, const char *content_type, bool cached)
{
    http_req_t *req = client;
    req->have_head = true;
    req->cached = cached;
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
    req->chunk_bytes += size;
    s_wake (req);
}

static void
s_pool_end (void *client, uint32_t status, const char *content_type, const uint8_t *body, size_t size,
            const gw_end_t *info)
{
    http_req_t *req = client;
    req->job = NULL;
    req->ended = true;
    if (!req->have_head) {
        req->status = status;
        snprintf (req->content_type, sizeof req->content_type, "%s", content_type);
    }
    if (gw_buf_append (&req->out, body, size))
        gw_error ("http", "out of memory request_id=%s", req->request_id);
    if (info && info->cached)
        req->cached = true;
    if (info && info->cost_known) {
        req->cost_known = true;
        req->cost_pico = info->cost_pico;
        snprintf (req->currency, sizeof req->currency, "%s", info->currency);
        if (req->have_head) {
            //  A stream's headers are long gone: the cost closes the stream as an
            //  SSE comment (clients skip comments) and as an HTTP trailer.
            char money[40], line[96];
            s_money (req->cost_pico, money, sizeof money);
            int n = snprintf (line, sizeof line, ": x-gateway-cost=%s %s\n\n", money, req->currency);
            gw_buf_append (&req->out, line, (size_t) n);
        }
    }
    s_wake (req);
}

const pool_client_fns_t http_front_pool_fns = { s_pool_head, s_pool_chunk, s_pool_end };

/*  The pool is done with an admitted request's job: accounting frees its
    concurrency slot now and settles its budget once its usage is stored. */
static void
s_on_job_done (void *arg, const char *request_id, uint64_t api_key_id, bool dispatched, uint32_t dispatch,
               uint32_t attempts)
{
    //  The control client, not the front: the pool outlives the front at shutdown.
    control_client_release (arg, request_id, api_key_id, dispatched, dispatch, attempts);
}

/* ---- the stream relay ---- */

/*  MHD took bytes of a stream: the pool tells its dispatcher (which pauses a
    stream a window ahead of what the client took) when it is time. */
static void
s_stream_taken (http_req_t *req)
{
    if (!req->job)
        return;
    uint64_t pending = req->out.len - req->out_off;
    if (req->chunk_bytes > pending)
        dispatcher_pool_stream_taken (req->front->pool, req->job, req->chunk_bytes - pending);
}

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
        s_stream_taken (req);
        //  Rewind instead of shifting bytes: the reader usually empties the buffer.
        if (req->out_off == req->out.len)
            req->out_off = req->out.len = 0;
        return (ssize_t) n;
    }
    if (req->ended) {
        if (req->cost_known && req->stream) {
            char money[40];
            s_money (req->cost_pico, money, sizeof money);
            MHD_add_response_footer (req->stream, "x-gateway-cost", money);
            MHD_add_response_footer (req->stream, "x-gateway-currency", req->currency);
        }
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
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
        //  4 KiB: MHD keeps a buffer of this size per stream, and an SSE
        //  event is a few hundred bytes (16 KiB cost 10,000 streams 120 MB).
        r = MHD_create_response_from_callback (MHD_SIZE_UNKNOWN, 4 * 1024, s_read_stream, req, NULL);
        MHD_add_response_header (r, "Cache-Control", "no-cache");
        //  Tell buffering proxies in front of us (nginx) to pass events through.
        MHD_add_response_header (r, "X-Accel-Buffering", "no");
        if (req->route == ROUTE_CHAT)
            MHD_add_response_header (r, "Trailer", "x-gateway-cost, x-gateway-currency");
        req->stream = r;
    }
    else {
        size_t len = req->out.len;
        r = MHD_create_response_from_buffer (len, gw_buf_take (&req->out), MHD_RESPMEM_MUST_FREE);
        //  A chat request refused before any upstream call cost nothing, and
        //  says so; one whose calls could not all be priced says nothing.
        if (req->route == ROUTE_CHAT && !req->cost_known && !req->dispatched) {
            req->cost_known = true;
            req->cost_pico = 0;
            snprintf (req->currency, sizeof req->currency, "%s", req->front->config.currency);
        }
        if (req->cost_known) {
            char money[40];
            s_money (req->cost_pico, money, sizeof money);
            MHD_add_response_header (r, "x-gateway-cost", money);
            MHD_add_response_header (r, "x-gateway-currency", req->currency);
        }
    }
    MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE,
                             req->content_type[0] ? req->content_type : "application/json");
    s_add_gateway_headers (req, r);
    enum MHD_Result rc = MHD_queue_response (req->conn, req->status, r);
    MHD_destroy_response (r);
    return rc;
}

/*  End of a handler turn: answer now if the answer is known, else wait. */
static enum MHD_Result
s_settle (http_req_t *req)
{
    if (req->ended || req->have_head)
        return s_respond (req);
    if (!req->suspended) {
        req->suspended = true;
        MHD_suspend_connection (req->conn);
    }
    return MHD_YES;
}

/* ---- chat: key, admission, dispatch ---- */

static void
s_dispatch (http_req_t *req)
{
    http_front_t *self = req->front;
    req->dispatched = true;
    req->job = dispatcher_pool_submit (self->pool, req, req->request_id, req->chat.model, req->chat.stream,
                                       req->chat.client_usage, req->body.data ? req->body.data : "",
                                       req->body.len, req->key_id, req->admitted, req->cache);
    gw_buf_free (&req->body);
    if (!req->job) {
        if (req->admitted)
            control_client_release (self->control, req->request_id, req->key_id, false, 0, 0);
        s_finish_error (req, 500, "api_error", NULL, NULL, "out of memory");
    }
}

static void
s_on_admit (void *client, const gw_msg_t *reply)
{
    http_req_t *req = client;
    req->question = 0;
    if (!reply) {
        s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL,
                        "The gateway could not check this key's limits in time; please retry.");
        return;
    }
    const gw_admit_reply_t *a = &reply->admit_reply;
    req->limits = *a;
    req->limits.code = req->limits.message = NULL;  //  not kept past this call
    req->have_limits = true;
    if (a->status == 200) {
        req->admitted = true;
        s_dispatch (req);
    }
    else if (a->status == 429) {
        s_finish_error (req, 429, "rate_limit_error", a->code[0] ? a->code : "rate_limit_exceeded", NULL, "%s",
                        a->message[0] ? a->message : "Rate limit reached for this key.");
    }
    else if (a->status == 401)
        s_finish_invalid_key (req);
    else
        s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL, "%s",
                        a->message[0] ? a->message : "The gateway could not check this key's limits.");
}

/*  What the request asks of the dispatchers' response cache (docs/cache.md):
    X-Gateway-Cache use | refresh | bypass, X-Gateway-Cache-TTL seconds (alone,
    it opts in), else the key's opt-in for deterministic requests. Returns 0, or
    -1 when a header is malformed (the request is answered 400). */
static int
s_cache_policy (http_req_t *req)
{
    const char *mode = MHD_lookup_connection_value (req->conn, MHD_HEADER_KIND, "X-Gateway-Cache");
    const char *ttl_text = MHD_lookup_connection_value (req->conn, MHD_HEADER_KIND, "X-Gateway-Cache-TTL");
    uint32_t ttl = req->key_cache_ttl_s ? req->key_cache_ttl_s : req->front->config.cache_ttl_s;
    if (ttl_text) {
        char *end;
        errno = 0;
        long long v = strtoll (ttl_text, &end, 10);
        if (end == ttl_text || *end || errno || v < 1 || v > CACHE_TTL_MAX_S) {
            s_finish_error (req, 400, "invalid_request_error", "invalid_cache_ttl", "x-gateway-cache-ttl",
                            "X-Gateway-Cache-TTL must be a whole number of seconds from 1 to %d.", CACHE_TTL_MAX_S);
            return -1;
        }
        ttl = (uint32_t) v;
    }
    if (!mode) {
        if (ttl_text)
            req->cache = (pool_cache_t) { true, ttl };
        else if (req->key_cache_ttl_s && req->chat.deterministic)
            req->cache = (pool_cache_t) { true, req->key_cache_ttl_s };
    }
    else if (strcasecmp (mode, "use") == 0)
        req->cache = (pool_cache_t) { true, ttl };
    else if (strcasecmp (mode, "refresh") == 0)
        req->cache = (pool_cache_t) { false, ttl };
    else if (strcasecmp (mode, "bypass") == 0)
        req->cache_bypass = true;
    else {
        s_finish_error (req, 400, "invalid_request_error", "invalid_cache_mode", "x-gateway-cache",
                        "X-Gateway-Cache must be use, refresh or bypass.");
        return -1;
    }
    return 0;
}

/*  The key is good and the body parsed: check the model, admit, dispatch. */
static void
s_chat_go (http_req_t *req)
{
    http_front_t *self = req->front;
    if (s_cache_policy (req))
        return;
    if (dispatcher_pool_knows_model (self->pool, req->chat.model) == 0) {
        s_finish (req, 400, gw_error_json ("invalid_request_error", "invalid_request_error", NULL, "Model Not Exist"));
        return;
    }
    key_info_t info = { .models = req->key_models };
    if (!key_info_allows (&info, req->chat.model)) {
        s_finish_error (req, 403, "permission_error", "model_not_allowed", "model",
                        "This key may not use the model %s.", req->chat.model);
        return;
    }
    if (!req->key_admit) {
        s_dispatch (req);
        return;
    }
    gw_msg_t msg = { .id = GW_MSG_ADMIT };
    msg.admit = (gw_admit_t) { .request_id = req->request_id, .key_id = req->key_id, .model = req->chat.model,
                               .prompt_tokens = req->chat.prompt_tokens, .max_tokens = req->chat.max_tokens };
    req->question = control_client_ask (self->control, &msg, s_on_admit, req);
    if (!req->question)
        s_finish_error (req, 500, "api_error", NULL, NULL, "out of memory");
}

static void s_route_go (http_req_t *req);

static void
s_take_key (http_req_t *req, const key_info_t *info)
{
    req->key_known = true;
    req->key_id = info->key_id;
    req->key_admit = info->admit;
    req->key_cache_ttl_s = info->cache_ttl_s;
    gw_strlist_clear (&req->key_models);
    for (size_t i = 0; i < info->models.count; i++)
        gw_strlist_append (&req->key_models, info->models.items[i]);
}

static void
s_on_key (void *client, key_status_t status, const key_info_t *info)
{
    http_req_t *req = client;
    req->auth_waiting = false;
    if (status == KEY_VALID) {
        s_take_key (req, info);
        //  Still reading the body: the route goes on when it is complete.
        if (req->body_done)
            s_route_go (req);
    }
    else if (status == KEY_INVALID)
        s_finish_invalid_key (req);
    else
        s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL,
                        "The gateway could not check this key in time; please retry.");
}

/*  Who is asking: the admin key, a gateway key (checked now or later), or
    nobody when keys are off. Ends the request on a missing or bad key. */
static void
s_authenticate (http_req_t *req)
{
    http_front_t *self = req->front;
    const char *auth = MHD_lookup_connection_value (req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *key = NULL;
    if (auth && strncasecmp (auth, "Bearer ", 7) == 0) {
        key = auth + 7;
        while (*key == ' ')
            key++;
    }
    size_t len = key ? strlen (key) : 0;
    if (len && self->config.admin_key
        && gw_apikey_equal (key, len, self->config.admin_key, strlen (self->config.admin_key))) {
        req->admin = req->key_known = true;
        return;
    }
    if (req->route == ROUTE_ADMIN) {
        if (!self->config.admin_key)
            s_finish_error (req, 403, "permission_error", "admin_disabled", NULL,
                            "The admin API is disabled on this gateway (GW_ADMIN_KEY is not set).");
        else if (!len)
            s_finish_error (req, 401, "authentication_error", "missing_api_key", NULL,
                            "No API key provided. Send the admin key as 'Authorization: Bearer <key>'.");
        else
            s_finish_invalid_key (req);
        return;
    }
    if (!self->config.auth) {
        req->key_known = true;
        return;
    }
    if (!len) {
        s_finish_error (req, 401, "authentication_error", "missing_api_key", NULL,
                        "No API key provided. Send it as 'Authorization: Bearer <key>'.");
        return;
    }
    const key_info_t *info = NULL;
    switch (key_cache_check (self->keys, key, len, &req->waiter, s_on_key, req, &info)) {
    case KEY_VALID:
        s_take_key (req, info);
        break;
    case KEY_PENDING:
        req->auth_waiting = true;
        break;
    case KEY_INVALID:
        s_finish_invalid_key (req);
        break;
    case KEY_UNAVAILABLE:
        s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL,
                        "The gateway could not check this key; please retry.");
        break;
    }
}

/* ---- the other routes ---- */

static void
s_on_answer (void *client, const gw_msg_t *reply)
{
    http_req_t *req = client;
    req->question = 0;
    if (!reply) {
        s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL,
                        "No accounting instance answered in time.");
        return;
    }
    const gw_bin_t *body = reply->id == GW_MSG_ADMIN_REPLY ? &reply->admin_reply.body : &reply->report_reply.body;
    uint32_t status = reply->id == GW_MSG_ADMIN_REPLY ? reply->admin_reply.status : reply->report_reply.status;
    char *copy = malloc (body->size + 1);
    if (copy) {
        memcpy (copy, body->data ? (const char *) body->data : "", body->size);
        copy[body->size] = 0;
    }
    s_finish (req, status, copy);
}

static bool
s_need_control (http_req_t *req)
{
    if (req->front->control)
        return true;
    s_finish_error (req, 503, "api_error", "accounting_unavailable", NULL,
                    "This needs the accounting service (set GW_CONTROL_ENDPOINTS).");
    return false;
}

/*  GET /v1/usage?period=&group_by=&from=&to=&api_key_id=: a gateway key sees
    its own usage only; the admin key (or anyone, with keys off) sees all. */
static void
s_usage_go (http_req_t *req)
{
    if (!s_need_control (req))
        return;
    struct MHD_Connection *conn = req->conn;
    const char *period = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "period");
    const char *group_by = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "group_by");
    const char *from = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "from");
    const char *to = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "to");
    const char *asked_key = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "api_key_id");
    char own[24] = "";
    if (req->key_id)
        snprintf (own, sizeof own, "%" PRIu64, req->key_id);
    if (asked_key && asked_key[0]) {
        char *end;
        unsigned long long n = strtoull (asked_key, &end, 10);
        if (*end || n == 0) {
            s_finish_error (req, 400, "invalid_request_error", "invalid_api_key_id", "api_key_id",
                            "api_key_id must be a key id (a positive integer).");
            return;
        }
        if (req->key_id && n != req->key_id) {
            s_finish_error (req, 403, "permission_error", "permission_denied", "api_key_id",
                            "A key may only read its own usage.");
            return;
        }
        snprintf (own, sizeof own, "%llu", n);
    }
    gw_msg_t msg = { .id = GW_MSG_REPORT_REQUEST };
    msg.report_request = (gw_report_request_t) { .period = (char *) (period ? period : "today"),
                                                 .group_by = (char *) (group_by ? group_by : "none"),
                                                 .api_key_id = own };
    int64_t from_ms = 0, to_ms = 0;
    if (from || to) {
        if (gw_time_parse_ms (from, &from_ms) || gw_time_parse_ms (to, &to_ms) || from_ms < 0 || to_ms <= from_ms) {
            s_finish_error (req, 400, "invalid_request_error", "invalid_period", NULL,
                            "from and to must both be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC), "
                            "from before to, not before 1970");
            return;
        }
        msg.report_request.period = "custom";
        msg.report_request.from_ms = (uint64_t) from_ms;
        msg.report_request.to_ms = (uint64_t) to_ms;
    }
    req->question = control_client_ask (req->front->control, &msg, s_on_answer, req);
    if (!req->question)
        s_finish_error (req, 500, "api_error", NULL, NULL, "out of memory");
}

static void
s_admin_go (http_req_t *req)
{
    if (!s_need_control (req))
        return;
    if (req->too_large) {
        s_finish_error (req, 413, "invalid_request_error", "request_too_large", NULL, "Request body too large.");
        return;
    }
    gw_msg_t msg = { .id = GW_MSG_ADMIN_REQUEST };
    msg.admin_request = (gw_admin_request_t) { .method = req->method, .path = req->url,
                                               .body = { (uint8_t *) req->body.data, req->body.len } };
    req->question = control_client_ask (req->front->control, &msg, s_on_answer, req);
    gw_buf_free (&req->body);
    if (!req->question)
        s_finish_error (req, 500, "api_error", NULL, NULL, "out of memory");
}

static void
s_models_go (http_req_t *req)
{
    json_t *models = dispatcher_pool_models (req->front->pool);
    if (req->key_models.count) {
        //  A key limited to some models is told only about those.
        json_t *data = json_object_get (models, "data");
        for (size_t i = json_array_size (data); i-- > 0;) {
            key_info_t info = { .models = req->key_models };
            if (!key_info_allows (&info, json_string_value (json_object_get (json_array_get (data, i), "id"))))
                json_array_remove (data, i);
        }
    }
    s_finish (req, 200, json_dumps (models, JSON_COMPACT | JSON_PRESERVE_ORDER));
    json_decref (models);
}

/*  The caller is known and the body is in: do what the route says. */
static void
s_route_go (http_req_t *req)
{
    switch (req->route) {
    case ROUTE_CHAT:
        if (req->admin)
            //  The admin key has no budget, limits or usage of its own: chat
            //  traffic always goes through a gateway key, so it is counted.
            s_finish_error (req, 403, "permission_error", "admin_key_not_for_chat", NULL,
                            "The admin key cannot make chat requests; create a gateway key for that.");
        else if (req->too_large)
            s_finish_error (req, 413, "invalid_request_error", "request_too_large", NULL,
                            "Request body too large: the limit is %zu bytes", req->front->config.max_body_bytes);
        else if (!req->parsed) {
            if (chat_request_parse (req->body.data ? req->body.data : "", req->body.len, &req->chat)) {
                s_finish (req, (uint32_t) req->chat.status, req->chat.error);
                req->chat.error = NULL;
            }
            else {
                req->parsed = true;
                s_chat_go (req);
            }
        }
        break;
    case ROUTE_MODELS:
        s_models_go (req);
        break;
    case ROUTE_USAGE:
        s_usage_go (req);
        break;
    case ROUTE_ADMIN:
        s_admin_go (req);
        break;
    default:
        s_finish_error (req, 404, "invalid_request_error", "unknown_url", NULL, "Invalid URL");
    }
}

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
    if (strncmp (url, "/admin/", 7) == 0)
        return ROUTE_ADMIN;
    return ROUTE_NONE;
}

static enum MHD_Result
s_health (http_front_t *self, struct MHD_Connection *conn, const char *url)
{
    if (strcmp (url, "/health") == 0)
        return s_reply (conn, 200, "application/json", strdup ("{\"status\":\"ok\"}"), NULL);
    bool ready = dispatcher_pool_ready (self->pool);
    return s_reply (conn, ready ? 200 : 503, "application/json",
                    strdup (ready ? "{\"status\":\"ready\"}" : "{\"status\":\"no dispatcher\"}"), NULL);
}

static http_req_t *
s_req_new (http_front_t *self, struct MHD_Connection *conn, route_t route, const char *method, const char *url)
{
    http_req_t *req = calloc (1, sizeof *req);
    if (!req || !(req->url = strdup (url))) {
        free (req);
        return NULL;
    }
    req->front = self;
    req->conn = conn;
    req->route = route;
    snprintf (req->method, sizeof req->method, "%s", method);
    req->next = self->reqs;
    if (self->reqs)
        self->reqs->prev = req;
    self->reqs = req;
    self->active++;
    gw_id_uuid (req->request_id);
    return req;
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
        bool allowed = route == ROUTE_CHAT    ? post
                       : route == ROUTE_ADMIN ? post || get || strcmp (method, "PATCH") == 0
                                                    || strcmp (method, "DELETE") == 0
                                              : get;
        if (!allowed)
            return s_reply_error (conn, 405, "invalid_request_error", "method_not_allowed", NULL,
                                  "Method %s not allowed on %s", method, url);
        if (route == ROUTE_HEALTH)
            return s_health (self, conn, url);
        if (!(req = s_req_new (self, conn, route, method, url)))
            return MHD_NO;
        *con_cls = req;
        //  A bad key is answered only once the (bounded) body is read, like
        //  every other answer: answering before would close the connection,
        //  and that difference would tell a cached revoked key from an unknown one.
        s_authenticate (req);
        //  Refuse an announced oversize body before reading any of it (and before
        //  MHD answers "100 Continue").
        const char *cl = MHD_lookup_connection_value (conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull (cl, NULL, 10) > self->config.max_body_bytes) {
            req->too_large = true;
            req->body_done = true;
            if (!req->auth_waiting && !req->ended)
                s_route_go (req);
            return s_settle (req);
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
    if (!req->body_done) {
        req->body_done = true;
        //  A key still being looked up carries the route on when it is known.
        if (!req->auth_waiting && !req->ended)
            s_route_go (req);
        return s_settle (req);
    }
    //  Resumed: a stream started or the answer is complete.
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
    if (req->auth_waiting)
        key_cache_cancel (self->keys, &req->waiter);
    if (req->question)
        control_client_forget (self->control, req->question);
    if (req->prev)
        req->prev->next = req->next;
    else
        self->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    self->active--;
    gw_buf_free (&req->body);
    gw_buf_free (&req->out);
    gw_strlist_clear (&req->key_models);
    free (req->chat.error);
    free (req->url);
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
http_front_new (gw_loop_t *loop, dispatcher_pool_t *pool, control_client_t *control, key_cache_t *keys,
                const http_config_t *config)
{
    http_front_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->pool = pool;
    self->control = control;
    self->keys = keys;
    if (control)
        dispatcher_pool_on_done (pool, s_on_job_done, control);
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
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, config->conn_memory_bytes,
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
