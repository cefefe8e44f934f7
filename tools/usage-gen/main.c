/*  usage-gen: sends synthetic usage events to accounting through the real spool
    and sender, and waits until every one is acknowledged. For tests (exactly-once
    through crashes) and for the accounting benchmark.

    usage-gen --count N [--first K] [--endpoints E] [--spool DIR] [--timeout-s S]
    Events are deterministic: event i (from K) has id "gen-<i>", provider deepseek,
    model deepseek-chat and token counts derived from i, so two runs with the same
    range send the same events. Prints one JSON line with the totals the database
    must then hold, the cost computed with prices/prices.csv, and the rate. */
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "price_table.h"
#include "usage_sender.h"
#include "usage_spool.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct {
    usage_spool_t *spool;
    usage_sender_t *sender;
    uint64_t next, end;
    int64_t started_ms;
    int64_t deadline_ms;
    bool timed_out;
} s_gen_t;

static void
s_event (uint64_t i, int64_t started_ms, char *id, size_t idlen, gw_usage_t *ev)
{
    snprintf (id, idlen, "gen-%" PRIu64, i);
    *ev = (gw_usage_t) {
        .event_id = id,
        .request_id = id,
        .attempt = 1,
        .provider = "deepseek",
        .upstream_model = "deepseek-chat",
        .model = "deepseek-chat",
        .cache_hit_tokens = (i * 7) % 1000,
        .cache_miss_tokens = 10 + (i * 13) % 2000,
        .completion_tokens = 1 + (i * 31) % 4000,
        .reasoning_tokens = 0,
        .status = 200,
        .usage_known = true,
        .started_ms = (uint64_t) started_ms,
        .total_us = 1000,
    };
}

static void
s_on_tick (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    s_gen_t *g = arg;
    //  Submit in slices so acknowledgements flow while we generate.
    char id[64];
    for (int k = 0; k < 2000 && g->next < g->end; k++, g->next++) {
        gw_usage_t ev;
        s_event (g->next, g->started_ms, id, sizeof id, &ev);
        usage_sender_submit (g->sender, &ev);
    }
    if (g->next == g->end && usage_spool_pending (g->spool) == 0)
        gw_loop_stop (loop);
    else if (gw_now_ms () > g->deadline_ms) {
        g->timed_out = true;
        gw_loop_stop (loop);
    }
    else
        gw_timer_start (loop, timer, g->next < g->end ? 0 : 5);
}

int
main (int argc, char **argv)
{
    gw_loop_catch_signals ();
    gw_log_init ("usage-gen");
    uint64_t count = 1000, first = 0;
    const char *endpoints = "tcp://127.0.0.1:5556", *spool_dir = "var/spool/usage-gen";
    int timeout_s = 120;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp (argv[i], "--count"))
            count = strtoull (argv[i + 1], NULL, 10);
        else if (!strcmp (argv[i], "--first"))
            first = strtoull (argv[i + 1], NULL, 10);
        else if (!strcmp (argv[i], "--endpoints"))
            endpoints = argv[i + 1];
        else if (!strcmp (argv[i], "--spool"))
            spool_dir = argv[i + 1];
        else if (!strcmp (argv[i], "--timeout-s"))
            timeout_s = atoi (argv[i + 1]);
    }
    char err[256] = "";
    price_table_t *prices = price_table_load (gw_env_str ("GW_PRICES", "prices/prices.csv"), err, sizeof err);
    if (!prices) {
        fprintf (stderr, "usage-gen: %s\n", err);
        return 1;
    }
    //  A fixed start time keeps the expected cost the same for both runs.
    int64_t started_ms = gw_env_int ("USAGE_GEN_STARTED_MS", gw_wall_ms (), 0, INT64_MAX);
    const char *currency = gw_env_str ("GW_CURRENCY", "CNY");
    uint64_t hit = 0, miss = 0, out = 0, cost = 0;
    bool priced = true;
    char id[64];
    for (uint64_t i = first; i < first + count; i++) {
        gw_usage_t ev;
        s_event (i, started_ms, id, sizeof id, &ev);
        hit += ev.cache_hit_tokens;
        miss += ev.cache_miss_tokens;
        out += ev.completion_tokens;
        uint64_t c;
        if (price_table_cost (prices, ev.provider, ev.upstream_model, currency, started_ms, ev.cache_hit_tokens,
                              ev.cache_miss_tokens, ev.completion_tokens, &c))
            priced = false;
        else
            cost += c;
    }
    void *ctx = zmq_ctx_new ();
    gw_loop_t *loop = gw_loop_new ();
    s_gen_t g = { .next = first, .end = first + count, .started_ms = started_ms };
    g.spool = usage_spool_new (spool_dir, (size_t) 1 << 32);
    sender_config_t sc = { .endpoints = endpoints,
                           .resend_ms = (int) gw_env_int ("GW_USAGE_RESEND_MS", 1000, 10, 600000) };
    g.sender = g.spool ? usage_sender_new (loop, ctx, &sc, g.spool) : NULL;
    int rc = 1;
    if (g.sender) {
        int64_t t0 = gw_now_ms ();
        g.deadline_ms = t0 + (int64_t) timeout_s * 1000;
        gw_timer_t *tick = gw_timer_new (s_on_tick, &g);
        gw_timer_start (loop, tick, 0);
        gw_loop_run (loop);
        gw_timer_destroy (loop, &tick);
        double secs = (double) (gw_now_ms () - t0) / 1000.0;
        rc = g.timed_out || g.next != g.end || usage_spool_pending (g.spool) ? 1 : 0;
        printf ("{\"events\":%" PRIu64 ",\"acknowledged\":%s,\"cache_hit_tokens\":%" PRIu64
                ",\"cache_miss_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64
                ",\"cost_pico\":%s%" PRIu64 "%s,\"currency\":\"%s\",\"seconds\":%.3f,\"events_per_s\":%.0f}\n",
                count, rc ? "false" : "true", hit, miss, out, priced ? "" : "\"unpriced:", cost, priced ? "" : "\"",
                currency, secs, secs > 0 ? (double) count / secs : 0.0);
    }
    usage_sender_destroy (&g.sender);
    usage_spool_destroy (&g.spool);
    gw_loop_destroy (&loop);
    zmq_ctx_term (ctx);
    price_table_destroy (&prices);
    return rc;
}
