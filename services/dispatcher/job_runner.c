/*  job_runner.c: chat jobs against upstream providers, on one curl multi handle. */
#include "job_runner.h"
#include "call_usage.h"
#include "gw_buf.h"
#include "gw_error.h"
#include "gw_log.h"
#include "response_cache.h"
#include "sse_reader.h"

#include <assert.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#define MAX_STEPS 8

struct runner_job_t {
    job_runner_t *runner;
    runner_job_t *prev, *next;  //  in the runner's list of jobs
    void *owner;
    uint64_t job_id;
    char *request_id;
    char *model;
    uint32_t dispatch;
    bool stream;
    bool client_usage;
    uint64_t queue_wait_us;
    uint64_t api_key_id;
    //  The response cache: whether this job may be answered from it, how long
    //  its good answer is kept, and under which key (cache_keyed: one exists).
    bool cache_lookup;
    uint32_t cache_ttl_s;
    bool cache_keyed;
    uint8_t cache_key[RESPONSE_CACHE_KEY_SIZE];
    const cache_answer_t *cached;  //  the cache's answer, while its usage is emitted
    bool from_cache;  //  answered from the cache: no call
    gw_buf_t replay;  //  a cached stream still to send (a copy: the entry may go)
    size_t replay_off;
    char replay_type[128];
    gw_buf_t tail;  //  a stream's "data: [DONE]" and after, held until its usage is written
    gw_buf_t capture;  //  a stream's bytes for the cache, while they fit
    bool capturing;
    //  Flow control of a stream: at most window bytes sent and not yet taken
    //  by the client (STREAM_ACK); beyond that the transfer is paused, so a
    //  slow reader holds the provider back instead of filling our memory.
    uint32_t window;  //  0: no limit (an older ingress sends no acks)
    uint64_t sent_bytes, acked_bytes;
    bool paused;
    gw_bin_t body;
    json_t *parsed;  //  the body, parsed only if it must be rewritten
    route_step_t steps[MAX_STEPS];
    size_t nsteps;
    size_t step;
    int step_tries;  //  attempts on the current step
    uint32_t attempt;  //  attempts of this dispatch, all steps
    //  Usage events emitted and their cost. Not the same as attempt: an attempt
    //  whose request could not even be prepared emits no event.
    call_cost_t cost;
    //  The attempt in progress.
    CURL *easy;
    struct curl_slist *headers;
    char *sent_body;  //  rewritten body, when it differs from the client's
    long status;
    char content_type[128];
    int64_t retry_after_ms;  //  -1 when the answer had no Retry-After
    bool got_header;
    int64_t attempt_start_us;
    int64_t first_byte_us;
    int64_t attempt_wall_ms;
    gw_buf_t answer;  //  body of a non-streamed or failed answer
    gw_buf_t forward;  //  stream bytes on their way to the client
    sse_reader_t sse;
    bool head_sent;  //  the client has the status: no retry, no fallback now
    bool cancelled;  //  the client is gone
    bool oversize;
    gw_timer_t *retry_timer;
    gw_timer_t *deadline_timer;  //  first byte, then (once cancelled) drain
};

struct job_runner_t {
    gw_loop_t *loop;
    provider_table_t *providers;
    price_table_t *prices;
    usage_sink_fn *usage;
    void *usage_arg;
    runner_config_t config;
    runner_fns_t fns;
    CURLM *multi;
    gw_timer_t *curl_timer;
    response_cache_t *cache;
    runner_job_t *jobs;  //  every live job, so that shutdown frees them
    size_t active;
    unsigned seed;
};

static bool s_attempt (runner_job_t *job);
static void s_check_done (job_runner_t *self);

void *
runner_job_owner (runner_job_t *job)
{
    return job->owner;
}

uint64_t
runner_job_id (runner_job_t *job)
{
    return job->job_id;
}

void
runner_job_forget (runner_job_t *job)
{
    job->job_id = 0;
}

size_t
job_runner_active (job_runner_t *self)
{
    return self->active;
}

/* ---- job lifetime ---- */

static void
s_reset_attempt (runner_job_t *job)
{
    job_runner_t *self = job->runner;
    if (job->easy) {
        curl_multi_remove_handle (self->multi, job->easy);
        curl_easy_cleanup (job->easy);
        job->easy = NULL;
    }
    curl_slist_free_all (job->headers);
    job->headers = NULL;
    free (job->sent_body);
    job->sent_body = NULL;
    gw_buf_free (&job->answer);
    gw_buf_free (&job->forward);
    gw_buf_free (&job->capture);
    gw_buf_free (&job->tail);
    job->capturing = job->cache_keyed && job->cache_ttl_s > 0 && job->stream;
    sse_reader_reset (&job->sse);
    job->status = 0;
    job->content_type[0] = 0;
    job->retry_after_ms = -1;
    job->got_header = false;
    job->first_byte_us = 0;
    job->oversize = false;
    job->paused = false;
    gw_timer_stop (self->loop, job->deadline_timer);
}

