/*  usage_store.h: usage rows in PostgreSQL, written exactly once.

    The store is the only writer of the usage table. The control thread opens a
    store of its own: it is also that thread's PostgreSQL connection (keys,
    admissions, reports), migrated and reconnected the same way. A batch of events goes in as
    one transaction (COPY into a staging table, then INSERT ... ON CONFLICT
    (event_id) DO NOTHING), so a resent event is a no-op and a batch is either all
    durable or not at all. The schema is created by versioned migrations applied
    at connect time under an advisory lock, so several accounting instances may
    start together In the same transaction as the rows, the real cost and
    tokens of each key's new rows go into key_spend, and the reservations whose
    usage is now complete are settled (see docs/keys.md).
*/
#ifndef USAGE_STORE_H_INCLUDED
#define USAGE_STORE_H_INCLUDED

#include "gw_proto.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct usage_store_t usage_store_t;

/*  One row to store: the event plus its price, computed by the caller. */
typedef struct {
    const gw_usage_t *event;
    bool priced;  //  false: no price applied (cost stored as NULL)
    uint64_t cost_pico;  //  cost in 1e-12 of currency
} usage_row_t;

/*  dsn: libpq connection string. Does not connect yet. */
usage_store_t *usage_store_new (const char *dsn, const char *currency);
void usage_store_destroy (usage_store_t **self_p);

/*  Connects (if needed) and applies pending migrations. Returns 0 or -1 (logged). */
int usage_store_connect (usage_store_t *self);

/*  True while the last operation succeeded on a live connection. */
bool usage_store_ready (usage_store_t *self);

/*  Stores rows in one transaction. Returns 0 once committed (rows that already
    existed count as stored), -1 on any failure (nothing stored; the connection
    is reset on the next usage_store_connect). */
int usage_store_insert (usage_store_t *self, const usage_row_t *rows, size_t n);

/*  Runs a read-only query with text parameters on the store's connection.
    Returns the result (caller PQclears) or NULL on failure (logged; a broken
    connection makes the store not ready). */
struct pg_result;
struct pg_result *usage_store_query (usage_store_t *self, const char *sql, int nparams, const char *const *values);

/*  Runs any statement (a query, a command, BEGIN or COMMIT) with text
    parameters. Returns its result (caller PQclears), or NULL when it failed
    (logged; a broken connection makes the store not ready, an open
    transaction is then in the aborted state until ROLLBACK). */
struct pg_result *usage_store_exec (usage_store_t *self, const char *sql, int nparams, const char *const *values);

/*  The same for a statement run often (admissions, releases): parsed and
    planned once per connection under name (at most 8 names), then executed
    with PQexecPrepared, which saves the parse on every call. */
struct pg_result *usage_store_exec_prepared (usage_store_t *self, const char *name, const char *sql, int nparams,
                                             const char *const *values);

#endif
