/*  usage_intake.h: usage events from dispatchers into the store, acknowledged
    only after commit.

    A ROUTER socket receives USAGE messages from every dispatcher's spool. Events
    are taken in batches (all that is waiting, up to a bound), priced, stored in
    one transaction, and only then acknowledged to the dispatcher that sent each
    one (USAGE_ACK). When PostgreSQL is unreachable nothing is acknowledged: the
    dispatchers keep the events and send them again, and the intake reconnects
    with backoff.
*/
#ifndef USAGE_INTAKE_H_INCLUDED
#define USAGE_INTAKE_H_INCLUDED

#include "gw_loop.h"
#include "price_table.h"
#include "usage_store.h"

typedef struct usage_intake_t usage_intake_t;

typedef struct {
    const char *endpoint;  //  ROUTER bind endpoint
    const char *currency;  //  prices in this currency apply
    size_t batch_max;  //  most events per transaction
    int linger_ms;  //  how long received events wait for more before they are stored
} intake_config_t;

usage_intake_t *usage_intake_new (gw_loop_t *loop, void *zmq_ctx, const intake_config_t *config,
                                  usage_store_t *store, price_table_t *prices);
void usage_intake_destroy (usage_intake_t **self_p);

#endif
