/*  key_cache.h: what the ingress knows about the gateway keys it was shown.

    Entries are keyed by the key's SHA-256, never by the key. A key not in the
    cache is asked of accounting (KEY_LOOKUP); requests presenting the same key
    meanwhile wait on that one question. Answers, valid or not, are kept for
    the cache TTL: that is the bound on how long a revoked key of a request
    that needs no admission keeps working on this ingress. The cache holds at
    most max_entries; beyond that, answers for unknown keys are not kept (a
    flood of random keys cannot grow it).
*/
#ifndef KEY_CACHE_H_INCLUDED
#define KEY_CACHE_H_INCLUDED

#include "control_client.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct key_cache_t key_cache_t;

typedef struct {
    uint64_t key_id;
    int64_t expires_ms;  //  0: never
    gw_strlist_t models;  //  empty: all
    bool admit;  //  limits or budgets: each request needs ADMIT
    uint32_t cache_ttl_s;  //  opts in to the response cache; 0 no
} key_info_t;

typedef enum { KEY_VALID, KEY_INVALID, KEY_UNAVAILABLE, KEY_PENDING } key_status_t;

/*  The answer for one waiting request. info is only valid during the call. */
typedef void (key_answer_fn) (void *client, key_status_t status, const key_info_t *info);

/*  A request waiting for a lookup; embedded in the caller's request. */
typedef struct key_waiter_t {
    struct key_waiter_t *prev, *next;
    struct s_entry_t *entry;
    key_answer_fn *fn;
    void *client;
} key_waiter_t;

key_cache_t *key_cache_new (control_client_t *control, int ttl_ms, size_t max_entries);
void key_cache_destroy (key_cache_t **self_p);

/*  Checks a presented key. KEY_VALID fills *info (valid until the next cache
    call); KEY_INVALID for unknown, revoked or expired keys alike; KEY_PENDING
    means waiter->fn will be called once, unless key_cache_cancel() first. */
key_status_t key_cache_check (key_cache_t *self, const char *key, size_t len, key_waiter_t *waiter,
                              key_answer_fn *fn, void *client, const key_info_t **info);

/*  The waiting request went away. Safe on a waiter that is not waiting. */
void key_cache_cancel (key_cache_t *self, key_waiter_t *waiter);

/*  True when model is one the key may use. */
bool key_info_allows (const key_info_t *info, const char *model);

void key_cache_test (bool verbose);

#endif
