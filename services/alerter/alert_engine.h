/*  alert_engine.h: the alerter's cycle: lease, evaluate, claim, deliver.

    Every interval the engine asks accounting for the leader lease (one alerter
    evaluates and sends; the others wait to take over when the lease lapses).
    The leader asks for the state, runs the rules (alert_rules.h), claims what
    they say (accounting keeps each alert once, with one pending delivery per
    channel) and resolves what is over, then takes the deliveries due from the
    outbox and sends them with the notifier. Each attempt's outcome goes back
    to accounting: sent, or failed with the next attempt's time (exponential
    backoff). Sending is asynchronous and never holds up the next evaluation;
    a delivery is never sent twice at once. What happens while the alerter is
    down is caught up on its next evaluation (the state is current spend, not
    events), and what it had not delivered is still in the outbox.
*/
#ifndef ALERT_ENGINE_H_INCLUDED
#define ALERT_ENGINE_H_INCLUDED

#include "alert_rules.h"
#include "gw_loop.h"
#include "notifier.h"

typedef struct alert_engine_t alert_engine_t;

typedef struct {
    const char *endpoints;  //  accounting control endpoints
    const char *alerter_id;  //  this instance, for the lease
    int interval_ms;  //  evaluation period
    int lease_ms;  //  lease lifetime (renewed every interval)
    int timeout_ms;  //  an unanswered question is given up after this
    int retry_base_ms, retry_max_ms;  //  delivery backoff
    //  Which episodic rules send a notice when they resolve: "all" (or "1"),
    //  "none" (or "0"), or a comma-separated list of rule names.
    const char *resolved_notice;
    alert_rules_config_t rules;
} engine_config_t;

alert_engine_t *alert_engine_new (gw_loop_t *loop, void *zmq_ctx, const engine_config_t *config,
                                  notifier_t *notifier);
void alert_engine_destroy (alert_engine_t **self_p);

#endif
