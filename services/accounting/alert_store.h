/*  alert_store.h: the alerter's operations on PostgreSQL (accounting is its only writer).

    The alerter holds no database credentials and no state of its own: it asks
    accounting (ALERT_REQUEST on the control endpoint, served by the report
    worker) to
      lease      be the one alerter that evaluates and sends (a lease in
                 alerter_lease, renewed by its holder, taken over when it lapses);
      state      the figures its rules read: each key's spend against its
                 effective budgets in the current UTC periods, the overall spend,
                 and the calls and errors of a recent window;
      claim      record an alert: (rule, subject, period, level) is unique, so
                 an alert is created once, however often and by however many
                 alerters it is claimed; a fresh alert gets one pending delivery
                 per channel, in the same transaction;
      resolve    close an open episodic alert (period "open"), so the rule can
                 fire again later;
      outbox     the deliveries due (pending, next attempt time reached);
      delivered  the outcome of one attempt: sent, or failed with a retry time.
    Bodies are JSON objects (docs/alerter.md).
*/
#ifndef ALERT_STORE_H_INCLUDED
#define ALERT_STORE_H_INCLUDED

#include "key_store.h"
#include "gw_proto.h"
#include "usage_store.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  Runs op with its JSON body. Returns the JSON answer (caller frees) and sets
    *status (200, 400, 404 unknown op, 503 database down). */
char *alert_store_handle (usage_store_t *db, const key_policy_t *policy, const char *currency, const char *op,
                          const void *body, size_t size, uint32_t *status);

/*  Records what an instance (dispatcher STATUS, ingress INGRESS_ALIVE as kind
    "ingress", accounting's own) said about itself, in the caller's
    transaction: its row in instances, with since when it has reported
    without a gap longer than gap_ms (fresh_since). A leaving instance's row
    is marked left (left_at): it stopped on purpose and is not silent.
    Returns 0, or -1 on a database error. */
int alert_store_instance (usage_store_t *db, const gw_status_t *st, int gap_ms);

void alert_store_test (bool verbose);

#endif
