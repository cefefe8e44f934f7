//  mock_server - the HTTP side of the mock: routes, auth, validation, faults and timed answers on libmicrohttpd.

#include "mock_upstream.h"
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

//  Request bodies above this get 413; real chat bodies are far smaller.
#define MOCK_BODY_MAX       (16 * 1024 * 1024)
//  Concurrent connections MHD accepts; the fd limit is raised to match in main.
#define MOCK_CONNECTION_LIMIT 65536
//  ids kept for times=N before the oldest is forgotten.
#define MOCK_FAULT_IDS      4096
//  Memory is per connection and 10,000 streams multiply it: MHD's pool
//  (headers, read and write buffers) drops from the default 32 KiB, which
//  still leaves room for ~8 KiB of request headers; the buffer MHD gives a
//  callback response is sized for a few frames (each < MOCK_FRAME_MAX).
#define MOCK_CONNECTION_POOL (16 * 1024)
#define MOCK_CALLBACK_BLOCK 2048

static const char s_models_body [] =
    "{\"object\":\"list\",\"data\":["
    "{\"id\":\"deepseek-chat\",\"object\":\"model\",\"owned_by\":\"deepseek\"},"
    "{\"id\":\"deepseek-reasoner\",\"object\":\"model\",\"owned_by\":\"deepseek\"}]}";

static const char s_balance_body [] =
    "{\"is_available\":true,\"balance_infos\":[{\"currency\":\"CNY\",\"total_balance\":\"110.00\","
    "\"granted_balance\":\"10.00\",\"topped_up_balance\":\"100.00\"}]}";

//  The models the mock serves; the same list /models returns.
static const struct {
    const char *name;
    bool reasoner;
} s_models [] = {
    { "deepseek-chat", false },
    { "deepseek-reasoner", true },
};

typedef enum {
    ROUTE_CHAT,
    ROUTE_MODELS,
    ROUTE_BALANCE,
    ROUTE_STATS,
    ROUTE_RESET,
    ROUTE_UNKNOWN
} s_route_t;

static const struct {
    const char *path;
    s_route_t route;
    const char *method;
} s_routes [] = {
    { "/chat/completions",    ROUTE_CHAT,    "POST" },
    { "/v1/chat/completions", ROUTE_CHAT,    "POST" },
    { "/models",              ROUTE_MODELS,  "GET" },
    { "/v1/models",           ROUTE_MODELS,  "GET" },
    { "/user/balance",        ROUTE_BALANCE, "GET" },
    { "/v1/user/balance",     ROUTE_BALANCE, "GET" },
    { "/mock/stats",          ROUTE_STATS,   "GET" },
    { "/mock/reset",          ROUTE_RESET,   "POST" },
};

struct _mock_server_t {
    mock_config_t *config;          //  borrowed
    struct MHD_Daemon *daemon;
    mock_timer_t *timer;            //  resumes suspended connections when due
    mock_faults_t *faults;          //  per-id counters for times=N
    atomic_bool stopping;           //  set first on destroy: no new suspensions
    int port;
    //  /mock/stats, API routes only so polling the stats does not move them
    atomic_long requests;
    atomic_long active;
    atomic_long completed;
    atomic_long aborted;
};

//  Where a request is in its life; MHD calls the access handler again after
//  the body and after each resume, and this tells those calls apart.
typedef enum {
    REQ_RECEIVING,      //  reading the body
    REQ_HOLDING,        //  answer built, held back (hold_ms) with no bytes sent
    REQ_ANSWERED        //  response queued; callback responses continue in s_read
} s_state_t;

