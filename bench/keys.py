#!/usr/bin/env python3
"""What a gateway key costs a request: the key cache and the admission.

One run, one machine, one stack (tests/test_keys.py's KeyStack: a private
PostgreSQL with fsync on, one accounting instance, the mock upstream, one
dispatcher spooling usage, two ingresses with GW_AUTH=keys), and wrk at
concurrency 1 and 16 against the same ingress with four kinds of request:

  floor      the mock upstream directly (no gateway at all)
  unlimited  a key with no limit and no budget: the ingress's key cache only
  budget     a key with a daily budget only: + one admission per request
  limited    rpm, tpm, concurrency and budgets all set (high enough never to
             refuse): the whole of gw_admit

The figures that matter are the differences within the run: unlimited - floor
(the gateway hop with keys on) and budget/limited - unlimited (the admission).
Rounds are interleaved (floor, unlimited, budget, limited, floor, ...) so drift of
a shared machine hits all kinds alike; medians over rounds are reported.

    python3 bench/keys.py [--rounds 3] [--seconds 5] [--out bench/keys-results.json]
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from test_keys import KeyStack  # noqa: E402

BODY = json.dumps({"model": "deepseek-chat", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Hello"}]})
LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), summary.duration))
end
"""


def wrk(url, key, connections, seconds):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (BODY, key))
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
                              url + "/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 30)
    finally:
        os.unlink(script)
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise RuntimeError("wrk said: " + out.stdout + out.stderr)
    n, errors, p50, p90, p99, duration_us = map(int, m.groups())
    return {"requests": n, "errors": errors, "rps": n / (duration_us / 1e6), "p50_us": p50, "p90_us": p90,
            "p99_us": p99}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", default="1,16")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "keys-results.json"))
    args = ap.parse_args()
    ks = KeyStack(accountings=1)
    try:
        unlimited = ks.create_key("bench-unlimited")["key"]
        budget = ks.create_key("bench-budget", budget_day="100000")["key"]
        limited = ks.create_key("bench-limited", rpm=100000000, tpm=100000000000, concurrency=10000,
                                budget_day="100000", budget_week="100000", budget_month="100000",
                                budget_total="100000")["key"]
        kinds = [("floor", ks.mock_url, ks.upstream_key), ("unlimited", ks.url, unlimited),
                 ("budget", ks.url, budget), ("limited", ks.url, limited)]
        # Warm up: connections, the key cache, PostgreSQL's plans.
        for _, url, key in kinds:
            wrk(url, key, 4, 1)
        results = {}
        for c in [int(x) for x in args.connections.split(",")]:
            for r in range(args.rounds):
                for name, url, key in kinds:
                    res = wrk(url, key, c, args.seconds)
                    results.setdefault(f"c{c}", {}).setdefault(name, []).append(res)
                    print(f"c{c} round {r + 1} {name:9s} {res['rps']:8.0f} req/s  p50 {res['p50_us']} us"
                          f"  p90 {res['p90_us']} us  p99 {res['p99_us']} us  errors {res['errors']}", flush=True)
        summary = {}
        for c, by_kind in results.items():
            summary[c] = {}
            for name, runs in by_kind.items():
                summary[c][name] = {k: statistics.median(run[k] for run in runs)
                                    for k in ("rps", "p50_us", "p90_us", "p99_us")}
                summary[c][name]["errors"] = sum(run["errors"] for run in runs)
        machine = f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}"
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "rounds": args.rounds, "seconds": args.seconds, "runs": results,
                       "median": summary}, f, indent=1)
        print("\nmedians over rounds (us; added = minus the row above it in the same run)")
        print("| concurrency | request | req/s | p50 | p90 | p99 | p50 added |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for c, by_kind in summary.items():
            prev = None
            for name in ("floor", "unlimited", "budget", "limited"):
                s = by_kind[name]
                base = by_kind["unlimited"] if name == "limited" else prev
                added = f"+{s['p50_us'] - base['p50_us']:.0f}" if base else ""
                print(f"| {c[1:]} | {name} | {s['rps']:.0f} | {s['p50_us']:.0f} | {s['p90_us']:.0f} "
                      f"| {s['p99_us']:.0f} | {added} |")
                prev = s
    finally:
        time.sleep(1)  # the last run's requests in flight finish before the stack stops
        ks.close()


if __name__ == "__main__":
    main()
