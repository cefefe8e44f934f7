/*  key_store.h: gateway keys, admissions and reservations in PostgreSQL.

    Every statement of the keys' side of accounting, run on a store's
    connection (the control thread's own). The admission itself is one call of
    gw_admit (migration 2), which locks the key's row, reads spend, windows and
    reservations in one statement, and either writes the reservation and the
    request count or nothing. Callers may wrap several calls in one transaction
    (key_store_begin/commit): none of these statements fails on its own input.
*/
#ifndef KEY_STORE_H_INCLUDED
#define KEY_STORE_H_INCLUDED

#include "key_limits.h"
#include "usage_store.h"

#include <stdbool.h>
#include <stdint.h>

/*  What the service applies to every key: defaults and lifetimes. */
typedef struct {
    int64_t defaults[KEY_NLIMITS];  //  KEY_LIMIT_UNLIMITED when unset
    int reservation_ttl_s;  //  an unsettled reservation lapses after this
    int alive_ttl_s;  //  an ingress not heard from for this long frees its slots
} key_policy_t;

/*  One key as stored, with its spend in the current UTC periods. */
typedef struct {
    uint64_t id;
    char *name, *prefix;
    char *models_json;  //  JSON array of strings
    char created_at[32], expires_at[32], revoked_at[32];  //  RFC 3339 UTC, "" for null
    int64_t expires_ms;  //  0: never
    int64_t limits[KEY_NLIMITS];  //  a value, KEY_LIMIT_DEFAULT or KEY_LIMIT_UNLIMITED
    int64_t spend[4];  //  pico-units this day, week, month, in total
    int64_t cache_ttl_s;  //  the key opts in to the response cache; 0 no
} key_record_t;

/*  Fields to write; only those marked present are. */
typedef struct {
    bool has_name, has_expires, has_models, has_cache_ttl;
    bool has_limit[KEY_NLIMITS];
    const char *name;
    int64_t expires_ms;  //  0: never
    const char *models_json;
    int64_t limits[KEY_NLIMITS];
    int64_t cache_ttl_s;
} key_fields_t;

/*  One admission to decide. */
typedef struct {
    const char *request_id, *ingress_id;
    uint64_t key_id;
    int64_t cost_pico;  //  the request's maximum cost
    int64_t tokens;  //  prompt estimate plus output cap
    const gw_strlist_t *ended;  //  the ingress's ended requests of this key (not in progress)
} key_admission_t;

/*  What gw_admit decided and the figures behind it. Limits are -1 when none. */
typedef struct {
    int status;  //  200, 429 or 401
    char code[32];
    int64_t reserved_pico;
    int64_t elapsed_ms;  //  into the current minute
    int64_t rpm_limit, rpm_prev, rpm_curr;
    int64_t tpm_limit, tpm_prev, tpm_curr;  //  tpm_curr includes running calls' estimates
    int64_t conc_limit, busy;
    int64_t budget_limit, budget_used;  //  the budget refused, spent plus reserved
    char reset_at[32];  //  when that budget's period ends, RFC 3339 UTC
} key_verdict_t;

/*  Frees what a record owns and zeroes it. */
void key_record_clear (key_record_t *record);

/*  True when the key has any limit or budget once defaults apply. */
bool key_record_limited (const key_record_t *record, const key_policy_t *policy);

/*  The valid key (not revoked, not expired) with that hash. Returns 1 and fills
    record, 0 when there is none, -1 when the database failed. */
int key_store_lookup (usage_store_t *db, const char *key_hash, key_record_t *record);

/*  Transactions around several calls below. Return 0 or -1. */
int key_store_begin (usage_store_t *db);
/*  A transaction whose commit does not wait for the WAL flush. For releases and
    liveness only: a crash of PostgreSQL may forget the last fraction of a second
    of them, which errs on the safe side (a slot or reservation held until it
    lapses), and their row locks are not held through an fsync that the next
    admission and usage batch would wait for. Never for admissions. */
int key_store_begin_lazy (usage_store_t *db);
int key_store_commit (usage_store_t *db);
void key_store_rollback (usage_store_t *db);

/*  Decides one admission. Returns 0 with verdict filled, -1 when the database failed. */
int key_store_admit (usage_store_t *db, const key_policy_t *policy, const key_admission_t *admission,
                     key_verdict_t *verdict);

/*  Releases a request's reservation (see gw_release). Returns 0 or -1. */
int key_store_release (usage_store_t *db, const char *request_id, bool dispatched, uint32_t dispatch,
                       uint32_t attempts);

/*  Records that an ingress is alive now; a leaving one (stopped cleanly) is
    forgotten, so its slots free once its reservations are older than
    GW_INGRESS_ALIVE_TTL_S, not after that TTL from now. Returns 0 or -1. */
int key_store_alive (usage_store_t *db, const char *ingress_id, bool leaving);

/*  Deletes lapsed reservations and minute rows no window looks at. Returns 0 or -1. */
int key_store_housekeep (usage_store_t *db);

/*  Admin: creates a key with the given hash and display prefix. Returns 0 with *id set, or -1. */
int key_store_create (usage_store_t *db, const char *key_hash, const char *prefix, const key_fields_t *fields,
                      uint64_t *id);

/*  Admin: changes the present fields. Returns 1 done, 0 no such key, -1 failed. */
int key_store_update (usage_store_t *db, uint64_t id, const key_fields_t *fields);

/*  Admin: revokes a key (keeps the first revocation time). Returns 1, 0 or -1 as above. */
int key_store_revoke (usage_store_t *db, uint64_t id);

/*  Admin: one key, revoked or not. Returns 1 found, 0 not, -1 failed. */
int key_store_get (usage_store_t *db, uint64_t id, key_record_t *record);

/*  Admin: every key by id. Returns 0 with *records (caller clears each and frees
    the array) and *count, or -1. */
int key_store_list (usage_store_t *db, key_record_t **records, size_t *count);

#endif