//  One HTTP request, owned by MHD's per-request pointer and freed only in
//  s_completed. The timer never sees it: it holds the MHD connection, which
//  stays alive while suspended, so a client that vanished while its request
//  waited cannot make the timer touch freed memory.
typedef struct {
    mock_server_t *server;
    struct MHD_Connection *connection;
    s_route_t route;
    bool api;                       //  counted in /mock/stats
    s_state_t state;
    char *body;                     //  request body, NUL-terminated
    size_t body_len;
    size_t body_cap;
    bool body_too_large;

    //  Held answer (hold_ms, or non-streaming token_ms)
    struct MHD_Response *held;
    unsigned held_status;
    uint64_t release_at;

    //  Callback answer: a stream, or a JSON body after keep-alives or cut short
    bool stream;
    mock_directive_t directive;
    mock_completion_t answer;
    int first_byte_ms;
    uint64_t body_delay_ms;         //  non-stream: tokens x token_ms after first_byte_ms
    int token_ms;
    int keepalive_ms;               //  0: no keep-alives
    uint64_t body_at;               //  first data frame / JSON body due
    uint64_t keepalive_at;          //  next keep-alive, 0 when none
    int frame;                      //  next stream frame index
    int tokens_sent;                //  token frames sent
    char *json;                     //  non-stream body
    size_t json_len;
    bool json_sent;
    const char *pending;            //  bytes produced but not yet given to MHD
    size_t pending_len;
    char out [MOCK_FRAME_MAX];      //  the current stream frame
} s_request_t;

static s_request_t *
s_request_new (mock_server_t *self, struct MHD_Connection *connection, const char *url)
{
    s_request_t *req = calloc (1, sizeof (s_request_t));
    if (!req)
        return NULL;
    req->server = self;
    req->connection = connection;
    req->route = ROUTE_UNKNOWN;
    for (size_t i = 0; i < sizeof s_routes / sizeof s_routes [0]; i++)
        if (strcmp (url, s_routes [i].path) == 0)
            req->route = s_routes [i].route;
    req->api = req->route != ROUTE_STATS && req->route != ROUTE_RESET;
    if (req->api) {
        atomic_fetch_add (&self->requests, 1);
        atomic_fetch_add (&self->active, 1);
    }
    return req;
}

static void
s_request_destroy (s_request_t **req_p)
{
    s_request_t *req = *req_p;
    if (req) {
        if (req->held)
            MHD_destroy_response (req->held);
        free (req->body);
        free (req->json);
        free (req);
        *req_p = NULL;
    }
}

static void
s_request_append (s_request_t *req, const char *data, size_t size)
{
    if (req->body_too_large)
        return;
    if (req->body_len + size > MOCK_BODY_MAX) {
        req->body_too_large = true;
        return;
    }
    if (req->body_len + size + 1 > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 1024;
        while (cap < req->body_len + size + 1)
            cap *= 2;
        char *body = realloc (req->body, cap);
        if (!body) {
            //  Reported as too large: the client cannot do better either way
            req->body_too_large = true;
            return;
        }
        req->body = body;
        req->body_cap = cap;
    }
    memcpy (req->body + req->body_len, data, size);
    req->body_len += size;
    req->body [req->body_len] = 0;
}

//  Parks the connection until due. The order matters: MHD only allows
//  resuming a connection that is already suspended, so suspend first and
//  then hand it to the timer, which may fire at once on another thread.
//  If the timer is stopped (shutdown), resume now: the next callback sees
//  stopping and ends the request.
static void
s_suspend_until (s_request_t *req, uint64_t due)
{
    MHD_suspend_connection (req->connection);
    if (mock_timer_add (req->server->timer, due, req->connection) != 0)
        MHD_resume_connection (req->connection);
}

static void
s_resume (void *arg)
{
    MHD_resume_connection ((struct MHD_Connection *) arg);
}

//  Queues response (taking ownership) and starts the clocks of a callback
//  answer: keep-alives and the first byte count from the moment headers go.
static enum MHD_Result
s_queue (s_request_t *req, unsigned status, struct MHD_Response *response)
{
    uint64_t now = mock_clock_ms ();
    req->body_at = now + (uint64_t) req->first_byte_ms + req->body_delay_ms;
    req->keepalive_at = req->first_byte_ms > 0 && req->keepalive_ms > 0 ? now + (uint64_t) req->keepalive_ms : 0;
    req->state = REQ_ANSWERED;
    enum MHD_Result rc = MHD_queue_response (req->connection, status, response);
    MHD_destroy_response (response);
    return rc;
}