static void
s_job_destroy (runner_job_t **job_p)
{
    runner_job_t *job = *job_p;
    job_runner_t *self = job->runner;
    if (job->prev)
        job->prev->next = job->next;
    else
        self->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    self->active--;
    s_reset_attempt (job);
    gw_timer_destroy (job->runner->loop, &job->retry_timer);
    gw_timer_destroy (job->runner->loop, &job->deadline_timer);
    gw_buf_free (&job->replay);
    json_decref (job->parsed);
    free (job->request_id);
    free (job->model);
    free (job->body.data);
    free (job);
    *job_p = NULL;
}

/*  Ends the job: the owner hears once, with the calls this dispatch made, then
    the job is gone. */
static void
s_finish (runner_job_t *job, uint32_t status, const char *type, const char *body, size_t size)
{
    job_runner_t *self = job->runner;
    runner_outcome_t outcome = {
        .attempts = job->cost.calls,
        .cost_known = !job->cost.unpriced,
        .cost_pico = job->cost.cost_pico,
        .currency = self->config.currency,
        .cached = job->from_cache,
    };
    self->fns.end (job, status, type, body, size, &outcome);
    s_job_destroy (&job);
}

static void
s_finish_error (runner_job_t *job, uint32_t status, const char *code, const char *message)
{
    char *body;
    if (job->head_sent) {
        body = job->stream ? gw_error_sse ("upstream_error", code, "%s", message) : NULL;
        s_finish (job, status, "text/event-stream; charset=utf-8", body, body ? strlen (body) : 0);
    }
    else {
        body = gw_error_json ("upstream_error", code, NULL, "%s", message);
        s_finish (job, status, "application/json", body, strlen (body));
    }
    free (body);
}

/* ---- usage ---- */

/*  One upstream call is over: its event goes out and counts for the job's END.
    The only place usage events are emitted, so END.attempts cannot miss one. */
static void
s_emit_usage (runner_job_t *job, const call_usage_t *usage)
{
    char event_id[128];
    snprintf (event_id, sizeof event_id, "%s.%u.%u", job->request_id, job->dispatch, job->attempt);
    int64_t now = gw_now_us ();
    //  A cached answer names where it came from; its row costs nothing.
    const char *provider = job->cached ? job->cached->provider : job->steps[job->step].provider->name;
    const char *upstream_model = job->cached ? job->cached->upstream_model : job->steps[job->step].upstream_model;
    gw_usage_t ev = {
        .event_id = event_id,
        .request_id = job->request_id,
        .attempt = job->attempt,
        .dispatch = job->dispatch,
        .provider = (char *) provider,
        .upstream_model = (char *) upstream_model,
        .model = job->model,
        .cache_hit_tokens = usage->cache_hit_tokens,
        .cache_miss_tokens = usage->cache_miss_tokens,
        .completion_tokens = usage->completion_tokens,
        .reasoning_tokens = usage->reasoning_tokens,
        .status = (uint32_t) job->status,
        .usage_known = usage->known,
        .streamed = job->stream,
        .client_aborted = job->cancelled,
        .queue_wait_us = job->queue_wait_us,
        .ttfb_us = job->first_byte_us ? (uint64_t) (job->first_byte_us - job->attempt_start_us) : 0,
        .total_us = (uint64_t) (now - job->attempt_start_us),
        .started_ms = (uint64_t) job->attempt_wall_ms,
        .api_key_id = job->api_key_id,
        .cached = job->from_cache,
    };
    call_cost_add (&job->cost, job->runner->prices, job->runner->config.currency, &ev);
    job->runner->usage (job->runner->usage_arg, &ev);
}

/* ---- curl callbacks ---- */

