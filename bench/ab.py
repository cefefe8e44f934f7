#!/usr/bin/env python3
"""Before and after: the same load against two builds of the gateway, interleaved.

Each round starts, for each build in turn, a fresh stack (tests/test_keys.py's
KeyStack: private PostgreSQL with fsync on, one accounting instance, the mock
upstream, one dispatcher spooling usage, an ingress with GW_AUTH=keys) and a key
without limits, then runs wrk against the ingress at each concurrency, and reads
the CPU time each process spent per request (/proc/<pid>/stat, PostgreSQL's
backends included). Builds alternate within each round, so the drift of a
shared machine hits both alike; medians over rounds are reported.

    git worktree add /tmp/base <commit> && make -C /tmp/base
    python3 bench/ab.py --before /tmp/base/bin --after bin [--rounds 3] [--seconds 4]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = """wrk.method = "POST"
wrk.body = '{"model":"deepseek-chat","max_tokens":16,"messages":[{"role":"user","content":"Hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d\\n", summary.requests,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
"""

# One stack, one build: run in a child process, because the tests' helpers
# read the build directory (GW_BIN_DIR) when they are imported.
CHILD = r"""
import json, os, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_keys import KeyStack
conns, seconds, lua = json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tck = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0

def postgres():
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()
    return sum(cpu(p) for p in out)

ks = KeyStack(accountings=1)
try:
    key = ks.create_key("ab")["key"]
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(lua % key)
    script.close()
    procs = {"ingress": ks.stack.ingresses[0].proc.pid, "dispatcher": ks.stack.dispatchers[0].proc.pid,
             "accounting": ks.accountings[0].proc.pid}
    url = ks.url + "/v1/chat/completions"
    subprocess.run(["wrk", "-t1", "-c4", "-d1s", "-s", script.name, url], capture_output=True)  # warm up
    out = {}
    for c in conns:
        before = {k: cpu(p) for k, p in procs.items()}
        before["postgres"] = postgres()
        run = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{seconds}s", "-s", script.name, url],
                             capture_output=True, text=True).stdout
        after = {k: cpu(p) for k, p in procs.items()}
        after["postgres"] = postgres()
        line = [l for l in run.splitlines() if l.startswith("RESULT")][0].split()
        n, p50, p99, dur = (int(x) for x in line[1:])
        out[c] = {"rps": n * 1e6 / dur, "p50_us": p50, "p99_us": p99,
                  "cpu_us": {k: (after[k] - before[k]) * 1e6 / tck / max(n, 1) for k in after}}
    print("JSON " + json.dumps(out))
finally:
    ks.close()
"""


def one(build, conns, seconds):
    env = dict(os.environ, GW_BIN_DIR=os.path.abspath(build))
    run = subprocess.run([sys.executable, "-c", CHILD, ROOT, json.dumps(conns), str(seconds), LUA],
                         env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("JSON ")]
    if not lines:
        raise SystemExit(f"stack with {build} failed:\n{run.stdout}\n{run.stderr}")
    return {int(k): v for k, v in json.loads(lines[0][5:]).items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--conns", default="1,16")
    ap.add_argument("--out")
    args = ap.parse_args()
    conns = [int(c) for c in args.conns.split(",")]
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            runs[name].append(one(getattr(args, name), conns, args.seconds))
            print(f"round {r + 1} {name} done", file=sys.stderr, flush=True)
    med = lambda xs: statistics.median(xs)
    table = {}
    for name, rs in runs.items():
        table[name] = {c: {"rps": med([x[c]["rps"] for x in rs]), "p50_us": med([x[c]["p50_us"] for x in rs]),
                           "p99_us": med([x[c]["p99_us"] for x in rs]),
                           "cpu_us": {k: med([x[c]["cpu_us"][k] for x in rs]) for k in rs[0][c]["cpu_us"]}}
                       for c in conns}
    print("| build | conns | req/s | p50 µs | p99 µs | CPU µs/request: ingress / dispatcher / accounting / postgres |")
    print("|---|---|---|---|---|---|")
    for c in conns:
        for name in ("before", "after"):
            t = table[name][c]
            cpu = t["cpu_us"]
            print(f"| {name} | {c} | {t['rps']:.0f} | {t['p50_us']:.0f} | {t['p99_us']:.0f} | "
                  f"{cpu['ingress']:.0f} / {cpu['dispatcher']:.0f} / {cpu['accounting']:.0f} / {cpu['postgres']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rounds": args.rounds, "seconds": args.seconds, "runs": runs, "medians": table}, f, indent=1)


if __name__ == "__main__":
    main()
