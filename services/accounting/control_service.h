/*  control_service.h: the control endpoint, served by its own thread.

    A ROUTER bound at GW_CONTROL_BIND answers the ingresses and the operator
    tools: KEY_LOOKUP, ADMIT, RELEASE, INGRESS_ALIVE, ADMIN_REQUEST and
    REPORT_REQUEST. The thread has its own PostgreSQL connection (a usage_store
    of its own, reconnected with backoff), so a large usage batch on the main
    thread never delays an admission. Each turn takes everything waiting (up
    to a bound): the admissions share one transaction. Two worker threads,
    each with its own connection, take the rest over inproc PAIRs, so that
    admissions never wait behind it: RELEASE and INGRESS_ALIVE (a release may
    wait for a reservation row that a usage transaction holds until its
    commit; each turn's releases are one transaction, and one RELEASE_ACK per
    sender goes back through the control thread once committed; every ~10 s
    this worker also deletes lapsed reservations and minute rows no window
    reads any more), and REPORT_REQUEST and ADMIN_REQUEST (a report may scan
    for seconds).
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