//  Sends response now, or after hold_ms with the connection suspended.
static enum MHD_Result
s_send (s_request_t *req, unsigned status, struct MHD_Response *response, uint64_t hold_ms)
{
    if (!response)
        return MHD_NO;
    if (hold_ms == 0)
        return s_queue (req, status, response);
    req->held = response;
    req->held_status = status;
    req->release_at = mock_clock_ms () + hold_ms;
    req->state = REQ_HOLDING;
    s_suspend_until (req, req->release_at);
    return MHD_YES;
}

//  Builds a response from a malloc'd JSON string, taking ownership of it.
static struct MHD_Response *
s_json_response (char *body)
{
    if (!body)
        return NULL;
    struct MHD_Response *response = MHD_create_response_from_buffer (strlen (body), body, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free (body);
        return NULL;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return response;
}

static enum MHD_Result
s_reply_static (s_request_t *req, unsigned status, const char *body)
{
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (body), (void *) body, MHD_RESPMEM_PERSISTENT);
    if (!response)
        return MHD_NO;
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return s_queue (req, status, response);
}

static enum MHD_Result
s_reply_error (s_request_t *req, unsigned status, const char *type, const char *format, ...)
{
    char message [512];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);
    return s_send (req, status, s_json_response (mock_errors_body (message, type)), 0);
}

static enum MHD_Result
s_reply_invalid (s_request_t *req, const char *message)
{
    return s_reply_error (req, 400, "invalid_request_error", "%s", message);
}

//  Makes the next unit (keep-alive, frame, body) pending. Returns 1 when it
//  did, 0 when the next one is not due yet (*due says when), -1 at the end
//  of the answer, -2 to drop the connection. Repeated calls without a
//  produced unit in between give the same answer.
static int
s_produce (s_request_t *req, uint64_t now, uint64_t *due)
{
    if (now < req->body_at) {
        //  "Queued": headers are out, the answer is not. DeepSeek keeps the
        //  connection alive with SSE comments, or blank lines for JSON
        if (req->keepalive_at && now >= req->keepalive_at) {
            req->pending = req->stream ? ": keep-alive\n\n" : "\n";
            req->pending_len = strlen (req->pending);
            req->keepalive_at = now + (uint64_t) req->keepalive_ms;
            return 1;
        }
        *due = req->keepalive_at && req->keepalive_at < req->body_at ? req->keepalive_at : req->body_at;
        return 0;
    }
    int drop_after = req->directive.drop_after;
    if (!req->stream) {
        if (req->json_sent)
            return drop_after >= 0 ? -2 : -1;
        //  A dropped body stops halfway, which no JSON parser accepts
        req->pending = req->json;
        req->pending_len = drop_after >= 0 ? req->json_len / 2 : req->json_len;
        req->json_sent = true;
        return 1;
    }
    mock_frame_t frame;
    mock_completion_frame_info (&req->answer, req->frame, &frame);
    if (frame.kind == MOCK_FRAME_END)
        return -1;
    //  Drop right after the N-th token frame; an answer shorter than N
    //  tokens is dropped before its final frame, so drop_after always drops
    if (drop_after >= 0 && frame.kind != MOCK_FRAME_ROLE && frame.kind != MOCK_FRAME_MALFORMED) {
        int total = mock_completion_tokens (&req->answer);
        if (req->tokens_sent >= (drop_after < total ? drop_after : total))
            return -2;
    }
    uint64_t frame_at = req->body_at + (uint64_t) frame.tokens * (uint64_t) req->token_ms;
    if (now < frame_at) {
        *due = frame_at;
        return 0;
    }
    req->pending_len = mock_completion_frame (&req->answer, req->frame, req->out, sizeof req->out);
    req->pending = req->out;
    req->frame++;
    req->tokens_sent = frame.tokens;
    return 1;
}

