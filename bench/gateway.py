#!/usr/bin/env python3
"""The gateway side by side with what users would otherwise run (issue 6): `make bench`.

One run, one machine, one mock upstream answering at once (bin/mock-upstream), the
targets in front of it, all on 127.0.0.1 (bench/targets.py):

  mock     the mock directly: the floor
  nginx    Debian's nginx, a plain reverse proxy with upstream keep-alive
  portkey  the Portkey gateway from npm (@portkey-ai/gateway), openai provider with
           a custom host: the mock
  gateway  ours with usage accounting on, as make run starts it: PostgreSQL (fsync on),
           accounting, alerter, one ingress with GW_AUTH=keys and a key without limits,
           its dispatcher on a thread of the ingress (GW_LOCAL_DISPATCHER=1): three
           processes for the four services. Issue 6's targets are computed from it.
  gateway-split  "gateway (split)" in the tables: a second stack of ours, the same but
           for the dispatcher, a process of its own joined over tcp on loopback
           (GW_LOCAL_DISPATCHER=0): what the local dispatcher buys
  gateway-cache  "gateway (cache hit)" in the tables: the very stack of "gateway", every
           request with X-Gateway-Cache: use, answered from the dispatcher's response cache.
           Before each of its points one request (re)fills the cache, then the mock's
           request counter (GET /mock/stats) must not move during the point: the run
           fails otherwise. Its points last --cache-seconds.

The same load against each (bench/load.py): wrk with a POST body, non-streamed
(max_tokens 16) and streamed, at concurrency 1, 16, 64 and 256; rounds interleave the
targets (each round starts with the next one) so that drift of the shared machine
hits all alike, and medians over rounds are reported. Per point: req/s, latency
p50/p90/p99, latency added over the mock at the same concurrency, CPU seconds of the
target's processes per 1,000 requests and their peak memory. Then the time to first
byte of streams (a sequential client: wrk cannot see it), and the check of 10,000
concurrent streams against our gateway (the mock sending a token every 50 ms), after
the idle memory of the split layout on a stack of its own.

Results: bench/gateway-results.json, and the section "## Gateway versus peers (issue 6)"
of bench/RESULTS.md, replaced on each run.

    python3 bench/gateway.py                 # everything (make bench), about 11 minutes
    python3 bench/gateway.py --streams 10000 # only the concurrent-streams check (writes
                                             # bench/gateway-streams-results.json)
    python3 bench/gateway.py --rounds 1 --seconds 2 --concurrency 1,16 --no-streams --no-write   # a quick look

wrk runs with one thread (-t1, --wrk-threads): on two cores the load generator competes
with the target for CPU; one thread never takes more than one core, so the target
always has the other, and its cost is the same for every target. The mock runs two
threads (--mock-threads): with one it stalls at 128 connections and more (RESULTS.md).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import load  # noqa: E402
import procstat  # noqa: E402
import targets  # noqa: E402

SECTION = "## Gateway versus peers (issue 6)"
PROGRAMS = ("mock-upstream", "ingress", "dispatcher", "accounting", "alerter")
TARGETS = ("mock", "nginx", "portkey", "gateway", "gateway-split", "gateway-cache")
SPLIT = targets.Gateway.SPLIT_NAME
CACHED = "gateway-cache"
LABELS = {SPLIT: targets.Gateway.SPLIT_LABEL, CACHED: targets.CachedGateway.label}
# The ingress's default TTL of cached answers (GW_CACHE_TTL_S) for the bench's gateway:
# longer than any run, so that no entry expires in the middle of a point. It applies only
# to requests that ask for the cache: the "gateway" and "gateway (split)" rows' requests
# never touch it.
CACHE_TTL_S = "7200"
HELLO = [{"role": "user", "content": "Hello"}]
BODIES = {
    "non-streamed": json.dumps({"model": "deepseek-chat", "max_tokens": 16, "messages": HELLO}),
    "streamed": json.dumps({"model": "deepseek-chat", "max_tokens": 16, "stream": True, "messages": HELLO}),
}
# For the time to first byte: the role chunk at once, then 2 tokens 5 ms apart, so a
# target that held the stream back until its end would show it.
TTFB_BODY = json.dumps({"model": "deepseek-chat", "stream": True,
                        "messages": [{"role": "user", "content": "Hello [[mock tokens=2 token_ms=5]]"}]})
# Issue 6's targets.
ADDED_P50_C1_US = 100
ADDED_P99_C16_US = 1000
VS_NGINX_C64 = 0.5
VS_PORTKEY_C64 = 3.0
STREAM_KIB = 64
FD_LIMIT = 65536  # descriptors per process for the stack (see main())
FD_MARGIN = 512  # the descriptors a process holds besides its streams
IDLE_MB = 40


def say(*args):
    print(*args, flush=True)


# ------------------------------------------------------------------ measuring

def label(name):
    return LABELS.get(name, name)


def mock_requests(mock):
    """The API requests the mock has received (its /mock/stats does not count itself)."""
    return json.loads(targets.harness.http("GET", mock.url + "/mock/stats", timeout=5)[2])["requests"]


def fill_cache(cached, body):
    """One request through the cache before a point: a hit when the answer is there, a
    miss (stored, the only one to reach the mock) when not. Returns that state."""
    st, hd, raw = targets.harness.http("POST", cached.url + load.CHAT_PATH, json.loads(body), cached.headers,
                                       timeout=20)
    state = hd.get("x-gateway-cache")
    if st != 200 or state not in ("hit", "miss"):
        raise RuntimeError(f"cache warm-up answered {st}, x-gateway-cache {state!r}: {raw[:300]!r}")
    return state


def point(target, mock, body, c, seconds, wrk_threads):
    """One wrk run against one target, with its CPU time and peak memory."""
    roots = target.roots()
    accounted = hasattr(target, "usage_rows")  # our gateway, whether through its cache or not
    if accounted:
        rows0 = target.usage_rows()
        time.sleep(0.1)  # psql's backend gone and reaped before the CPU is read
    cpu0, mock_cpu0 = procstat.cpu_seconds(roots), procstat.cpu_seconds(mock.roots())
    procstat.reset_peak(roots)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    me0, busy0, t0 = resource.getrusage(resource.RUSAGE_SELF), procstat.machine_busy_seconds(), time.monotonic()
    res = load.wrk(target.url, target.headers, body, c, seconds, wrk_threads)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The gateway stores the usage of each answer after it: a second lets accounting
    # catch up (it stores tens of thousands of rows a second), so that this work is
    # counted here and does not spill into the next target's point. The rows are
    # counted after the CPU is read (psql's own backend would count otherwise).
    time.sleep(1.0 if accounted else 0.2)
    cpu = procstat.cpu_seconds(roots) - cpu0
    mock_cpu = procstat.cpu_seconds(mock.roots()) - mock_cpu0
    me1, busy1, t1 = resource.getrusage(resource.RUSAGE_SELF), procstat.machine_busy_seconds(), time.monotonic()
    wrk_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    mine = me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime
    other = (busy1 - busy0) - cpu - (0 if target is mock else mock_cpu) - wrk_cpu - mine
    parts = {name: procstat.memory_kib(r) for name, r in target.parts().items()}
    mem = {k: sum(m[k] for m in parts.values()) for k in ("rss", "hwm")}
    if accounted:
        res["usage_rows"] = target.usage_rows() - rows0
        if res["usage_rows"] < res["requests"]:
            say(f"note: {res['usage_rows']} usage rows stored for {res['requests']} requests one second after "
                "the point")
    n = max(res["requests"], 1)
    res.update({"cpu_s_per_1k": cpu / n * 1000, "mock_cpu_s_per_1k": mock_cpu / n * 1000,
                "wrk_cpu_s_per_1k": wrk_cpu / n * 1000, "other_cpu_pct": round(max(0.0, other) / (t1 - t0) * 100),
                "peak_kib": mem["hwm"], "rss_after_kib": mem["rss"],
                "peak_parts_kib": {name: m["hwm"] for name, m in parts.items()}})
    return res


def stalled(res):
    """Most connections waited without an answer while the answers that came were quick:
    the target stopped serving some connections (not merely slow: then p99 is long)."""
    return res["requests"] == 0 or (res["served_fraction"] < 0.5 and res["p99_us"] < res["seconds"] * 1e6 / 4)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def idle_memory(gw):
    """RSS of a fresh gateway's services at rest, after two streamed requests: per
    process (as gw.services() names them), their sum and Pss, and PostgreSQL's."""
    for _ in range(2):
        load.ttfb(gw.url, gw.headers, TTFB_BODY, 1)
    time.sleep(1)
    pids = gw.services()
    idle = {part: procstat.memory_kib([pid])["rss"] for part, pid in pids.items()}
    return {"processes": len(pids), "idle_kib": idle, "idle_services_kib": sum(idle.values()),
            "idle_services_pss_kib": procstat.pss_kib(list(pids.values())),
            "idle_postgres_kib": procstat.memory_kib([gw.db.pid])["rss"]}


