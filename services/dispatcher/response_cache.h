/*  response_cache.h: the dispatcher's exact-match response cache.

    A request whose ingress allows it (JOB.cache_lookup, JOB.cache_ttl_s) may be
    answered from here instead of upstream: same gateway key, same stream flag,
    same JSON body once keys are sorted and whitespace dropped. Only whole good
    answers are kept (HTTP 200, a stream that reached [DONE]), byte for byte as
    the client got them, with the usage of the call that made them, so a hit
    replays the same answer and its usage row says what it would have cost.

    Memory is bounded: the entries' bytes never exceed max_bytes (least recently
    used go first) and an answer larger than entry_max_bytes is not kept. An
    entry lives for the TTL its request asked for. One cache per dispatcher
    process, used from its loop thread only.
*/
#ifndef RESPONSE_CACHE_H_INCLUDED
#define RESPONSE_CACHE_H_INCLUDED

#include "call_usage.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RESPONSE_CACHE_KEY_SIZE 32

typedef struct response_cache_t response_cache_t;

/*  An answer, as put in or as found. Found strings and bytes belong to the
    cache and stay valid until its next put or destroy. */
typedef struct {
    const char *content_type;
    const uint8_t *body;
    size_t size;
    const char *provider;  //  where the answer came from
    const char *upstream_model;
    call_usage_t usage;  //  of the call that made it
} cache_answer_t;

typedef struct {
    size_t entries;
    size_t bytes;
    uint64_t hits, misses, stores, evictions, expired;
} cache_stats_t;

/*  max_bytes 0: a cache that keeps nothing. */
response_cache_t *response_cache_new (size_t max_bytes, size_t entry_max_bytes);
void response_cache_destroy (response_cache_t **self_p);

/*  The key of a request: a SHA-256 over the gateway key, the stream flag and
    the body in canonical form. -1 when the body is not a JSON object. */
int response_cache_key (uint64_t api_key_id, bool stream, const uint8_t *body, size_t size,
                        uint8_t key[RESPONSE_CACHE_KEY_SIZE]);

/*  Finds a live answer (and counts it used). false on a miss. */
bool response_cache_get (response_cache_t *self, const uint8_t key[RESPONSE_CACHE_KEY_SIZE], int64_t now_ms,
                         cache_answer_t *out);

/*  Keeps a copy of answer for ttl_s seconds, replacing what the key held.
    Returns 0, or -1 when it is not kept (too large, no memory, cache off). */
int response_cache_put (response_cache_t *self, const uint8_t key[RESPONSE_CACHE_KEY_SIZE], int64_t now_ms,
                        uint32_t ttl_s, const cache_answer_t *answer);

/*  Whether an answer of this many bytes could be kept: callers stop collecting
    a stream's bytes once it could not. */
bool response_cache_fits (response_cache_t *self, size_t size);

cache_stats_t response_cache_stats (response_cache_t *self);

void response_cache_test (bool verbose);

#endif