static size_t
s_on_header (char *data, size_t size, size_t nmemb, void *arg)
{
    runner_job_t *job = arg;
    size_t len = size * nmemb;
    if (!job->got_header) {
        job->got_header = true;
        //  The provider answered: the first-byte deadline no longer applies.
        if (!job->cancelled)
            gw_timer_stop (job->runner->loop, job->deadline_timer);
    }
    //  A new status line (after "100 Continue" or a redirect) resets what we know.
    if (len > 5 && strncmp (data, "HTTP/", 5) == 0) {
        job->content_type[0] = 0;
        job->retry_after_ms = -1;
    }
    else if (len > 13 && strncasecmp (data, "Content-Type:", 13) == 0) {
        const char *v = data + 13;
        size_t vlen = len - 13;
        while (vlen && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
            vlen--;
        snprintf (job->content_type, sizeof job->content_type, "%.*s", (int) vlen, v);
    }
    else if (len > 12 && strncasecmp (data, "Retry-After:", 12) == 0) {
        //  Seconds only; the HTTP-date form is rare from API providers and is
        //  treated as absent (our own backoff applies).
        char *end;
        long secs = strtol (data + 12, &end, 10);
        if (end != data + 12 && secs >= 0)
            job->retry_after_ms = secs > 86400 ? 86400000 : secs * 1000;
    }
    return len;
}

/*  Keeps a stream's client bytes for the response cache while they fit. */
static void
s_capture (runner_job_t *job)
{
    if (!job->capturing)
        return;
    if (!response_cache_fits (job->runner->cache, job->capture.len + job->forward.len)
        || gw_buf_append (&job->capture, job->forward.data, job->forward.len)) {
        job->capturing = false;
        gw_buf_free (&job->capture);
    }
}

/*  Sends the complete events the reader forwarded, except the stream's end:
    from "data: [DONE]" on, the bytes wait for the END, which leaves only once
    the call's usage event is in the spool's file. A client that holds a whole
    answer then has its usage recorded, whatever happens to this process. */
static void
s_relay (runner_job_t *job)
{
    if (!job->forward.len)
        return;
    s_capture (job);
    size_t send = job->forward.len;
    if (job->sse.done) {
        static const char done[] = "data: [DONE]";
        const char *at = job->tail.len ? job->forward.data
                                       : memmem (job->forward.data, job->forward.len, done, sizeof done - 1);
        //  (Not found: written some other way, "data:[DONE]"; then it goes as it came.)
        if (at) {
            send = (size_t) (at - job->forward.data);
            gw_buf_append (&job->tail, at, job->forward.len - send);
        }
    }
    if (send && !job->cancelled)
        job->runner->fns.chunk (job, job->forward.data, send);
    job->sent_bytes += send;
    job->forward.len = 0;
}

/*  A whole good answer goes into the cache when its request asked for that. */
static void
s_cache_put (runner_job_t *job, const char *content_type, const void *body, size_t size, const call_usage_t *usage)
{
    if (!job->cache_keyed || job->cache_ttl_s == 0)
        return;
    cache_answer_t answer = { .content_type = content_type,
                              .body = body,
                              .size = size,
                              .provider = job->steps[job->step].provider->name,
                              .upstream_model = job->steps[job->step].upstream_model,
                              .usage = *usage };
    uint32_t ttl = job->cache_ttl_s;
    if (ttl > job->runner->config.cache_ttl_max_s)
        ttl = job->runner->config.cache_ttl_max_s;
    if (response_cache_put (job->runner->cache, job->cache_key, gw_now_ms (), ttl, &answer) == 0)
        gw_debug ("runner", "cached request_id=%s bytes=%zu ttl_s=%u", job->request_id, size, ttl);
}

static size_t
s_on_write (char *data, size_t size, size_t nmemb, void *arg)
{
    runner_job_t *job = arg;
    job_runner_t *self = job->runner;
    size_t len = size * nmemb;
    if (!job->first_byte_us) {
        job->first_byte_us = gw_now_us ();
        curl_easy_getinfo (job->easy, CURLINFO_RESPONSE_CODE, &job->status);
    }
    //  The client is a window behind: hold these bytes (curl delivers them
    //  again once unpaused) and stop reading from the provider.
    if (job->window && job->head_sent && !job->cancelled && job->sent_bytes - job->acked_bytes >= job->window) {
        job->paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    //  A provider may answer a stream request with plain JSON: that is taken
    //  whole, like a non-streamed answer, so its usage is still read.
    if (job->stream && job->status == 200
        && (!job->content_type[0] || strncasecmp (job->content_type, "text/event-stream", 17) == 0)) {
        if (!job->head_sent) {
            job->head_sent = true;
            if (!job->cancelled)
                self->fns.head (job, 200, job->content_type[0] ? job->content_type
                                                               : "text/event-stream; charset=utf-8");
        }
        if (sse_reader_feed (&job->sse, data, len, &job->forward))
            return 0;
        s_relay (job);
        return len;
    }
    if (job->answer.len + len > self->config.max_body_bytes) {
        job->oversize = true;
        return 0;  //  aborts the transfer with CURLE_WRITE_ERROR
    }
    return gw_buf_append (&job->answer, data, len) ? 0 : len;
}

static void
s_on_socket_event (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) loop;
    job_runner_t *self = arg;
    int flags = 0, running;
    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action (self->multi, fd, flags, &running);
    s_check_done (self);
}

static int
s_on_curl_socket (CURL *easy, curl_socket_t fd, int what, void *arg, void *socketp)
{
    (void) easy, (void) socketp;
    job_runner_t *self = arg;
    if (what == CURL_POLL_REMOVE)
        gw_loop_unwatch (self->loop, fd);
    else {
        uint32_t events = 0;
        if (what & CURL_POLL_IN)
            events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
            events |= EPOLLOUT;
        gw_loop_watch (self->loop, fd, events, s_on_socket_event, self);
    }
    return 0;
}

static void
s_on_curl_timeout (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    job_runner_t *self = arg;
    int running;
    curl_multi_socket_action (self->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    s_check_done (self);
}

static int
s_on_curl_timer (CURLM *multi, long timeout_ms, void *arg)
{
    (void) multi;
    job_runner_t *self = arg;
    if (timeout_ms < 0)
        gw_timer_stop (self->loop, self->curl_timer);
    else
        gw_timer_start (self->loop, self->curl_timer, timeout_ms);
    return 0;
}

/* ---- deciding what happens after an attempt ---- */

static bool
s_retryable_status (long status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

/*  Delay before retrying the same provider, or -1 when it should not be retried. */
static int64_t
s_retry_delay (runner_job_t *job)
{
    job_runner_t *self = job->runner;
    if (job->step_tries > self->config.retry_max)
        return -1;
    //  Exponential backoff with "equal jitter": half fixed, half random, so that a
    //  burst of failed requests does not come back as a burst.
    int64_t backoff = (int64_t) self->config.retry_base_ms << (job->step_tries - 1);
    if (backoff > self->config.retry_cap_ms)
        backoff = self->config.retry_cap_ms;
    backoff = backoff / 2 + (backoff > 1 ? rand_r (&self->seed) % (backoff / 2 + 1) : 0);
    if (job->retry_after_ms >= 0) {
        if (job->retry_after_ms > self->config.retry_after_max_ms)
            return -1;
        if (job->retry_after_ms > backoff)
            backoff = job->retry_after_ms;
    }
    return backoff;
}

static void
s_on_retry_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    (void) s_attempt (arg);  //  a job that ends here has told its owner
}

/*  The error body for the client when the last attempt failed. Provider errors
    pass through when they are already in the OpenAI shape. */
static void
s_finish_failed (runner_job_t *job, CURLcode rc)
{
    const char *provider = job->steps[job->step].provider->name;
    char message[512];
    if (job->status >= 400 && rc == CURLE_OK) {
        json_t *j = json_loadb (job->answer.data ? job->answer.data : "", job->answer.len, 0, NULL);
        bool shaped = json_is_object (json_object_get (j, "error"));
        json_decref (j);
        if (shaped) {
            s_finish (job, (uint32_t) job->status, "application/json", job->answer.data, job->answer.len);
            return;
        }
        snprintf (message, sizeof message, "Upstream %s answered HTTP %ld: %.200s", provider, job->status,
                  job->answer.data ? job->answer.data : "");
        s_finish_error (job, (uint32_t) job->status, "upstream_error", message);
        return;
    }
    bool timeout = rc == CURLE_OPERATION_TIMEDOUT;
    snprintf (message, sizeof message, "Upstream %s %s: %s", provider,
              timeout ? "timed out" : "failed", job->oversize ? "answer too large" : curl_easy_strerror (rc));
    s_finish_error (job, timeout ? 504 : 502, timeout ? "upstream_timeout" : "upstream_unavailable", message);
}

/*  One attempt is over, by curl or by one of our deadlines. */
static void
s_attempt_done (runner_job_t *job, CURLcode rc)
{
    job_runner_t *self = job->runner;
    if (job->easy)
        curl_easy_getinfo (job->easy, CURLINFO_RESPONSE_CODE, &job->status);
    //  A last event without its blank line is still an event.
    if (job->stream && job->head_sent && rc == CURLE_OK && job->sse.pending.len) {
        sse_reader_feed (&job->sse, "\n\n", 2, &job->forward);
        s_relay (job);
    }
    call_usage_t usage = { 0 };
    json_t *answer = NULL;
    if (job->stream && job->head_sent)
        usage = job->sse.usage;
    else if (job->status == 200 && rc == CURLE_OK) {
        answer = json_loadb (job->answer.data ? job->answer.data : "", job->answer.len, 0, NULL);
        call_usage_read (json_object_get (answer, "usage"), &usage);
    }
    s_emit_usage (job, &usage);

    if (job->head_sent) {
        //  The client has part of the answer: finish it, well or badly.
        if (rc == CURLE_OK) {
            //  Only a stream that reached its [DONE] is whole enough to replay.
            if (job->capturing && job->sse.done && job->status == 200)
                s_cache_put (job, job->content_type, job->capture.data, job->capture.len, &usage);
            //  The usage event is written (s_emit_usage): the end may go.
            s_finish (job, 200, job->content_type, job->tail.data, job->tail.len);
        }
        else if (rc == CURLE_OPERATION_TIMEDOUT)
            s_finish_error (job, 504, "upstream_timeout",
                            "The upstream answer took longer than the gateway allows; it is incomplete.");
        else
            s_finish_error (job, 502, "upstream_disconnected",
                            "The upstream connection broke in the middle of the answer; it is incomplete.");
        return;
    }
    if (rc == CURLE_OK && job->status == 200) {
        if (answer) {
            const char *type = job->content_type[0] ? job->content_type : "application/json";
            //  (A stream request answered with plain JSON is not kept: a hit
            //  would replay it as a stream.)
            if (!job->stream && json_is_object (answer) && !json_object_get (answer, "error"))
                s_cache_put (job, type, job->answer.data, job->answer.len, &usage);
            s_finish (job, 200, type, job->answer.data, job->answer.len);
        }
        else
            s_finish_error (job, 502, "bad_upstream_response", "The upstream answered with malformed JSON.");
        json_decref (answer);
        return;
    }
    json_decref (answer);
    if (job->cancelled) {
        s_finish_failed (job, rc);
        return;
    }
    bool retryable = rc != CURLE_OK ? !job->oversize : s_retryable_status (job->status);
    int64_t delay = retryable ? s_retry_delay (job) : -1;
    if (delay >= 0) {
        gw_info ("runner", "retrying request_id=%s provider=%s status=%ld curl=%d delay_ms=%lld",
                 job->request_id, job->steps[job->step].provider->name, job->status, (int) rc,
                 (long long) delay);
        gw_timer_start (self->loop, job->retry_timer, delay);
        return;
    }
    //  Provider-side trouble (down, out of balance, bad key) moves to the next
    //  provider; a request the provider judged invalid (400, 404, 422, and 403,
    //  which MaaS uses for sensitive content) would fail there too.
    bool provider_fault = retryable || job->status == 401 || job->status == 402;
    if (provider_fault && job->step + 1 < job->nsteps) {
        gw_warn ("runner", "falling back request_id=%s from=%s to=%s status=%ld curl=%d", job->request_id,
                 job->steps[job->step].provider->name, job->steps[job->step + 1].provider->name,
                 job->status, (int) rc);
        job->step++;
        job->step_tries = 0;
        (void) s_attempt (job);
        return;
    }
    s_finish_failed (job, rc);
}

static void
s_check_done (job_runner_t *self)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        runner_job_t *job;
        curl_easy_getinfo (msg->easy_handle, CURLINFO_PRIVATE, (char **) &job);
        s_attempt_done (job, msg->data.result);
    }
}

