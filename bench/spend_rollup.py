#!/usr/bin/env python3
"""Benchmark: the alerter's overall spend query, from usage_events and from spend_hours.

Python 3 standard library only. Run from the repository after `make`:

    python3 bench/spend_rollup.py            # 3,000,000 rows: a month to date at ~1.3 calls/s
    python3 bench/spend_rollup.py --rows 300000

What it does, on a fresh private PostgreSQL 15 from tests/pg.py (fsync on):

1. Starts bin/accounting once so that it applies its migrations (schema 8: the
   spend_hours table and its trigger), then stops it.
2. Inserts --rows usage rows spread evenly from the start of this UTC month to now,
   in one INSERT (through the trigger, as the gateway's own inserts go), and runs
   VACUUM ANALYZE.
3. Runs, three times each, the overall spend query the alerter's `state` asked
   before schema 8 (day, week and month sums over usage_events) and the same
   sums over spend_hours (services/accounting/alert_store.c), as EXPLAIN ANALYZE
   (PostgreSQL's execution time) and plain through psql (wall time, psql's start
   included), and checks that both give the same three sums.
4. Times the migration's backfill query over the same rows: what upgrading a
   database of that size to schema 8 holds inserts back for.

The alerter runs this query every GW_ALERT_INTERVAL_MS (10 s by default).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("GW_BIN_DIR", os.path.join(ROOT, "bin"))

import harness  # noqa: E402
from pg import Postgres  # noqa: E402

# The periods the alerter reads (day, week, month), as its query filters them
OLD = ("SELECT coalesce(sum(cost_pico) FILTER (WHERE started_at >= date_trunc('day', now())), 0),"
       " coalesce(sum(cost_pico) FILTER (WHERE started_at >= date_trunc('week', now())), 0),"
       " coalesce(sum(cost_pico) FILTER (WHERE started_at >= date_trunc('month', now())), 0)"
       " FROM usage_events WHERE currency = 'CNY' AND started_at >= least(date_trunc('day', now()),"
       " date_trunc('week', now()), date_trunc('month', now()))")
NEW = OLD.replace("started_at", "hour").replace("FROM usage_events", "FROM spend_hours")
BACKFILL = ("SELECT currency, date_trunc('hour', started_at, 'UTC'), 0, sum(cost_pico) FROM usage_events"
            " WHERE cost_pico <> 0 GROUP BY 1, 2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000000)
    args = ap.parse_args()
    db = Postgres().start()
    try:
        acc = harness.start("accounting", [os.path.join(ROOT, "bin", "accounting")],
                            {"DATABASE_URL": db.dsn, "GW_PRICES": os.path.join(ROOT, "prices", "prices.csv"),
                             "GW_ACCOUNTING_BIND": f"tcp://127.0.0.1:{harness.free_port()}",
                             "GW_CONTROL_BIND": f"tcp://127.0.0.1:{harness.free_port()}"})
        deadline = time.monotonic() + 30
        while db.psql("SELECT to_regclass('spend_hours') IS NOT NULL").strip() != "t":
            if time.monotonic() > deadline:
                raise SystemExit("accounting did not migrate to schema 8 within 30 s")
            time.sleep(0.2)
        acc.stop()
        started = time.monotonic()
        db.psql(f"""INSERT INTO usage_events (event_id, request_id, dispatch, attempt, provider, upstream_model,
          model, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status, usage_known,
          streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at, currency, cost_pico)
          SELECT 'e' || g, 'r' || g, 0, 0, 'deepseek', 'deepseek-chat', 'deepseek-chat', 0, 100, 50, 0, 200,
          true, false, false, 10, 1000, 2000,
          date_trunc('month', now()) + (now() - date_trunc('month', now())) * g / {args.rows}, 'CNY', 1000000
          FROM generate_series(1, {args.rows}) g""", timeout=3600)
        db.psql("VACUUM ANALYZE usage_events", timeout=3600)
        print(f"rows: {args.rows} inserted in {time.monotonic() - started:.1f} s; "
              f"spend_hours rows: {db.psql('SELECT count(*) FROM spend_hours').strip()}")
        sums = {}
        for name, sql in (("usage_events", OLD), ("spend_hours", NEW)):
            explain, wall = [], []
            for _ in range(3):
                out = db.psql("EXPLAIN ANALYZE " + sql, timeout=600)
                explain += [float(l.split(":")[1].split()[0]) for l in out.splitlines() if "Execution Time" in l]
                started = time.monotonic()
                sums[name] = db.psql(sql, timeout=600).strip()
                wall.append((time.monotonic() - started) * 1000)
            print(f"{name}: execution {min(explain):.1f} / {sorted(explain)[1]:.1f} ms (min / median),"
                  f" through psql {sorted(wall)[1]:.0f} ms (median); sums {sums[name]}")
        if sums["usage_events"] != sums["spend_hours"]:
            raise SystemExit(f"the two disagree: {sums}")
        started = time.monotonic()
        db.psql(BACKFILL, timeout=3600)
        print(f"backfill query (the migration's sum): {time.monotonic() - started:.2f} s")
    finally:
        db.destroy()


if __name__ == "__main__":
    main()
