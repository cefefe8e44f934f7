/*  control_service.h: the control endpoint, served by its own thread.

    A ROUTER bound at GW_CONTROL_BIND answers the ingresses and the operator
    tools: KEY_LOOKUP, ADMIT, RELEASE, INGRESS_ALIVE, ADMIN_REQUEST and
    REPORT_REQUEST. The thread has its own PostgreSQL connection (a usage_store
    of its own, reconnected with backoff), so a large usage batch on the main
    thread never delays an admission. Each turn takes everything waiting (up
    to a bound): the admissions share one transaction. RELEASE and
    INGRESS_ALIVE go on over an inproc PAIR to a second thread with a third
    connection: a release may wait for a reservation row that a usage
    transaction holds until its commit, and admissions must not wait behind
    it. That worker stores each turn's releases in one transaction and sends
    one RELEASE_ACK per sender, back through the control thread, once
    committed; every ~10 s it deletes lapsed reservations and minute rows no
    window reads any more.
*/
#ifndef CONTROL_SERVICE_H_INCLUDED
#define CONTROL_SERVICE_H_INCLUDED

#include "key_store.h"
#include "price_table.h"

typedef struct control_service_t control_service_t;

typedef struct {
    const char *endpoint;  //  ROUTER bind endpoint
    const char *dsn;  //  libpq connection string
    const char *currency;  //  budgets and prices in this currency
    const char *model_max_output;  //  "model=tokens,..." output caps
    uint64_t default_max_output;  //  cap of a model not listed
    key_policy_t policy;
} control_config_t;

/*  Binds the endpoint and starts the thread. prices is borrowed and must
    outlive the service. NULL (logged) when the endpoint cannot be bound. */
control_service_t *control_service_new (void *zmq_ctx, const control_config_t *config, price_table_t *prices);

/*  Stops the thread (within ~200 ms), closes its socket and connection. */
void control_service_destroy (control_service_t **self_p);

#endif