//  Content reader for callback answers. Returns what is due now; when
//  nothing is, suspends the connection until the next deadline and returns
//  0. libmicrohttpd prescribes this: returning 0 without suspending makes
//  its internal polling thread spin on the connection.
static ssize_t
s_read (void *cls, uint64_t pos, char *buf, size_t max)
{
    s_request_t *req = cls;
    (void) pos;
    if (atomic_load_explicit (&req->server->stopping, memory_order_relaxed))
        return MHD_CONTENT_READER_END_WITH_ERROR;
    uint64_t now = mock_clock_ms ();
    size_t used = 0;
    while (used < max) {
        if (req->pending_len > 0) {
            size_t n = req->pending_len < max - used ? req->pending_len : max - used;
            memcpy (buf + used, req->pending, n);
            used += n;
            req->pending += n;
            req->pending_len -= n;
            continue;
        }
        uint64_t due = 0;
        int rc = s_produce (req, now, &due);
        if (rc > 0)
            continue;
        //  Give MHD what we have; the next call reaches the same verdict
        if (used > 0)
            break;
        if (rc == 0) {
            s_suspend_until (req, due);
            return 0;
        }
        return rc == -1 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return (ssize_t) used;
}

static bool
s_authorized (mock_server_t *self, s_request_t *req, const char **given)
{
    const char *header = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                                      MHD_HTTP_HEADER_AUTHORIZATION);
    *given = "";
    if (!header)
        return false;
    *given = header;
    if (strncasecmp (header, "Bearer ", 7) != 0)
        return false;
    const char *key = header + 7;
    while (*key == ' ')
        key++;
    *given = key;
    return strcmp (key, self->config->api_key) == 0;
}