static void
s_on_deadline (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    runner_job_t *job = arg;
    gw_warn ("runner", "%s deadline request_id=%s provider=%s", job->cancelled ? "drain" : "first byte",
             job->request_id, job->steps[job->step].provider->name);
    curl_easy_getinfo (job->easy, CURLINFO_RESPONSE_CODE, &job->status);
    curl_multi_remove_handle (job->runner->multi, job->easy);
    s_attempt_done (job, CURLE_OPERATION_TIMEDOUT);
}

/* ---- starting an attempt ---- */

/*  The body for this step: the client's bytes when nothing must change, else the
    parsed body with the upstream model name and include_usage set. */
static int
s_prepare_body (runner_job_t *job, const char **data, size_t *size)
{
    const char *upstream_model = job->steps[job->step].upstream_model;
    bool rename = strcmp (upstream_model, job->model) != 0;
    bool add_usage = job->stream && !job->client_usage;
    *data = (const char *) job->body.data;
    *size = job->body.size;
    if (!rename && !add_usage)
        return 0;
    if (!job->parsed) {
        job->parsed = json_loadb (*data, *size, 0, NULL);
        if (!json_is_object (job->parsed))
            return -1;
    }
    if (!rename && !json_object_get (job->parsed, "stream_options")) {
        //  The common case for streams: splice the option in before the closing
        //  brace, leaving every byte the client sent as it was.
        const char *end = *data + *size;
        while (end > *data && end[-1] != '}')
            end--;
        if (end == *data)
            return -1;
        static const char option[] = ",\"stream_options\":{\"include_usage\":true}}";
        size_t head = (size_t) (end - 1 - *data);
        job->sent_body = malloc (head + sizeof option);
        memcpy (job->sent_body, *data, head);
        memcpy (job->sent_body + head, option, sizeof option);
        *data = job->sent_body;
        *size = head + sizeof option - 1;
        return 0;
    }
    json_object_set_new (job->parsed, "model", json_string (upstream_model));
    if (add_usage) {
        json_t *options = json_object_get (job->parsed, "stream_options");
        if (!json_is_object (options)) {
            options = json_object ();
            json_object_set_new (job->parsed, "stream_options", options);
        }
        json_object_set_new (options, "include_usage", json_true ());
    }
    job->sent_body = json_dumps (job->parsed, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!job->sent_body)
        return -1;
    *data = job->sent_body;
    *size = strlen (job->sent_body);
    return 0;
}