def streams_check(mock, bin_dir, n, tokens, quiet_ms, deadline_s, pending):
    """Our gateway with n concurrent streams (a token every 50 ms): errors and memory;
    before it, the idle memory of the other layout, measured alike. The streams run
    in make run's layout when the descriptor limit lets one process hold two per
    stream (its client's and the provider's), else in the split layout."""
    # One ingress sends a dispatcher at most GW_DISPATCHER_SLOTS jobs at a time (256
    # by default): n streams at once need n slots.
    denv = {"GW_DISPATCHER_SLOTS": str(max(n, 256))}
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    local = fd_limit >= 2 * n + FD_MARGIN
    # A stack of its own with the same settings, stopped before the check starts, so
    # that the two layouts' idle figures differ in the layout alone.
    other = targets.Gateway(mock, bin_dir, dispatcher_env=denv, local=not local)
    try:
        other_idle = idle_memory(other)
    finally:
        other.stop()
    gw = targets.Gateway(mock, bin_dir, dispatcher_env=denv, local=local)
    try:
        idle = idle_memory(gw)
        front = gw.front()
        idle_front = procstat.memory_kib(front)["rss"]

        progress = [0]

        def sample(open_now):
            try:
                active = json.loads(targets.harness.http("GET", mock.url + "/mock/stats", timeout=2)[2])["active"]
            except (OSError, ValueError, KeyError):
                active = None
            kib = procstat.memory_kib(front)["rss"]
            if time.monotonic() >= progress[0]:
                say(f"streams: {open_now:,} open, {gw.front_label()} {kib / 1024:,.0f} MB, {active} at the mock")
                progress[0] = time.monotonic() + 5
            return {"front_kib": kib, "mock_active": active}

        body = json.dumps({"model": "deepseek-chat", "stream": True, "messages": [
            {"role": "user", "content": f"Hello [[mock first_byte_ms={quiet_ms} token_ms=50 tokens={tokens}]]"}]})
        say(f"streams: {n} at once against the gateway, {tokens} tokens each, a token every 50 ms after "
            f"{quiet_ms} ms of keep-alives")
        cpu0 = {name: procstat.cpu_seconds(r) for name, r in gw.parts().items()}
        mock_cpu0 = procstat.cpu_seconds(mock.roots())
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        res = load.hold_streams(gw.url, gw.headers, body, n, deadline_s, sample, max_pending=pending)
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        res["cpu_s"] = {name: round(procstat.cpu_seconds(r) - cpu0[name], 2) for name, r in gw.parts().items()}
        res["cpu_s"]["mock-upstream"] = round(procstat.cpu_seconds(mock.roots()) - mock_cpu0, 2)
        res["cpu_s"]["client"] = round(me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime, 2)
        # The mock would send n / 50 ms tokens a second if nothing held it back.
        res["tokens_per_s"] = round(res["completed"] * tokens / res["seconds"]) if res["seconds"] else None
        res["tokens_per_s_nominal"] = n * 20
        peak = max((s for s in res["samples"]), key=lambda s: s["value"]["front_kib"], default=None)
        time.sleep(2)
        # Top level: make run's layout's idle figures (the target's), whichever ran the streams.
        res.update(idle if local else other_idle)
        res.update({
            "layout": "local" if local else "split", "fd_limit": fd_limit,
            "tokens": tokens, "quiet_ms": quiet_ms, "slots": denv["GW_DISPATCHER_SLOTS"],
            "front": gw.front_label(), "idle_front_kib": idle_front,
            "peak_front_kib": peak["value"]["front_kib"] if peak else None,
            "mock_max_active": max((s["value"]["mock_active"] or 0 for s in res["samples"]), default=0),
            "after_kib": {part: procstat.memory_kib([pid])["rss"] for part, pid in gw.services().items()},
            "split_idle": other_idle if local else idle})
        res["kib_per_stream"] = ((res["peak_front_kib"] - idle_front) / res["max_open"]
                                 if peak and res["max_open"] else None)
        return res
    finally:
        gw.stop()


