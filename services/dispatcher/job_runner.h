/*  job_runner.h: runs chat jobs against upstream providers with libcurl.

    One curl multi handle drives every transfer of the process on the service's
    event loop, so connections to each provider are reused. A job walks its
    model's route: retries with exponential backoff and jitter on connection
    errors, 429 (honouring Retry-After), 500, 502, 503 and 504 while nothing has
    been sent to the client, then falls back to the next provider. Every upstream
    attempt produces one usage event. A job whose client went away is drained to
    its end (bounded by a deadline) so its real usage is known.

    Every end of a job reports how many usage events this dispatch emitted and
    what those calls cost: accounting settles a request's budget reservation once
    that many events of its last dispatch are stored, so the count is kept where
    the events are emitted and nowhere else.
*/
#ifndef JOB_RUNNER_H_INCLUDED
#define JOB_RUNNER_H_INCLUDED

#include "gw_loop.h"
#include "gw_proto.h"
#include "price_table.h"
#include "provider_table.h"
#include "response_cache.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct job_runner_t job_runner_t;
typedef struct runner_job_t runner_job_t;

/*  What the calls of an ended job's dispatch came to, for its END. */
typedef struct {
    uint32_t attempts;  //  upstream calls made: exactly the usage events emitted
    bool cost_known;  //  every call was priced
    uint64_t cost_pico;  //  their cost, 1e-12 currency units
    const char *currency;
    bool cached;  //  answered from the response cache
} runner_outcome_t;

/*  What a job tells its owner (the ingress link). After end() the job is freed. */
typedef struct {
    void (*head) (runner_job_t *job, uint32_t status, const char *content_type);
    void (*chunk) (runner_job_t *job, const char *data, size_t size);
    void (*end) (runner_job_t *job, uint32_t status, const char *content_type, const char *body,
                 size_t size, const runner_outcome_t *outcome);
} runner_fns_t;

typedef struct {
    int connect_timeout_ms;
    int first_byte_timeout_ms;
    int total_timeout_ms;
    int drain_timeout_ms;  //  how long a job whose client left is drained
    int retry_max;  //  retries per provider after the first attempt
    int retry_base_ms;
    int retry_cap_ms;
    int retry_after_max_ms;  //  a longer Retry-After is not waited for
    size_t max_body_bytes;  //  a larger non-streamed answer is refused
    const char *currency;  //  of the costs reported at each end (GW_CURRENCY)
    size_t cache_max_bytes;  //  the response cache's bound; 0: no cache
    size_t cache_entry_max_bytes;  //  a larger answer is not kept
    uint32_t cache_ttl_max_s;  //  a longer TTL asked for is cut to this
} runner_config_t;

/*  Where each upstream call's usage event goes (the spool, the log). */
typedef void (usage_sink_fn) (void *arg, const gw_usage_t *event);

/*  prices (borrowed, may be NULL: every cost is then unknown) prices each call;
    config->currency must outlive the runner. */
job_runner_t *job_runner_new (gw_loop_t *loop, provider_table_t *providers, price_table_t *prices,
                              usage_sink_fn *usage, void *usage_arg, const runner_config_t *config,
                              const runner_fns_t *fns);

/*  Cuts the jobs still running: a call in progress still emits its usage event;
    a job whose client has part of the answer, or has gone, ends with an error
    (its owner hears end() as usual), while one whose client has nothing yet is
    dropped without end(), so its ingress dispatches it again elsewhere. */
void job_runner_destroy (job_runner_t **self_p);

/*  Starts a job; takes the strings and body out of msg (they are NULLed).
    owner and job_id are for the caller's use (runner_job_owner/_id). */
runner_job_t *job_runner_start (job_runner_t *self, gw_job_t *msg, void *owner);

/*  The ingress says the client has taken bytes of the stream so far (its
    STREAM_ACK): a transfer paused at its window goes on. */
void job_runner_acked (job_runner_t *self, runner_job_t *job, uint64_t bytes);

/*  The client is gone: stop relaying, drain for usage, then end as usual. */
void job_runner_cancel (job_runner_t *self, runner_job_t *job);

void *runner_job_owner (runner_job_t *job);
/*  The job is answered from the response cache (so are its HEAD and END). */
bool runner_job_cached (runner_job_t *job);
/*  The ingress job id; 0 once the owner marked the job forgotten by its ingress. */
uint64_t runner_job_id (runner_job_t *job);
void runner_job_forget (runner_job_t *job);

/*  Jobs running now. */
size_t job_runner_active (job_runner_t *self);

/*  What a job that never reached the runner reports: no call, nothing spent. */
runner_outcome_t job_runner_no_outcome (job_runner_t *self);


#endif
