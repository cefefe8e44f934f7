/*  job_runner.h: runs chat jobs against upstream providers with libcurl.

    One curl multi handle drives every transfer of the process on the service's
    event loop, so connections to each provider are reused. A job walks its
    model's route: retries with exponential backoff and jitter on connection
    errors, 429 (honouring Retry-After), 500, 502, 503 and 504 while nothing has
    been sent to the client, then falls back to the next provider. Every upstream
    attempt produces one usage event. A job whose client went away is drained to
    its end (bounded by a deadline) so its real usage is known.
*/
#ifndef JOB_RUNNER_H_INCLUDED
#define JOB_RUNNER_H_INCLUDED

#include "gw_loop.h"
#include "gw_proto.h"
#include "provider_table.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct job_runner_t job_runner_t;
typedef struct runner_job_t runner_job_t;

/*  What a job tells its owner (the ingress link). After end() the job is freed. */
typedef struct {
    void (*head) (runner_job_t *job, uint32_t status, const char *content_type);
    void (*chunk) (runner_job_t *job, const char *data, size_t size);
    void (*end) (runner_job_t *job, uint32_t status, const char *content_type, const char *body,
                 size_t size);
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
} runner_config_t;

/*  Where each upstream call's usage event goes (the spool, the log). */
typedef void (usage_sink_fn) (void *arg, const gw_usage_t *event);

job_runner_t *job_runner_new (gw_loop_t *loop, provider_table_t *providers, usage_sink_fn *usage,
                              void *usage_arg, const runner_config_t *config, const runner_fns_t *fns);
void job_runner_destroy (job_runner_t **self_p);

/*  Starts a job; takes the strings and body out of msg (they are NULLed).
    owner and job_id are for the caller's use (runner_job_owner/_id). */
runner_job_t *job_runner_start (job_runner_t *self, gw_job_t *msg, void *owner);

/*  The client is gone: stop relaying, drain for usage, then end as usual. */
void job_runner_cancel (job_runner_t *self, runner_job_t *job);

void *runner_job_owner (runner_job_t *job);
/*  The ingress job id; 0 once the owner marked the job forgotten by its ingress. */
uint64_t runner_job_id (runner_job_t *job);
void runner_job_forget (runner_job_t *job);

/*  Jobs running now. */
size_t job_runner_active (job_runner_t *self);


#endif