//  Validates a chat request like DeepSeek, applies the directives and
//  queues (or holds) the answer.
static enum MHD_Result
s_answer_chat (mock_server_t *self, s_request_t *req)
{
    if (req->body_too_large)
        return s_reply_error (req, 413, "invalid_request_error", "Request body larger than %d bytes", MOCK_BODY_MAX);
    json_t *root = req->body ? json_loadb (req->body, req->body_len, 0, NULL) : NULL;
    if (!json_is_object (root)) {
        json_decref (root);
        return s_reply_invalid (req, "Failed to deserialize the JSON body into the target type: expected a JSON object");
    }
    enum MHD_Result rc;
    char err [256];
    const char *model_name = json_string_value (json_object_get (root, "model"));
    json_t *messages = json_object_get (root, "messages");
    json_t *n = json_object_get (root, "n");
    json_t *max_tokens = json_object_get (root, "max_tokens");
    json_t *format_type = json_object_get (json_object_get (root, "response_format"), "type");
    int model = -1;
    for (size_t i = 0; model_name && i < sizeof s_models / sizeof s_models [0]; i++)
        if (strcmp (model_name, s_models [i].name) == 0)
            model = (int) i;
    bool messages_ok = json_array_size (messages) > 0;
    for (size_t i = 0; messages_ok && i < json_array_size (messages); i++)
        messages_ok = json_is_object (json_array_get (messages, i));

    if (!model_name)
        rc = s_reply_invalid (req, "Missing required parameter: 'model' must be a string");
    else
    if (!messages_ok)
        rc = s_reply_invalid (req, "Missing required parameter: 'messages' must be a non-empty array of objects");
    else
    if (model < 0)
        rc = s_reply_invalid (req, "Model Not Exist");
    else
    if (n && !json_is_null (n) && !(json_is_integer (n) && json_integer_value (n) == 1))
        rc = s_reply_invalid (req, "Invalid n value, n must be 1");
    else
    if (max_tokens && !json_is_null (max_tokens)
        && !(json_is_integer (max_tokens) && json_integer_value (max_tokens) >= 1
             && json_integer_value (max_tokens) <= 8192))
        rc = s_reply_invalid (req, "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]");
    else
    if (json_is_string (format_type) && strcmp (json_string_value (format_type), "json_schema") == 0)
        rc = s_reply_invalid (req, "This response_format type is unavailable now");
    else {
        //  Directives: the header first, then the last message, which wins
        mock_directive_t *d = &req->directive;
        mock_directive_init (d);
        const char *header = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "X-Mock");
        json_t *last = json_object_get (json_array_get (messages, json_array_size (messages) - 1), "content");
        if ((header && mock_directive_apply (d, header, strlen (header), err, sizeof err))
            || (json_is_string (last)
                && mock_directive_scan (d, json_string_value (last), json_string_length (last), err, sizeof err))
            || mock_directive_check (d, err, sizeof err)) {
            json_decref (root);
            return s_reply_invalid (req, err);
        }
        //  times=N: every request with the id counts; past N it is answered normally
        if (d->id [0] && mock_faults_hit (self->faults, d->id) >= d->times && d->times >= 0)
            mock_directive_clear_faults (d);

        mock_plan_t plan;
        bool reasoner = s_models [model].reasoner;
        mock_tokens_plan (&plan,
                          reasoner ? (d->reasoning >= 0 ? d->reasoning : MOCK_TOKENS_DEFAULT_REASONING) : 0,
                          d->tokens >= 0 ? d->tokens : MOCK_TOKENS_DEFAULT_CONTENT,
                          max_tokens ? (int) json_integer_value (max_tokens) : 0);
        mock_completion_t *answer = &req->answer;
        mock_completion_init (answer, s_models [model].name, reasoner,
                              mock_tokens_prompt (messages), d->cache, &plan);
        answer->usage_mode = d->usage >= 0 ? (mock_usage_mode_t) d->usage : self->config->usage_mode;
        answer->include_usage = json_is_true (json_object_get (json_object_get (root, "stream_options"), "include_usage"));
        answer->malformed = d->malformed == 1;
        req->stream = json_is_true (json_object_get (root, "stream"));
        req->token_ms = d->token_ms >= 0 ? d->token_ms : self->config->token_delay_ms;
        req->keepalive_ms = d->keepalive_ms >= 0 ? d->keepalive_ms : self->config->keepalive_ms;
        req->first_byte_ms = d->first_byte_ms > 0 ? d->first_byte_ms : 0;
        json_decref (root);
        root = NULL;

        uint64_t hold_ms = d->hold_ms > 0 ? (uint64_t) d->hold_ms : 0;
        if (d->status > 0) {
            struct MHD_Response *response = s_json_response (mock_errors_for_status (d->status));
            if (response && d->retry_after >= 0) {
                char seconds [16];
                snprintf (seconds, sizeof seconds, "%d", d->retry_after);
                MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
            }
            rc = s_send (req, (unsigned) d->status, response, hold_ms);
        }
        else
        if (req->stream) {
            //  Chunked (size unknown), one HTTP chunk per s_read call
            struct MHD_Response *response = MHD_create_response_from_callback (
                MHD_SIZE_UNKNOWN, MOCK_CALLBACK_BLOCK, s_read, req, NULL);
            if (response) {
                MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
                MHD_add_response_header (response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
            }
            rc = s_send (req, 200, response, hold_ms);
        }
        else {
            //  A non-streaming answer "computes" for tokens x token_ms. With
            //  first_byte_ms the headers leave at once and blank lines fill
            //  the wait; otherwise nothing at all is sent meanwhile
            uint64_t compute_ms = (uint64_t) req->token_ms * (uint64_t) mock_completion_tokens (answer);
            req->json = mock_completion_body (answer, &req->json_len);
            if (req->first_byte_ms > 0)
                req->body_delay_ms = compute_ms;
            else
                hold_ms += compute_ms;
            struct MHD_Response *response = NULL;
            if (req->json && (req->first_byte_ms > 0 || d->drop_after >= 0)) {
                response = MHD_create_response_from_callback (MHD_SIZE_UNKNOWN, MOCK_CALLBACK_BLOCK, s_read, req, NULL);
                if (response)
                    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
            }
            else {
                response = s_json_response (req->json);
                req->json = NULL;
            }
            rc = s_send (req, 200, response, hold_ms);
        }
    }
    json_decref (root);
    return rc;
}

