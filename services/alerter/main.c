/*  alerter: sends each alert once, by email and webhooks. Wires configuration,
    the notifier (SMTP and webhooks over libcurl) and the engine (lease, rules,
    claims and deliveries through accounting) onto one loop. */
#include "alert_engine.h"
#include "gw_env.h"
#include "gw_id.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "notifier.h"

#include <curl/curl.h>
#include <stdio.h>
#include "gw_proto.h"
#include <zmq.h>

int
main (void)
{
    gw_loop_catch_signals ();
    gw_log_init ("alerter");
    char id[48];
    gw_id_uuid (id);
    engine_config_t config = {
        .endpoints = gw_env_str ("GW_CONTROL_ENDPOINTS", "tcp://127.0.0.1:5557"),
        .alerter_id = gw_env_str ("GW_ALERTER_ID", id),
        .interval_ms = (int) gw_env_int ("GW_ALERT_INTERVAL_MS", 10000, 100, 3600000),
        .timeout_ms = (int) gw_env_int ("GW_CONTROL_TIMEOUT_MS", 5000, 10, 600000),
        .retry_base_ms = (int) gw_env_int ("GW_ALERT_RETRY_BASE_MS", 5000, 10, 3600000),
        .retry_max_ms = (int) gw_env_int ("GW_ALERT_RETRY_MAX_MS", 300000, 10, 86400000),
        .resolved_notice = gw_env_str ("GW_ALERT_RESOLVED_NOTICE", "all"),
    };
    //  The lease outlives a few missed renewals, so a slow turn does not hand
    //  the sending over; a dead leader is replaced within it.
    int64_t lease = 3 * (int64_t) config.interval_ms;
    config.lease_ms = (int) gw_env_int ("GW_ALERT_LEASE_MS", lease < 600000 ? lease : 600000, 100, 600000);
    if (config.lease_ms <= config.interval_ms)
        gw_warn ("main", "GW_ALERT_LEASE_MS=%d is not longer than GW_ALERT_INTERVAL_MS=%d: the lead may change hands "
                         "between evaluations", config.lease_ms, config.interval_ms);
    int rc = 1;
    void *zmq_ctx = gw_proto_context ();
    gw_loop_t *loop = gw_loop_new ();
    notifier_t *notifier = NULL;
    alert_engine_t *engine = NULL;
    if (alert_rules_config_from_env (&config.rules) == 0 && loop && (notifier = notifier_new (loop))) {
        if (notifier_channels (notifier) == 0)
            gw_warn ("main", "no channel configured (GW_ALERT_EMAIL_TO, GW_ALERT_WEBHOOKS): alerts are recorded, "
                             "not sent");
        engine = alert_engine_new (loop, zmq_ctx, &config, notifier);
    }
    if (engine)
        rc = gw_loop_run (loop) ? 1 : 0;
    //  The notifier first: it drops sends in progress without calling back, and
    //  the engine then frees what they carried. Unsent deliveries stay pending.
    notifier_destroy (&notifier);
    alert_engine_destroy (&engine);
    gw_loop_destroy (&loop);
    zmq_ctx_term (zmq_ctx);
    curl_global_cleanup ();
    gw_info ("main", "stopped");
    return rc;
}