# ------------------------------------------------------------------ the run

def machine():
    info = {"cpus": os.cpu_count(), "kernel": platform.release(), "node": platform.node()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = "?"
    with open("/proc/meminfo") as f:
        info["ram_gib"] = round(int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2 ** 20, 1)
    try:
        with open("/etc/os-release") as f:
            info["os"] = next(line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY_NAME"))
        with open("/etc/debian_version") as f:
            info["os"] += f" ({f.read().strip()})"
    except (OSError, StopIteration):
        info["os"] = platform.platform()
    info["virtualisation"] = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("systemd-detect-virt") else "?"
    return info


def build_info():
    def git(*args):
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip()
    dirty = git("status", "--porcelain", "--", "services", "lib", "proto", "tools/mock-upstream", "Makefile")
    up_to_date = subprocess.run(["make", "-q", "all"], cwd=ROOT, capture_output=True).returncode == 0
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(dirty),
            "bin_up_to_date": up_to_date}


def copy_programs(bin_dir):
    """Copies of the programs taken at the start: a rebuild of bin/ mid-run changes nothing."""
    tmp = tempfile.mkdtemp(prefix="bench-bin-")
    for name in PROGRAMS:
        src = os.path.join(bin_dir, name)
        if not os.access(src, os.X_OK):
            raise SystemExit(f"{src} is missing: run make")
        shutil.copy2(src, os.path.join(tmp, name))
    return tmp


def summarise(runs):
    """Medians over rounds of each (mode, c, target), and the figures relative to the mock."""
    med = {}
    for mode, by_c in runs.items():
        for c, by_t in by_c.items():
            for t, rs in by_t.items():
                m = {k: statistics.median(r[k] for r in rs) for k in (
                    "rps", "p50_us", "p90_us", "p99_us", "cpu_s_per_1k", "mock_cpu_s_per_1k", "wrk_cpu_s_per_1k")}
                m["peak_kib"] = max(r["peak_kib"] for r in rs)
                m["peak_parts_kib"] = {p: max(r["peak_parts_kib"][p] for r in rs) for p in rs[0]["peak_parts_kib"]}
                m["errors"] = sum(r["errors"] for r in rs)
                m["requests"] = sum(r["requests"] for r in rs)
                med.setdefault(mode, {}).setdefault(c, {})[t] = m
            floor = med[mode][c].get("mock")
            for t, m in med[mode][c].items():
                if floor:
                    m["added_p50_us"] = m["p50_us"] - floor["p50_us"]
                    m["added_p99_us"] = m["p99_us"] - floor["p99_us"]
    return med


def checks(med, streams):
    """Issue 6's targets: (what, measured, met, distance) rows."""
    rows = []

    def get(mode, c, t, k):
        try:
            return med[mode][str(c)][t][k]
        except KeyError:
            return None

    for mode in med:
        a = get(mode, 1, "gateway", "added_p50_us")
        if a is not None:
            rows.append((f"added latency p50 at concurrency 1, {mode}: at most {ADDED_P50_C1_US} µs",
                         f"{a:+,.0f} µs", a <= ADDED_P50_C1_US, f"{a - ADDED_P50_C1_US:+,.0f} µs"))
        a = get(mode, 16, "gateway", "added_p99_us")
        if a is not None:
            rows.append((f"added latency p99 at concurrency 16, {mode}: at most 1 ms",
                         f"{a / 1000:+,.2f} ms", a <= ADDED_P99_C16_US, f"{(a - ADDED_P99_C16_US) / 1000:+,.2f} ms"))
        g, ng, pk = (get(mode, 64, t, "rps") for t in ("gateway", "nginx", "portkey"))
        for peer, rps, factor, words in (("nginx", ng, VS_NGINX_C64, "½ of nginx's"),
                                         ("Portkey", pk, VS_PORTKEY_C64, "3× Portkey's")):
            if g is None or not rps:
                continue
            want = factor * rps
            rows.append((f"throughput at concurrency 64, {mode}: at least {words}",
                         f"{g:,.0f} / {rps:,.0f} req/s = {g / rps:.2f}", g >= want,
                         f"{g - want:+,.0f} req/s ({g / want:.0%} of the target)"))
    if streams:
        n = streams["streams"]
        errs = sum(streams["errors"].values())
        held = streams["max_open"]
        rows.append((f"{n:,} concurrent streams (a token every 50 ms) without errors",
                     f"{held:,} open at once at most, {streams['completed']:,} completed, {errs:,} errors",
                     errs == 0 and held >= n, "" if errs == 0 and held >= n else
                     f"{errs:,} errors ({', '.join(f'{k}: {v:,}' for k, v in streams['errors'].items())}); "
                     f"{n - held:,} never open at the same time"))
        kib = streams["kib_per_stream"]
        if kib is not None:
            rows.append((f"ingress + dispatcher memory above idle: at most {STREAM_KIB} KiB per stream",
                         f"{kib:,.1f} KiB per stream ({held:,} streams; "
                         f"{streams.get('front', 'ingress + dispatcher')})", kib <= STREAM_KIB,
                         f"{kib - STREAM_KIB:+,.1f} KiB"))
        # make run's layout is the target's; the split layout's figure follows it, so
        # that the one is not read as the other.
        # The split row is there for comparison only: met is None ("not the target").
        for x, layout, target in ((streams, "make run's layout", True),
                                  (streams.get("split_idle"), "split layout, GW_LOCAL_DISPATCHER=0", False)):
            if not x:
                continue
            idle = x["idle_services_kib"] / 1024
            what = (f"the four services idle ({layout}: {x.get('processes', 4)} processes): under {IDLE_MB} MB together"
                    if target else f"for comparison, the four services idle ({layout}: {x.get('processes', 4)} processes)")
            rows.append((what, f"{idle:,.1f} MB (" + ", ".join(f"{k} {v / 1024:.1f}" for k, v in x["idle_kib"].items())
                         + ")", (idle < IDLE_MB) if target else None, f"{idle - IDLE_MB:+,.1f} MB"))
    return rows


# ------------------------------------------------------------------ writing

def fmt_us(v):
    return "" if v is None else f"{v:,.0f}"


def fmt_added(v):
    return "" if v is None else f"{v:+,.0f}"


def markdown(res):
    m, v, b = res["machine"], res["versions"], res["build"]
    out = [SECTION, ""]
    command = "make bench` (= `python3 bench/gateway.py`)" if res["command"] == "python3 bench/gateway.py" \
        else res["command"] + "`"
    out.append(f"Generated by `{command} on {res['date']}, in "
               f"{res['elapsed_s'] / 60:.1f} minutes. Commit {b['commit']}"
               + (" with uncommitted changes under services/, lib/, proto/ or tools/mock-upstream/"
                  if b["uncommitted_changes"] else "")
               + ("" if b["bin_up_to_date"] else "; bin/ was not up to date with the sources (`make -q`)")
               + ". The raw figures of every round are in `bench/gateway-results.json`.")
    out += ["", "| machine | |", "| --- | --- |",
            f"| CPU | {m['cpu']}, {m['cpus']} CPUs (`systemd-detect-virt`: {m['virtualisation']}) |",
            f"| memory | {m['ram_gib']} GiB |", f"| OS, kernel | {m['os']}, Linux {m['kernel']} |",
            f"| nginx | {v['nginx']} (Debian), {res['settings']['nginx_workers']} workers |",
            f"| Portkey | @portkey-ai/gateway {v['portkey']} on Node.js {v['node']} "
            f"(@hono/node-server pinned to {v.get('hono_node_server', '?')}, see below) |",
            f"| wrk | {v['wrk']}, -t{res['settings']['wrk_threads']} |", f"| PostgreSQL | {v['postgres']} |", ""]
    s = res["settings"]
    cache_s = s.get("cache_seconds", s["seconds"])
    cache_note = f" ({cache_s} s for {label(CACHED)})" if res.get("cache_check") and cache_s != s["seconds"] else ""
    out.append(f"Load: wrk, one thread, concurrency {', '.join(map(str, s['concurrency']))}, {s['seconds']} s per "
               f"point{cache_note}, {s['rounds']} rounds with the targets interleaved; medians over rounds. Request: "
               "`deepseek-chat`, one user message \"Hello\", `max_tokens` 16 (16 tokens back), streamed or not. "
               f"The mock answers at once (`MOCK_THREADS={s['mock_threads']}`). Before the rounds, each target gets "
               f"{s['warmup_s']} s of each kind of request at concurrency 16 (Node.js compiles its hot code "
               "meanwhile). "
               "Added = the target's figure minus the mock's at the same concurrency in the same run.")
    out += ["", "### Issue 6's targets", "", "| target | measured | met | distance |", "| --- | --- | --- | --- |"]
    for what, measured, met, dist in res["checks"]:
        out.append(f"| {what} | {measured} | {'not a target' if met is None else '**met**' if met else '**missed**'} | {dist} |")
    r = res["ratios"]
    out += ["", "Ratios within the run: " + "; ".join(f"{k} **{v:.2f}**" for k, v in r.items() if v is not None) + "."]
    for mode, by_c in res["median"].items():
        out += ["", f"### {mode.capitalize()}", "",
                "| concurrency | target | req/s | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs "
                "| CPU s / 1k req | peak memory MB | errors (all rounds) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c, by_t in by_c.items():
            for t in TARGETS:
                x = by_t.get(t)
                if not x:
                    continue
                floor = t == "mock"
                out.append(f"| {c} | {label(t)} | {x['rps']:,.0f} | {fmt_us(x['p50_us'])} | {fmt_us(x['p90_us'])} "
                           f"| {fmt_us(x['p99_us'])} | {'' if floor else fmt_added(x.get('added_p50_us'))} "
                           f"| {'' if floor else fmt_added(x.get('added_p99_us'))} | {x['cpu_s_per_1k']:.3f} "
                           f"| {x['peak_kib'] / 1024:,.1f} | {x['errors']:,} |")
    # What the local dispatcher buys: make run's layout against the split one, per point.
    vs_split = []
    for mode, by_c in res["median"].items():
        pairs = {c: (by_t["gateway"], by_t[SPLIT]) for c, by_t in by_c.items() if "gateway" in by_t and SPLIT in by_t}
        bits = [f"p50 {fmt_added(g['p50_us'] - sp['p50_us'])} µs at concurrency 1"
                for c, (g, sp) in pairs.items() if c == "1"]
        bits += [f"req/s ×{g['rps'] / sp['rps']:.2f} at {c}" for c, (g, sp) in pairs.items() if c != "1" and sp["rps"]]
        if bits:
            vs_split.append(f"{mode}: " + ", ".join(bits))
    if vs_split:
        out += ["", f"**What the local dispatcher buys**: gateway against {label(SPLIT)} (the same settings, the "
                "dispatcher a process of its own; see How to read it), medians of this run: "
                + "; ".join(vs_split) + "."]
    cc = res.get("cache_check")
    if cc:
        out += ["", f"**{label(CACHED)}** is our gateway above (the same processes and key) with `X-Gateway-Cache: "
                f"use` on every request, so that the dispatcher answers from its response cache without calling "
                f"the mock: each of its points ({s.get('cache_seconds', s['seconds'])} s) follows one request that "
                f"fills the cache, and the mock's request counter (`GET /mock/stats`) moved by "
                f"{cc['mock_requests']:,} during its {len(cc['points'])} points ({cc['requests']:,} requests, "
                f"{cc['cache_hit_rows']:,} usage rows marked cached). Its added latency is against the mock "
                "directly, like the others': a hit skips the upstream call but not the gateway's own path (ingress, "
                "dispatcher, usage accounting)."]
    stalls = [f"{mode} c{c} {label(t)} round {i + 1} ({x['rps']:,.0f} req/s, {x['served_fraction']:.0%} of the "
              f"connections served, {x['errors']:,} errors)"
              for mode, by_c in res["runs"].items() for c, by_t in by_c.items() for t, xs in by_t.items()
              for i, x in enumerate(xs) if stalled(x)]
    if stalls:
        out += ["", "**Stalls.** In these points most connections waited without an answer: req/s × mean "
                "latency (Little's law) came to under half the connections while p99 stayed under a quarter of the "
                "point. " + "; ".join(stalls) + "."]
    others = [x["other_cpu_pct"] for by_c in res["runs"].values() for by_t in by_c.values() for xs in by_t.values()
              for x in xs]
    if others:
        out += ["", f"Other processes on the machine (not a target, the mock or wrk) took a median of "
                f"{statistics.median(others):.0f} % and at most {max(others)} % of one CPU during the points "
                "(`other_cpu_pct` in the JSON)."]
    if res.get("ttfb"):
        out += ["", "### Streams: time to first byte", "",
                f"{res['settings']['ttfb_requests']} streamed requests per target and round, one after another on one "
                "keep-alive connection (a Python client, bench/load.py): from sending the request to the first byte "
                "of the body (the role chunk; the mock then sends 2 tokens 5 ms apart). All rounds pooled.", "",
                "| target | p50 µs | p90 µs | p99 µs | added p50 µs | errors |",
                "| --- | --- | --- | --- | --- | --- |"]
        floor = res["ttfb"].get("mock", {}).get("p50_us")
        for t in TARGETS:
            x = res["ttfb"].get(t)
            if x:
                added = "" if t == "mock" or floor is None or x["p50_us"] is None else fmt_added(x["p50_us"] - floor)
                out.append(f"| {label(t)} | {fmt_us(x['p50_us'])} | {fmt_us(x['p90_us'])} | {fmt_us(x['p99_us'])} | "
                           f"{added} | {x['errors']} |")
    out += ["", "### Memory", "",
            "RSS when idle (after one request of each kind, before any load) and the peak (VmHWM) over the points, "
            "summed over each target's processes.", "",
            "| target | process | RSS idle MB | peak MB |", "| --- | --- | --- | --- |"]
    for t in TARGETS:
        if t not in res["idle_parts_kib"]:
            continue
        points = [by_c[c][t] for by_c in res["median"].values() for c in by_c if t in by_c[c]]
        parts = res["idle_parts_kib"][t]
        if len(parts) > 1:
            out.append(f"| {label(t)} | all | {res['idle_kib'][t] / 1024:,.1f} | "
                       f"{max((x['peak_kib'] for x in points), default=0) / 1024:,.1f} |")
        for part, idle in parts.items():
            peak = max((x["peak_parts_kib"].get(part, 0) for x in points), default=0)
            out.append(f"| {label(t) if len(parts) == 1 else ''} | {part} | {idle / 1024:,.1f} | {peak / 1024:,.1f} |")
    st = res.get("streams")
    if st:
        out += ["", f"### {st['streams']:,} concurrent streams", "",
                ("Our gateway alone, in make run's layout" if st.get("layout", "local") == "local" else
                 "Our gateway alone, in the split layout (`GW_LOCAL_DISPATCHER=0`: in make run's layout a stream "
                 "holds two descriptors in the ingress's one process, its client's and the provider's, and this "
                 f"machine allows a process {st.get('fd_limit', 0):,}, which it could not raise: "
                 f"{st['streams']:,} streams would need {2 * st['streams'] + FD_MARGIN:,}; docs/operations.md, "
                 "\"File descriptors\")")
                + f" (a stack of its own, `GW_DISPATCHER_SLOTS={st['slots']}`, other settings default), "
                f"{st['streams']:,} streamed requests opened together by one epoll client (bench/load.py), each "
                f"`[[mock first_byte_ms={st['quiet_ms']} token_ms=50 tokens={st['tokens']}]]`: the mock sends "
                f"the headers at once, keep-alive comments for {st['quiet_ms'] / 1000:.0f} s (as DeepSeek does while "
                "a request is queued), then a token every 50 ms. The quiet start lets every stream open before the "
                "tokens flow: without it, on two cores, the first streams ended before the last ones opened (at "
                "most 3,300 to 6,100 of 10,000 open at once in trials). The client reads each socket about four "
                "times a second, so that it stays cheap next to the servers; the kernel's socket buffers hold what "
                "arrives meanwhile.", "",
                "| | |", "| --- | --- |",
                f"| completed cleanly | {st['completed']:,} of {st['streams']:,} in {st['seconds']} s |",
                f"| tokens delivered | {st['tokens_per_s'] or 0:,} a second; at the mock's pace it would be "
                f"{st['tokens_per_s_nominal']:,} and the check would take about {st['tokens'] * 0.05:.0f} s "
                "plus the ramp |",
                f"| errors | {sum(st['errors'].values()):,}"
                + (" (" + ", ".join(f"{k}: {v:,}" for k, v in st['errors'].items()) + ")" if st['errors'] else "")
                + " |",
                f"| most open at once (client side / at the mock) | {st['max_open']:,} / {st['mock_max_active']:,} |",
                f"| {st.get('front', 'ingress + dispatcher')} RSS: idle / peak | "
                f"{st['idle_front_kib'] / 1024:,.1f} MB / {(st['peak_front_kib'] or 0) / 1024:,.1f} MB |",
                f"| above idle, per open stream | {st['kib_per_stream'] or 0:,.1f} KiB |",
                f"| idle RSS of the four services (make run's layout, {st.get('processes', 4)} processes"
                + ("" if st.get("layout", "local") == "local" else
                   ": a stack of its own, started and measured alike before the check") + ") | "
                f"{st['idle_services_kib'] / 1024:,.1f} MB ("
                + ", ".join(f"{k} {v / 1024:.1f}" for k, v in st["idle_kib"].items())
                + f"; PostgreSQL not counted: {st['idle_postgres_kib'] / 1024:,.0f} MB). Pss, shared library pages "
                f"divided among the processes: {st['idle_services_pss_kib'] / 1024:,.1f} MB |"]
        sp = st.get("split_idle")
        if sp:
            out.append(f"| the same, split layout ({sp['processes']} processes: `GW_LOCAL_DISPATCHER=0`"
                       + (", a stack of its own started and measured alike before the check"
                          if st.get("layout", "local") == "local" else ", the check's stack") + ") | "
                       f"{sp['idle_services_kib'] / 1024:,.1f} MB ("
                       + ", ".join(f"{k} {v / 1024:.1f}" for k, v in sp["idle_kib"].items())
                       + f"). Pss: {sp['idle_services_pss_kib'] / 1024:,.1f} MB |")
        out += [f"| RSS 2 s after the streams | "
                + ", ".join(f"{k} {v / 1024:.1f}" for k, v in st["after_kib"].items()) + " MB |",
                "| CPU seconds during the check | " + ", ".join(f"{k} {v}" for k, v in st["cpu_s"].items()) + " |"]
    out += ["", "### How to read it", "",
            "- **gateway** runs as make run starts it: the dispatcher on a thread of the ingress, joined over "
            "inproc (`GW_LOCAL_DISPATCHER=1`), three processes for the four services, so its memory rows show "
            "\"ingress (with its dispatcher)\". **gateway (split)** runs the dispatcher as a process of its own, "
            "joined over tcp on loopback (`GW_LOCAL_DISPATCHER=0`): four processes. Both stacks (each with its "
            "own PostgreSQL) are up during the rounds; the one not measured idles.",
            "- **CPU s / 1k req** is the user + system CPU time of the target's own processes (those of the memory "
            "table) during "
            "the point, per 1,000 completed requests. The mock's and wrk's are not in it (they are in the JSON: "
            "`mock_cpu_s_per_1k`, `wrk_cpu_s_per_1k`). For our gateway it includes the accounting of every request "
            "into PostgreSQL: the CPU is read one second after wrk ends, when the usage rows are stored.",
            "- **peak memory** is VmHWM summed over the target's processes, reset before each point "
            "(`/proc/<pid>/clear_refs`), the highest of the rounds. Shared pages count once per process "
            "(PostgreSQL's shared buffers, nginx's workers), so it is an upper bound. Our gateway's is mostly "
            "PostgreSQL's: the memory table splits it by process.",
            "- **errors** are wrk's, summed over the rounds: answers other than 2xx/3xx, socket errors and "
            "timeouts (`--timeout 2s`). wrk looks for timeouts only every 2 s, so in a 3 s point a connection that "
            "waits without an answer is not an error: a **stall** note after the tables says where that happened.",
            "- **The mock runs two threads** (`MOCK_THREADS=2`). With its default of one, wrk straight at it "
            "(non-streamed) stalled at 128 and 256 connections in 3 of 4 tries, and in all three c256 rounds of a "
            "full run: 84 to 831 req/s, most connections unanswered for the whole point, no error counted. With "
            "two threads it answered 30-48k req/s there. Every target talks to the same mock, so a stalling floor "
            "would have made the c256 figures meaningless.",
            "- At concurrency 256 every target is saturated on this machine: latency there only mirrors throughput.",
            "- **Portkey**: started with `node build/start-server.js --headless`, `NODE_ENV=production`, listening on "
            "127.0.0.1 (bench/peers/loopback.mjs), one Node.js process as it ships. Requests carry "
            "`x-portkey-provider: openai` and `x-portkey-custom-host: http://127.0.0.1:<mock>/v1`. With the "
            "@hono/node-server npm picks by default (1.19.x), every streamed request fails with `TypeError: "
            "immutable` (Portkey-AI/gateway issues 1389 and 1550), so bench/peers/package.json pins it to 1.13.8, "
            "with which both kinds of request work. Portkey waits 25 ms before passing on the first chunk of a "
            "stream (a `setTimeout(…, 25)` in its stream reader), which shows in its streamed figures.",
            "- **nginx**: bench/peers/nginx.conf; `keepalive_requests` raised so that no target closes wrk's "
            "connections during a point.",
            ""]
    return "\n".join(out)


def write_results_md(path, section):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end, fenced = len(lines), False
        for i in range(start + 1, len(lines)):
            if lines[i].startswith("```"):
                fenced = not fenced
            elif not fenced and lines[i].startswith(("# ", "## ")):
                end = i
                break
        rest = "\n".join(lines[end:])
        text = "\n".join(lines[:start]) + "\n" + section + ("\n" + rest if rest.strip() else "")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="per wrk point")
    ap.add_argument("--cache-seconds", type=int, default=None,
                    help="per wrk point of the gateway answering from its cache (default: --seconds)")
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--modes", default="non-streamed,streamed")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5, help="seconds of load per target and kind before measuring")
    ap.add_argument("--nginx-workers", default="2")
    ap.add_argument("--mock-threads", default="2", help="MOCK_THREADS of the mock upstream (see RESULTS.md)")
    ap.add_argument("--ttfb", type=int, default=100, help="streamed requests per target and round (0: none)")
    ap.add_argument("--streams", type=int, default=None, metavar="N",
                    help="run only the check of N concurrent streams against our gateway (and the split "
                         "layout's idle memory)")
    ap.add_argument("--full-streams", type=int, default=10000, metavar="N",
                    help="streams in the check that ends a full run (default 10000)")
    ap.add_argument("--no-streams", action="store_true", help="a full run without the concurrent-streams check")
    ap.add_argument("--stream-tokens", type=int, default=100, help="tokens per stream in that check (50 ms each)")
    ap.add_argument("--stream-quiet-ms", type=int, default=10000,
                    help="in that check, the mock sends headers at once, then keep-alives for this long (the "
                         "time to open every stream), then the tokens")
    ap.add_argument("--stream-deadline", type=int, default=150, help="seconds the check may take at most")
    ap.add_argument("--stream-pending", type=int, default=10000,
                    help="requests of that check sent but not yet answered, at most (paces the opening)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    ap.add_argument("--out", default=os.path.join(HERE, "gateway-results.json"))
    ap.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only; write neither file")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every finally: runs
    # Every process started here inherits this. In make run's layout a stream holds
    # two descriptors in the ingress's one process (its client's and the upstream's),
    # so 10,000 streams need more than the 20,000 this machine's containers allow by
    # default: as root (CAP_SYS_RESOURCE) raise the hard limit, as a deployment sets
    # LimitNOFILE (docs/operations.md, "Tuning").
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, FD_LIMIT), max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    streams_only = args.streams is not None
    names = [t for t in args.targets.split(",") if t]
    if streams_only:
        names = ["mock"]
    for t in names:
        if t not in TARGETS:
            raise SystemExit(f"unknown target {t}")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    if "nginx" in names:
        targets.ensure_nginx()
    if "portkey" in names:
        targets.ensure_portkey()
    bin_dir = copy_programs(args.bin)
    cache_seconds = args.cache_seconds or args.seconds
    conc = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    res = {"command": "python3 bench/gateway.py" + "".join(" " + a for a in sys.argv[1:]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "versions": targets.versions(), "build": build_info(),
           "settings": {"rounds": args.rounds, "seconds": args.seconds, "concurrency": conc, "modes": modes,
                        "cache_seconds": cache_seconds, "cache_ttl_s": int(CACHE_TTL_S),
                        "wrk_threads": args.wrk_threads, "nginx_workers": args.nginx_workers,
                        "mock_threads": args.mock_threads, "warmup_s": args.warmup,
                        "ttfb_requests": args.ttfb, "bodies": BODIES, "ttfb_body": TTFB_BODY}}
    up = {}
    try:
        up["mock"] = targets.Mock(bin_dir, {"MOCK_THREADS": args.mock_threads})
        mock = up["mock"]
        if streams_only:
            res["streams"] = streams_check(mock, bin_dir, args.streams, args.stream_tokens, args.stream_quiet_ms,
                                           args.stream_deadline, args.stream_pending)
            say(json.dumps({k: v for k, v in res["streams"].items() if k != "samples"}, indent=1))
            res["checks"] = checks({}, res["streams"])
            for what, measured, met, dist in res["checks"]:
                say(f"{'note  ' if met is None else 'met   ' if met else 'MISSED'}  {what}: {measured} {dist}")
            if not args.no_write:
                path = os.path.join(HERE, "gateway-streams-results.json")
                with open(path, "w") as f:
                    json.dump(res, f, indent=1)
                say(f"written: {os.path.relpath(path, ROOT)}")
            return
        if "nginx" in names:
            up["nginx"] = targets.Nginx(mock, args.nginx_workers)
        if "portkey" in names:
            up["portkey"] = targets.Portkey(mock)
        if "gateway" in names or CACHED in names:
            up["gateway"] = targets.Gateway(mock, bin_dir, ingress_env={"GW_CACHE_TTL_S": CACHE_TTL_S})
        if SPLIT in names:
            # The same settings as "gateway" (the TTL too, unused by its requests): only
            # the layout differs.
            up[SPLIT] = targets.Gateway(mock, bin_dir, ingress_env={"GW_CACHE_TTL_S": CACHE_TTL_S}, local=False)
        gateway = up.get("gateway")
        cached = targets.CachedGateway(gateway) if CACHED in names else None
        avail = dict(up, **({CACHED: cached} if cached else {}))
        order = [avail[t] for t in TARGETS if t in avail and (t != "gateway" or t in names)]
        say("targets: " + ", ".join(f"{label(t.name)} {t.url}" for t in order))
        # Each answers both kinds of request correctly before anything is measured.
        for t in order:
            if t is cached:
                continue  # below
            for mode, body in BODIES.items():
                st, _, raw = targets.harness.http("POST", t.url + load.CHAT_PATH, json.loads(body), t.headers,
                                                  timeout=20)
                ok = st == 200 and (b"tok16" in raw if mode == "non-streamed" else b"[DONE]" in raw)
                if not ok:
                    raise RuntimeError(f"{t.name} answered {mode} {st}: {raw[:300]!r}")
        if cached:
            # A request asking for the cache is stored by the first, answered by the
            # second: the same bytes, without reaching the mock.
            for mode, body in BODIES.items():
                n0 = mock_requests(mock)
                got = [targets.harness.http("POST", cached.url + load.CHAT_PATH, json.loads(body), cached.headers,
                                            timeout=20) for _ in range(2)]
                states = [hd.get("x-gateway-cache") for _, hd, _ in got]
                ok = all(st == 200 and (b"tok16" in raw if mode == "non-streamed" else b"[DONE]" in raw)
                         for st, _, raw in got)
                if not ok or states != ["miss", "hit"] or mock_requests(mock) != n0 + 1 or \
                        (mode == "non-streamed" and got[0][2] != got[1][2]):
                    raise RuntimeError(f"the gateway's cache, {mode}: x-gateway-cache {states}, "
                                       f"{mock_requests(mock) - n0} requests at the mock (want miss, hit and 1)")
        time.sleep(0.5)
        res["idle_parts_kib"] = {t.name: {p: procstat.memory_kib(r)["rss"] for p, r in t.parts().items()}
                                 for t in order if t is not cached}
        res["idle_kib"] = {t: sum(parts.values()) for t, parts in res["idle_parts_kib"].items()}
        for t in order:  # warm-up: connections, caches, JIT
            for body in BODIES.values():
                load.wrk(t.url, t.headers, body, 16, args.warmup, args.wrk_threads)
        runs = {}
        cache_points = []  # per point of the cached gateway: the mock's requests during it
        total = len(conc) * args.rounds * len(modes) * len(order)
        done = 0
        for c in conc:
            for r in range(args.rounds):
                for mode in modes:
                    turn = order[r % len(order):] + order[:r % len(order)]
                    for t in turn:
                        if t is cached:
                            warm = fill_cache(cached, BODIES[mode])
                            n0, hits0 = mock_requests(mock), gateway.cache_rows()
                            p = point(t, mock, BODIES[mode], c, cache_seconds, args.wrk_threads)
                            # point() waited a second after wrk: a request that went upstream
                            # has reached the mock by now.
                            p["warmup"] = warm
                            p["mock_requests"] = mock_requests(mock) - n0
                            p["cache_hit_rows"] = gateway.cache_rows() - hits0
                            cache_points.append({"mode": mode, "c": c, "round": r + 1, "warmup": warm,
                                                 "requests": p["requests"], "mock_requests": p["mock_requests"],
                                                 "cache_hit_rows": p["cache_hit_rows"]})
                            if p["mock_requests"]:
                                say(f"CACHE MISSES: {p['mock_requests']:,} requests reached the mock during "
                                    f"{label(CACHED)} {mode} c{c} round {r + 1}")
                        else:
                            p = point(t, mock, BODIES[mode], c, args.seconds, args.wrk_threads)
                        runs.setdefault(mode, {}).setdefault(str(c), {}).setdefault(t.name, []).append(p)
                        done += 1
                        say(f"[{done}/{total}] {mode:12s} c{c:<3d} round {r + 1} {t.name:13s} {p['rps']:8,.0f} req/s"
                            f"  p50 {p['p50_us']:>7,} p90 {p['p90_us']:>7,} p99 {p['p99_us']:>8,} µs"
                            f"  cpu {p['cpu_s_per_1k']:.3f} s/1k  peak {p['peak_kib'] / 1024:6.1f} MB"
                            f"  errors {p['errors']}  other {p['other_cpu_pct']}%"
                            + (f"  STALLED: {p['served_fraction']:.0%} served" if stalled(p) else ""))
        res["runs"] = runs
        if cached:
            # Every measured request a hit: the mock saw none of them (each point's one
            # warm-up request came before its count started).
            missed = [x for x in cache_points if x["mock_requests"]]
            res["cache_check"] = {"points": cache_points, "requests": sum(x["requests"] for x in cache_points),
                                  "mock_requests": sum(x["mock_requests"] for x in cache_points),
                                  "cache_hit_rows": sum(x["cache_hit_rows"] for x in cache_points),
                                  "warmup_misses": sum(x["warmup"] == "miss" for x in cache_points)}
            cc = res["cache_check"]
            say(f"cache check: {cc['requests']:,} requests in {len(cache_points)} points of {label(CACHED)}, "
                f"{cc['mock_requests']:,} of them reached the mock; {cc['cache_hit_rows']:,} usage rows marked "
                f"cached; {cc['warmup_misses']} warm-up requests were misses")
            if missed:
                raise RuntimeError(
                    f"{label(CACHED)}: not every request was a cache hit: the mock's request counter moved during "
                    + "; ".join(f"{x['mode']} c{x['c']} round {x['round']} (+{x['mock_requests']:,} of "
                                f"{x['requests']:,})" for x in missed) + ". Nothing written.")
        res["median"] = summarise(runs)
        if args.ttfb:
            pooled = {}
            plain = [t for t in order if t is not cached]
            for r in range(args.rounds):
                for t in plain[r % len(plain):] + plain[:r % len(plain)]:
                    x = load.ttfb(t.url, t.headers, TTFB_BODY, args.ttfb)
                    p = pooled.setdefault(t.name, {"first_byte_us": [], "total_us": [], "errors": 0})
                    p["first_byte_us"] += x["first_byte_us"]
                    p["total_us"] += x["total_us"]
                    p["errors"] += x["errors"]
            res["ttfb"] = {name: {"p50_us": pct(p["first_byte_us"], 50), "p90_us": pct(p["first_byte_us"], 90),
                                  "p99_us": pct(p["first_byte_us"], 99), "total_p50_us": pct(p["total_us"], 50),
                                  "n": len(p["first_byte_us"]), "errors": p["errors"]} for name, p in pooled.items()}
            for name, x in res["ttfb"].items():
                say(f"ttfb {name:8s} p50 {fmt_us(x['p50_us'])} p90 {fmt_us(x['p90_us'])} p99 {fmt_us(x['p99_us'])} µs"
                    f"  (whole stream p50 {fmt_us(x['total_p50_us'])} µs)  errors {x['errors']}")
        for name in (SPLIT, "gateway", "portkey", "nginx"):
            if name in up:
                up.pop(name).stop()
        if not args.no_streams and args.full_streams:
            res["streams"] = streams_check(mock, bin_dir, args.full_streams, args.stream_tokens, args.stream_quiet_ms,
                                           args.stream_deadline, args.stream_pending)
            s = res["streams"]
            say(f"streams: {s['completed']:,}/{s['streams']:,} completed, errors {s['errors']}, "
                f"{s['max_open']:,} open at once at most, {s['kib_per_stream'] or 0:.1f} KiB per stream, "
                f"idle services {s['idle_services_kib'] / 1024:.1f} MB in {s['processes']} processes "
                f"({s['split_idle']['idle_services_kib'] / 1024:.1f} MB in {s['split_idle']['processes']} split)")
        med = res["median"]

        def ratio(mode, c, a, b):
            try:
                return med[mode][str(c)][a]["rps"] / med[mode][str(c)][b]["rps"]
            except (KeyError, ZeroDivisionError):
                return None
        res["ratios"] = {}
        for mode in modes:
            res["ratios"][f"gateway / nginx req/s at c64, {mode}"] = ratio(mode, 64, "gateway", "nginx")
            res["ratios"][f"gateway / Portkey req/s at c64, {mode}"] = ratio(mode, 64, "gateway", "portkey")
            res["ratios"][f"{label(CACHED)} / gateway req/s at c64, {mode}"] = ratio(mode, 64, CACHED, "gateway")
            res["ratios"][f"gateway / {label(SPLIT)} req/s at c64, {mode}"] = ratio(mode, 64, "gateway", SPLIT)
        res["checks"] = checks(med, res.get("streams"))
        res["elapsed_s"] = round(time.monotonic() - started)
        say("")
        for what, measured, met, dist in res["checks"]:
            say(f"{'note  ' if met is None else 'met   ' if met else 'MISSED'}  {what}: {measured} {dist}")
        section = markdown(res)
        if not args.no_write:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
            write_results_md(args.results_md, section)
            say(f"\nwritten: {os.path.relpath(args.out, ROOT)}, section \"{SECTION}\" of "
                f"{os.path.relpath(args.results_md, ROOT)}; {res['elapsed_s'] / 60:.1f} minutes")
        else:
            say("\n" + section)
    finally:
        for t in reversed(list(up.values())):
            try:
                t.stop()
            except Exception as e:  # keep stopping the others
                say(f"warning: stopping {t.name}: {e}")
        shutil.rmtree(bin_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