static enum MHD_Result
s_answer_stats (mock_server_t *self, s_request_t *req)
{
    char *body = NULL;
    int len = asprintf (&body, "{\"requests\":%ld,\"active\":%ld,\"completed\":%ld,\"aborted\":%ld}",
                        atomic_load (&self->requests), atomic_load (&self->active),
                        atomic_load (&self->completed), atomic_load (&self->aborted));
    if (len < 0)
        return MHD_NO;
    return s_send (req, 200, s_json_response (body), 0);
}

//  First call with the complete request: route, auth, method, then answer.
static enum MHD_Result
s_answer (mock_server_t *self, s_request_t *req, const char *url, const char *method)
{
    if (req->route == ROUTE_UNKNOWN)
        return s_reply_error (req, 404, "invalid_request_error", "Invalid URL (%.16s %.200s)", method, url);
    const char *given;
    if (req->api && !s_authorized (self, req, &given)) {
        return s_send (req, 401, s_json_response (mock_errors_auth (given)), 0);
    }
    const char *allowed = NULL;
    for (size_t i = 0; i < sizeof s_routes / sizeof s_routes [0]; i++)
        if (strcmp (url, s_routes [i].path) == 0)
            allowed = s_routes [i].method;
    assert (allowed);
    if (strcmp (method, allowed) != 0) {
        char message [64];
        snprintf (message, sizeof message, "Method Not Allowed, use %s", allowed);
        struct MHD_Response *response = s_json_response (
            mock_errors_body (message, "invalid_request_error"));
        if (response)
            MHD_add_response_header (response, MHD_HTTP_HEADER_ALLOW, allowed);
        return s_send (req, 405, response, 0);
    }
    switch (req->route) {
        case ROUTE_CHAT:
            return s_answer_chat (self, req);
        case ROUTE_MODELS:
            return s_reply_static (req, 200, s_models_body);
        case ROUTE_BALANCE:
            return s_reply_static (req, 200, s_balance_body);
        case ROUTE_STATS:
            return s_answer_stats (self, req);
        case ROUTE_RESET:
            //  active is left alone: requests in flight will still leave
            atomic_store (&self->requests, 0);
            atomic_store (&self->completed, 0);
            atomic_store (&self->aborted, 0);
            mock_faults_reset (self->faults);
            return s_reply_static (req, 200, "{\"reset\":true}");
        case ROUTE_UNKNOWN:
            break;
    }
    return MHD_NO;
}

