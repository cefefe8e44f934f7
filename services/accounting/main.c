/*  accounting: the only writer of PostgreSQL. Wires configuration, the price
    table, the usage store and intake (ZeroMQ, main loop) and the control
    service (keys, admissions, admin, reports; its own thread and connection). */
#include "control_service.h"
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "price_table.h"
#include "usage_intake.h"
#include "usage_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

/*  The per-key defaults (unset: unlimited). Returns 0, or -1 when one is malformed. */
static int
s_key_policy (key_policy_t *policy)
{
    static const char *const names[KEY_NLIMITS] = {
        "GW_KEY_DEFAULT_RPM",        "GW_KEY_DEFAULT_TPM",         "GW_KEY_DEFAULT_CONCURRENCY",
        "GW_KEY_DEFAULT_BUDGET_DAY", "GW_KEY_DEFAULT_BUDGET_WEEK", "GW_KEY_DEFAULT_BUDGET_MONTH",
        "GW_KEY_DEFAULT_BUDGET_TOTAL",
    };
    int rc = 0;
    for (int i = 0; i < KEY_NLIMITS; i++)
        rc |= key_limit_from_env ((key_limit_t) i, names[i], &policy->defaults[i]);
    policy->reservation_ttl_s = (int) gw_env_int ("GW_RESERVATION_TTL_S", 900, 1, 86400 * 7);
    policy->alive_ttl_s = (int) gw_env_int ("GW_INGRESS_ALIVE_TTL_S", 15, 1, 3600);
    return rc;
}

int
main (void)
{
    gw_loop_catch_signals ();
    gw_log_init ("accounting");
    //  libpq tries GSSAPI encryption first when a Kerberos library is around,
    //  which costs each connection a round of probing and the process 0.8 MB.
    //  Whoever uses Kerberos says so (PGGSSENCMODE=prefer, or gssencmode= in
    //  DATABASE_URL, which wins over this).
    setenv ("PGGSSENCMODE", "disable", 0);
    const char *currency = gw_env_str ("GW_CURRENCY", "CNY");
    const char *prices_path = gw_env_str ("GW_PRICES", "prices/prices.csv");
    const char *dsn
        = gw_env_str ("DATABASE_URL", "host=127.0.0.1 port=5433 user=postgres dbname=gateway connect_timeout=5");
    intake_config_t intake_config = {
        .endpoint = gw_env_str ("GW_ACCOUNTING_BIND", "tcp://127.0.0.1:5556"),
        .currency = currency,
        .batch_max = (size_t) gw_env_int ("GW_ACCOUNTING_BATCH", 5000, 1, 100000),
        .linger_ms = (int) gw_env_int ("GW_ACCOUNTING_LINGER_MS", 5, 0, 1000),
    };
    control_config_t control_config = {
        .endpoint = gw_env_str ("GW_CONTROL_BIND", "tcp://127.0.0.1:5557"),
        .dsn = dsn,
        .currency = currency,
        .model_max_output = gw_env_str ("GW_MODEL_MAX_OUTPUT", "deepseek-chat=8192,deepseek-reasoner=65536"),
        .default_max_output = (uint64_t) gw_env_int ("GW_DEFAULT_MAX_OUTPUT", 8192, 1, INT32_MAX),
    };
    bool policy_ok = s_key_policy (&control_config.policy) == 0;
    char err[256] = "";
    price_table_t *prices = price_table_load (prices_path, err, sizeof err);
    if (!prices)
        gw_error ("main", "cannot load prices path=%s error=%s", prices_path, err);
    usage_store_t *store = usage_store_new (dsn, currency);
    void *zmq_ctx = gw_proto_context ();
    gw_loop_t *loop = gw_loop_new ();
    usage_intake_t *intake = policy_ok && prices && store && loop
                                 ? usage_intake_new (loop, zmq_ctx, &intake_config, store, prices)
                                 : NULL;
    control_service_t *control = intake ? control_service_new (zmq_ctx, &control_config, prices) : NULL;
    int rc = 1;
    if (control) {
        gw_info ("main", "started endpoint=%s control=%s prices=%s", intake_config.endpoint,
                 control_config.endpoint, prices_path);
        rc = gw_loop_run (loop) ? 1 : 0;
    }
    control_service_destroy (&control);
    usage_intake_destroy (&intake);
    gw_loop_destroy (&loop);
    zmq_ctx_term (zmq_ctx);
    usage_store_destroy (&store);
    price_table_destroy (&prices);
    gw_info ("main", "stopped");
    return rc;
}
