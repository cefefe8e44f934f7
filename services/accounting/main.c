/*  accounting: the only writer of PostgreSQL. Wires configuration, the price
    table, the usage store (libpq) and the usage intake (ZeroMQ) onto one loop. */
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "price_table.h"
#include "usage_intake.h"
#include "usage_store.h"

#include <stdio.h>
#include <zmq.h>

int
main (void)
{
    gw_loop_catch_signals ();
    gw_log_init ("accounting");
    const char *currency = gw_env_str ("GW_CURRENCY", "CNY");
    const char *prices_path = gw_env_str ("GW_PRICES", "prices/prices.csv");
    intake_config_t intake_config = {
        .endpoint = gw_env_str ("GW_ACCOUNTING_BIND", "tcp://127.0.0.1:5556"),
        .currency = currency,
        .batch_max = (size_t) gw_env_int ("GW_ACCOUNTING_BATCH", 5000, 1, 100000),
    };
    char err[256] = "";
    price_table_t *prices = price_table_load (prices_path, err, sizeof err);
    if (!prices)
        gw_error ("main", "cannot load prices path=%s error=%s", prices_path, err);
    usage_store_t *store = usage_store_new (
        gw_env_str ("DATABASE_URL", "host=127.0.0.1 port=5433 user=postgres dbname=gateway connect_timeout=5"), currency);
    void *zmq_ctx = zmq_ctx_new ();
    gw_loop_t *loop = gw_loop_new ();
    usage_intake_t *intake = prices && store && loop
                                 ? usage_intake_new (loop, zmq_ctx, &intake_config, store, prices)
                                 : NULL;
    int rc = 1;
    if (intake) {
        gw_info ("main", "started endpoint=%s prices=%s", intake_config.endpoint, prices_path);
        rc = gw_loop_run (loop) ? 1 : 0;
    }
    usage_intake_destroy (&intake);
    gw_loop_destroy (&loop);
    zmq_ctx_term (zmq_ctx);
    usage_store_destroy (&store);
    price_table_destroy (&prices);
    gw_info ("main", "stopped");
    return rc;
}