//  MHD access handler: called once with the headers, once per body piece,
//  once more when the body is complete, and again after each resume of a
//  held request.
static enum MHD_Result
s_handle (void *cls, struct MHD_Connection *connection, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    mock_server_t *self = cls;
    s_request_t *req = *req_cls;
    (void) version;
    if (!req) {
        req = s_request_new (self, connection, url);
        if (!req)
            return MHD_NO;
        *req_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        s_request_append (req, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->state == REQ_RECEIVING)
        return s_answer (self, req, url, method);
    if (req->state == REQ_HOLDING) {
        if (atomic_load (&self->stopping))
            return MHD_NO;
        if (mock_clock_ms () < req->release_at) {
            s_suspend_until (req, req->release_at);
            return MHD_YES;
        }
        struct MHD_Response *response = req->held;
        req->held = NULL;
        return s_queue (req, req->held_status, response);
    }
    return MHD_YES;
}

//  MHD completion callback: the only place a request is freed. Also the
//  place aborted requests are noticed: a peer that closed mid-stream ends
//  here with an error code once MHD's next write fails.
static void
s_completed (void *cls, struct MHD_Connection *connection, void **req_cls,
             enum MHD_RequestTerminationCode toe)
{
    mock_server_t *self = cls;
    s_request_t *req = *req_cls;
    (void) connection;
    if (!req)
        return;
    if (req->api) {
        atomic_fetch_sub (&self->active, 1);
        if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
            atomic_fetch_add (&self->completed, 1);
        else
            atomic_fetch_add (&self->aborted, 1);
    }
    s_request_destroy (&req);
    *req_cls = NULL;
}

mock_server_t *
mock_server_new (mock_config_t *config)
{
    assert (config);
    mock_server_t *self = calloc (1, sizeof (mock_server_t));
    if (!self)
        return NULL;
    self->config = config;
    self->timer = mock_timer_new (s_resume);
    self->faults = mock_faults_new (MOCK_FAULT_IDS);
    if (!self->timer || !self->faults) {
        fprintf (stderr, "mock-upstream: cannot start timer thread\n");
        mock_server_destroy (&self);
        return NULL;
    }

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *addr = NULL;
    char port [16];
    snprintf (port, sizeof port, "%d", config->port);
    int gai = getaddrinfo (config->host, port, &hints, &addr);
    if (gai != 0) {
        fprintf (stderr, "mock-upstream: cannot resolve host=%s: %s\n", config->host, gai_strerror (gai));
        mock_server_destroy (&self);
        return NULL;
    }
    //  Internal epoll thread(s) rather than a thread per connection: tens
    //  of thousands of mostly idle streams must fit on two cores.
    //  Suspend/resume lets a stream wait for its next token at no cost.
    //  MHD_USE_TURBO stays off: with 0.9.75 a connection suspended from the
    //  access handler (hold_ms) failed to send its headers after resuming
    //  ("socket is not connected").
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME
                   | MHD_USE_ERROR_LOG;
    if (addr->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem pool [] = {
        { config->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
          (intptr_t) config->threads, NULL },
        { MHD_OPTION_END, 0, NULL }
    };
    self->daemon = MHD_start_daemon (flags, (uint16_t) config->port, NULL, NULL, s_handle, self,
                                     MHD_OPTION_SOCK_ADDR, addr->ai_addr,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned int) MOCK_CONNECTION_LIMIT,
                                     MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int) 4096,
                                     MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) MOCK_CONNECTION_POOL,
                                     MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
                                     MHD_OPTION_ARRAY, pool,
                                     MHD_OPTION_END);
    freeaddrinfo (addr);
    if (!self->daemon) {
        fprintf (stderr, "mock-upstream: cannot listen on host=%s port=%d\n", config->host, config->port);
        mock_server_destroy (&self);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info ? info->port : config->port;
    return self;
}

void
mock_server_destroy (mock_server_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        mock_server_t *self = *self_p;
        //  MHD refuses to stop with suspended connections. Order: forbid new
        //  suspensions, then let the timer resume everything it holds (the
        //  callbacks then see stopping and end), then stop MHD, which closes
        //  every connection and calls s_completed for each request
        atomic_store (&self->stopping, true);
        if (self->timer)
            mock_timer_stop (self->timer);
        if (self->daemon)
            MHD_stop_daemon (self->daemon);
        mock_timer_destroy (&self->timer);
        mock_faults_destroy (&self->faults);
        free (self);
        *self_p = NULL;
    }
}

int
mock_server_port (mock_server_t *self)
{
    assert (self);
    return self->port;
}