/*  Starts the next attempt. Returns false when the job ended (and is freed). */
static bool
s_attempt (runner_job_t *job)
{
    job_runner_t *self = job->runner;
    s_reset_attempt (job);
    job->attempt++;
    job->step_tries++;
    job->attempt_start_us = gw_now_us ();
    job->attempt_wall_ms = gw_wall_ms ();
    const provider_t *provider = job->steps[job->step].provider;
    const char *body;
    size_t size;
    if (s_prepare_body (job, &body, &size)) {
        s_finish_error (job, 400, "invalid_request_error", "The request body could not be prepared.");
        return false;
    }
    job->easy = curl_easy_init ();
    char auth[512];
    snprintf (auth, sizeof auth, "Authorization: Bearer %s", provider->api_key);
    job->headers = curl_slist_append (job->headers, auth);
    job->headers = curl_slist_append (job->headers, "Content-Type: application/json");
    job->headers = curl_slist_append (job->headers, job->stream ? "Accept: text/event-stream" : "Accept: application/json");
    //  No "Expect: 100-continue" round trip for large bodies.
    job->headers = curl_slist_append (job->headers, "Expect:");
    CURL *e = job->easy;
    curl_easy_setopt (e, CURLOPT_URL, provider->chat_url);
    curl_easy_setopt (e, CURLOPT_HTTPHEADER, job->headers);
    curl_easy_setopt (e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) size);
    curl_easy_setopt (e, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt (e, CURLOPT_WRITEDATA, job);
    curl_easy_setopt (e, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt (e, CURLOPT_HEADERDATA, job);
    curl_easy_setopt (e, CURLOPT_PRIVATE, job);
    curl_easy_setopt (e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (e, CURLOPT_CONNECTTIMEOUT_MS, (long) self->config.connect_timeout_ms);
    curl_easy_setopt (e, CURLOPT_TIMEOUT_MS, (long) self->config.total_timeout_ms);
    curl_easy_setopt (e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt (e, CURLOPT_TCP_NODELAY, 1L);
    //  A paused stream keeps what curl read last until it resumes: with its
    //  default 16 KiB buffer, that was 16 KiB a slow stream (tokens are small).
    if (job->stream)
        curl_easy_setopt (e, CURLOPT_BUFFERSIZE, 4096L);
    //  Pausing a transfer stops reading its connection only when the
    //  connection is its own: over HTTP/2 the provider's other streams share
    //  it, curl keeps reading, and buffers the paused stream's data (curl
    //  7.88's HTTP/2 pause also has known stalls). A windowed stream takes an
    //  HTTP/1.1 connection of its own, which idle ones are then reused for.
    if (job->stream && job->window)
        curl_easy_setopt (e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
    curl_easy_setopt (e, CURLOPT_USERAGENT, "deepseek-gateway/1");
    if (curl_multi_add_handle (self->multi, e) != CURLM_OK) {
        s_finish_error (job, 500, "internal_error", "The gateway could not start the upstream call.");
        return false;
    }
    gw_timer_start (self->loop, job->deadline_timer, self->config.first_byte_timeout_ms);
    return true;
}

/*  Answers from the cache: the client gets the stored bytes, and the one usage
    event of this dispatch says so (its tokens those of the call that made the
    answer, its cost nothing). */
/*  Sends what the window allows of a cached stream, in whole events; ends the
    job when all is sent. Returns false when the job ended (and is freed). */
static bool
s_replay_more (runner_job_t *job)
{
    while (job->replay_off < job->replay.len) {
        if (job->window && job->sent_bytes - job->acked_bytes >= job->window)
            return true;  //  the next STREAM_ACK goes on
        const char *from = job->replay.data + job->replay_off;
        size_t left = job->replay.len - job->replay_off;
        size_t n = left;
        if (job->window && left > job->window) {
            //  Up to the last event end within the window (or the first one
            //  after it, for an event larger than the window).
            n = 0;
            for (const char *p = from; (p = memmem (p, left - (size_t) (p - from), "\n\n", 2)); p += 2) {
                size_t end = (size_t) (p - from) + 2;
                if (end > job->window && n)
                    break;
                n = end;
                if (end > job->window)
                    break;
            }
            if (!n)
                n = left;
        }
        job->runner->fns.chunk (job, from, n);
        job->replay_off += n;
        job->sent_bytes += n;
    }
    s_finish (job, 200, job->replay_type, NULL, 0);
    return false;
}

/*  Answers from the cache: the one usage event of this dispatch is written
    first (its tokens those of the call that made the answer, its cost
    nothing), then the client gets the stored bytes; a stream's go a window at
    a time, like any stream's. Returns false when the job ended (and is freed). */
static bool
s_serve_cached (runner_job_t *job, const cache_answer_t *hit)
{
    job_runner_t *self = job->runner;
    job->from_cache = true;
    job->attempt = 1;
    job->attempt_start_us = job->first_byte_us = gw_now_us ();
    job->attempt_wall_ms = gw_wall_ms ();
    job->status = 200;
    gw_debug ("runner", "cache hit request_id=%s bytes=%zu", job->request_id, hit->size);
    job->cached = hit;
    s_emit_usage (job, &hit->usage);
    job->cached = NULL;
    if (!job->stream) {
        s_finish (job, 200, hit->content_type, (const char *) hit->body, hit->size);
        return false;
    }
    //  A copy: the entry may be evicted while a slow client reads.
    if (gw_buf_append (&job->replay, hit->body, hit->size)) {
        s_finish_error (job, 500, "internal_error", "The gateway is out of memory.");
        return false;
    }
    snprintf (job->replay_type, sizeof job->replay_type, "%s", hit->content_type);
    job->head_sent = true;
    self->fns.head (job, 200, job->replay_type);
    return s_replay_more (job);
}

/* ---- public ---- */

bool
runner_job_cached (runner_job_t *job)
{
    return job->from_cache;
}

runner_job_t *
job_runner_start (job_runner_t *self, gw_job_t *msg, void *owner)
{
    runner_job_t *job = calloc (1, sizeof *job);
    if (!job)
        return NULL;
    job->runner = self;
    job->owner = owner;
    job->job_id = msg->job_id;
    job->request_id = msg->request_id;
    job->model = msg->model;
    job->body = msg->body;
    msg->request_id = msg->model = NULL;
    msg->body = (gw_bin_t) { 0 };
    job->dispatch = msg->dispatch;
    job->stream = msg->stream;
    job->client_usage = msg->client_usage;
    job->queue_wait_us = msg->queue_wait_us;
    job->api_key_id = msg->api_key_id;
    job->window = msg->flow_window;
    job->sse.keep_usage_chunk = msg->client_usage;
    job->retry_after_ms = -1;
    job->retry_timer = gw_timer_new (s_on_retry_timer, job);
    job->deadline_timer = gw_timer_new (s_on_deadline, job);
    job->nsteps = provider_table_route (self->providers, job->model, job->steps, MAX_STEPS);
    self->active++;
    job->next = self->jobs;
    if (self->jobs)
        self->jobs->prev = job;
    self->jobs = job;
    if (job->nsteps == 0) {
        char *body = gw_error_json ("invalid_request_error", "invalid_request_error", NULL, "Model Not Exist");
        s_finish (job, 400, "application/json", body, strlen (body));
        free (body);
        return NULL;
    }
    job->cache_lookup = msg->cache_lookup;
    job->cache_ttl_s = msg->cache_ttl_s;
    if ((job->cache_lookup || job->cache_ttl_s) && self->config.cache_max_bytes)
        job->cache_keyed = response_cache_key (job->api_key_id, job->stream, job->body.data, job->body.size,
                                               job->cache_key)
                           == 0;
    cache_answer_t hit;
    if (job->cache_keyed && job->cache_lookup
        && response_cache_get (self->cache, job->cache_key, gw_now_ms (), &hit))
        return s_serve_cached (job, &hit) ? job : NULL;
    //  A job that failed at once is already ended and freed: the caller must not
    //  keep it.
    return s_attempt (job) ? job : NULL;
}

/*  Resumes a paused transfer. curl may deliver what it held back at once,
    from inside this call (s_on_write is not re-entered from a callback). */
static void
s_resume (runner_job_t *job)
{
    if (!job->paused || !job->easy)
        return;
    job->paused = false;
    curl_easy_pause (job->easy, CURLPAUSE_CONT);
}

void
job_runner_acked (job_runner_t *self, runner_job_t *job, uint64_t bytes)
{
    (void) self;
    if (bytes <= job->acked_bytes)
        return;  //  an older ack, overtaken
    job->acked_bytes = bytes > job->sent_bytes ? job->sent_bytes : bytes;
    if (job->sent_bytes - job->acked_bytes >= job->window)
        return;
    if (job->replay.len)
        (void) s_replay_more (job);  //  may end the job
    else
        s_resume (job);
}

void
job_runner_cancel (job_runner_t *self, runner_job_t *job)
{
    if (job->cancelled)
        return;
    job->cancelled = true;
    if (job->replay.len) {
        //  A cached answer being replayed: nothing to drain, its usage is out.
        s_finish_error (job, 499, "client_closed", "The client went away.");
        return;
    }
    //  Nobody will take the rest: drain it at the provider's pace for its usage.
    s_resume (job);
    if (!job->easy || gw_timer_active (job->retry_timer)) {
        //  Between attempts: nothing to drain.
        gw_timer_stop (self->loop, job->retry_timer);
        s_finish_error (job, 499, "client_closed", "The client went away.");
        return;
    }
    gw_info ("runner", "client gone, draining request_id=%s", job->request_id);
    gw_timer_start (self->loop, job->deadline_timer, self->config.drain_timeout_ms);
}

runner_outcome_t
job_runner_no_outcome (job_runner_t *self)
{
    return (runner_outcome_t) { .attempts = 0, .cost_known = true, .cost_pico = 0, .currency = self->config.currency };
}

job_runner_t *
job_runner_new (gw_loop_t *loop, provider_table_t *providers, price_table_t *prices, usage_sink_fn *usage,
                void *usage_arg, const runner_config_t *config, const runner_fns_t *fns)
{
    job_runner_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->providers = providers;
    self->prices = prices;
    self->usage = usage;
    self->usage_arg = usage_arg;
    self->config = *config;
    self->fns = *fns;
    self->seed = (unsigned) gw_now_us ();
    self->cache = response_cache_new (config->cache_max_bytes, config->cache_entry_max_bytes);
    if (!self->cache) {
        free (self);
        return NULL;
    }
    self->multi = curl_multi_init ();
    self->curl_timer = gw_timer_new (s_on_curl_timeout, self);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETFUNCTION, s_on_curl_socket);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETDATA, self);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERFUNCTION, s_on_curl_timer);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERDATA, self);
    //  Keep enough idle connections per provider for the concurrency we run at.
    curl_multi_setopt (self->multi, CURLMOPT_MAXCONNECTS, 4096L);
    return self;
}

