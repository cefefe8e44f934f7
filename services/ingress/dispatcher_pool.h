/*  dispatcher_pool.h: the ingress side of the job protocol.

    Owns the ROUTER socket that dispatchers connect to, tracks each dispatcher's
    credits and liveness, queues jobs until some dispatcher serving the model has a
    credit, and routes HEAD/CHUNK/END back to the client that submitted the job.
    A dispatcher that goes silent loses its jobs: those that have not delivered a
    byte for the client are queued again (at the front), the others are ended with
    an error. Single-threaded: everything runs on the service's gw_loop.
*/
#ifndef DISPATCHER_POOL_H_INCLUDED
#define DISPATCHER_POOL_H_INCLUDED

#include "gw_loop.h"
#include "gw_proto.h"
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dispatcher_pool_t dispatcher_pool_t;
typedef struct pool_job_t pool_job_t;

/*  What the pool tells the submitter of a job. After end() the pool forgets the
    client pointer and frees the job. */
typedef struct {
    //  cached: the answer replays one from a dispatcher's response cache.
    void (*head) (void *client, uint32_t status, const char *content_type, bool cached);
    void (*chunk) (void *client, const uint8_t *data, size_t size);
    //  info is the dispatcher's END (cost, attempts), NULL when the pool itself
    //  ends the job (queue timeout, lost dispatcher).
    void (*end) (void *client, uint32_t status, const char *content_type, const uint8_t *body,
                 size_t size, const gw_end_t *info);
} pool_client_fns_t;

/*  How an admitted request's job ended, for its release at accounting: which
    dispatch was last and how many usage events it wrote (POOL_ATTEMPTS_UNKNOWN
    when a dispatcher was lost with it: its reservation then lapses instead). */
#define POOL_ATTEMPTS_UNKNOWN 2147483647u
typedef void (pool_done_fn) (void *arg, const char *request_id, uint64_t api_key_id, bool dispatched,
                             uint32_t dispatch, uint32_t attempts);

typedef struct {
    const char *endpoint;       //  ROUTER bind endpoint, e.g. tcp://127.0.0.1:5555
    const char *local_endpoint; //  a second one (inproc) for the local dispatcher, or NULL
    int heartbeat_ms;           //  interval of heartbeats both ways
    int liveness;               //  missed heartbeats before a dispatcher is dead
    int queue_timeout_ms;       //  longest a job waits for a credit before 503
    uint32_t stream_window;     //  a stream's bytes in flight beyond what its client took; 0 no limit
} pool_config_t;

dispatcher_pool_t *dispatcher_pool_new (gw_loop_t *loop, void *zmq_ctx, const pool_config_t *config,
                                        const pool_client_fns_t *fns);
void dispatcher_pool_destroy (dispatcher_pool_t **self_p);

/*  Queues a chat job. body is copied. api_key_id goes with the job into its
    usage events. admitted: call the done hook when the job is gone, whatever
    happened to the client. Returns the job handle, or NULL when out of memory. */
/*  What a job asks of the dispatchers' response cache (JOB.cache_*). */
typedef struct {
    bool lookup;  //  a cached answer will do
    uint32_t ttl_s;  //  keep a good answer this long; 0 do not
} pool_cache_t;

pool_job_t *dispatcher_pool_submit (dispatcher_pool_t *self, void *client, const char *request_id,
                                    const char *model, bool stream, bool client_usage,
                                    const char *body, size_t body_size, uint64_t api_key_id,
                                    bool admitted, pool_cache_t cache);

/*  Called once for every admitted job when the pool forgets it. */
void dispatcher_pool_on_done (dispatcher_pool_t *self, pool_done_fn *fn, void *arg);

/*  The client went away: the pool stops calling it. A queued job is dropped; a
    running job is cancelled at its dispatcher (which drains it for usage). */
void dispatcher_pool_cancel (dispatcher_pool_t *self, pool_job_t *job);

/*  The client has taken bytes of the job's stream so far (CHUNK bytes, in
    all). Call it at every take: the pool tells the job's dispatcher (STREAM_ACK)
    each half window, and at the heartbeat what is left. */
void dispatcher_pool_stream_taken (dispatcher_pool_t *self, pool_job_t *job, uint64_t bytes);

/*  True when at least one live dispatcher is connected. */
bool dispatcher_pool_ready (dispatcher_pool_t *self);

/*  1 if some live dispatcher serves model, 0 if none does, -1 if no dispatcher is
    live (the answer is unknown: the job should wait for one). */
int dispatcher_pool_knows_model (dispatcher_pool_t *self, const char *model);

/*  The models of live dispatchers, as an OpenAI list object (new reference). */
json_t *dispatcher_pool_models (dispatcher_pool_t *self);

void dispatcher_pool_test (bool verbose);


#endif