//  Sends request to the server and reads the whole answer until the server
//  closes, into buf. Returns the length, or -1.
static int
s_test_exchange (int port, const char *request, char *buf, size_t size)
{
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
    struct addrinfo *addr;
    char service [16];
    snprintf (service, sizeof service, "%d", port);
    if (getaddrinfo ("127.0.0.1", service, &hints, &addr) != 0)
        return -1;
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect (fd, addr->ai_addr, addr->ai_addrlen) != 0) {
        freeaddrinfo (addr);
        if (fd >= 0)
            close (fd);
        return -1;
    }
    freeaddrinfo (addr);
    size_t len = strlen (request);
    if (send (fd, request, len, 0) != (ssize_t) len) {
        close (fd);
        return -1;
    }
    size_t got = 0;
    ssize_t n;
    while (got + 1 < size && (n = recv (fd, buf + got, size - got - 1, 0)) > 0)
        got += (size_t) n;
    buf [got] = 0;
    close (fd);
    return (int) got;
}

void
mock_server_test (bool verbose)
{
    (void) verbose;
    mock_config_t *config = mock_config_new ();
    mock_check (config);
    config->port = 0;
    config->keepalive_ms = 10;
    mock_server_t *server = mock_server_new (config);
    mock_check (server);
    if (!server) {
        mock_config_destroy (&config);
        return;
    }
    int port = mock_server_port (server);
    mock_check (port > 0);
    static char reply [65536];

    mock_check (s_test_exchange (port, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       "Authorization: Bearer sk-mock\r\n\r\n", reply, sizeof reply) > 0);
    mock_check (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    mock_check (strstr (reply, "deepseek-reasoner"));

    mock_check (s_test_exchange (port, "GET /models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       "Authorization: Bearer sk-wrong-wxyz\r\n\r\n", reply, sizeof reply) > 0);
    mock_check (strncmp (reply, "HTTP/1.1 401", 12) == 0);
    mock_check (strstr (reply, "****wxyz"));

    const char *chat =
        "POST /chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        "Authorization: Bearer sk-mock\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s";
    char request [1024];
    const char *body = "{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
    snprintf (request, sizeof request, chat, strlen (body), body);
    mock_check (s_test_exchange (port, request, reply, sizeof reply) > 0);
    mock_check (strncmp (reply, "HTTP/1.1 200", 12) == 0);
    mock_check (strstr (reply, "\"prompt_tokens\":6,"));

    //  A timed stream goes through suspend, timer and resume for every token,
    //  preceded by keep-alives
    body = "{\"model\":\"deepseek-chat\",\"stream\":true,\"messages\":[{\"role\":\"user\","
           "\"content\":\"[[mock tokens=5 token_ms=5 first_byte_ms=35]]\"}]}";
    snprintf (request, sizeof request, chat, strlen (body), body);
    mock_check (s_test_exchange (port, request, reply, sizeof reply) > 0);
    mock_check (strstr (reply, "text/event-stream"));
    mock_check (strstr (reply, ": keep-alive\n\n"));
    mock_check (strstr (reply, "\" tok5\""));
    mock_check (strstr (reply, "data: [DONE]\n\n"));

    //  A held request is released by the timer
    body = "{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"[[mock status=503 hold_ms=20]]\"}]}";
    snprintf (request, sizeof request, chat, strlen (body), body);
    uint64_t start = mock_clock_ms ();
    mock_check (s_test_exchange (port, request, reply, sizeof reply) > 0);
    mock_check (mock_clock_ms () - start >= 20);
    mock_check (strncmp (reply, "HTTP/1.1 503", 12) == 0);
    mock_check (strstr (reply, "Server Overloaded"));

    mock_check (s_test_exchange (port, "GET /mock/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                 reply, sizeof reply) > 0);
    mock_check (strstr (reply, "{\"requests\":5,\"active\":0,\"completed\":5,\"aborted\":0}"));

    mock_server_destroy (&server);
    mock_check (server == NULL);
    mock_config_destroy (&config);
}