void
job_runner_destroy (job_runner_t **self_p)
{
    job_runner_t *self = *self_p;
    if (!self)
        return;
    //  Jobs still running when the grace period ran out: their calls are cut,
    //  but a call that was made is recorded (with what is known of its usage).
    //  The ingress re-queues those that sent nothing to their client, as a new
    //  dispatch whose own END will count its calls; the others end here, so
    //  that their END still says how many calls this dispatch made.
    while (self->jobs) {
        runner_job_t *job = self->jobs;
        //  Waiting for a retry: that attempt's event is already out.
        if (job->easy && !gw_timer_active (job->retry_timer)) {
            gw_warn ("runner", "cut at shutdown request_id=%s", job->request_id);
            call_usage_t usage = job->stream ? job->sse.usage : (call_usage_t) { 0 };
            s_emit_usage (job, &usage);
        }
        if (job->cancelled)
            s_finish_error (job, 499, "client_closed", "The client went away.");
        else if (job->head_sent)
            s_finish_error (job, 502, "dispatcher_stopped",
                            "The gateway worker serving this answer stopped; it is incomplete.");
        else
            s_job_destroy (&job);
    }
    gw_timer_destroy (self->loop, &self->curl_timer);
    curl_multi_cleanup (self->multi);
    cache_stats_t st = response_cache_stats (self->cache);
    if (st.hits + st.stores)
        gw_info ("runner", "response cache hits=%llu misses=%llu stores=%llu evictions=%llu entries=%zu bytes=%zu",
                 (unsigned long long) st.hits, (unsigned long long) st.misses, (unsigned long long) st.stores,
                 (unsigned long long) st.evictions, st.entries, st.bytes);
    response_cache_destroy (&self->cache);
    free (self);
    *self_p = NULL;
}
