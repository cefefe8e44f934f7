#!/usr/bin/env python3
"""Benchmark: sustained durable usage events per second into PostgreSQL (issue 3).

Python 3 standard library only. Run from anywhere after `make`:

    python3 bench/accounting.py          # the table in bench/RESULTS.md (about 17 minutes)
    python3 bench/accounting.py --instances 1 --batch 5000 --resend-ms 2000 --repeat 1 --events 100000

The default matrix is 1 and 2 accounting instances x GW_ACCOUNTING_BATCH 5000 and
20000 x GW_USAGE_RESEND_MS 2000 and 5000, 3 trials each, 500,000 events per trial.

What one trial does (every trial gets a fresh private PostgreSQL 15 from
tests/pg.py: fsync=on, synchronous_commit=on, full_page_writes=on):

1. Starts `--instances` accounting processes (bin/accounting, GW_ACCOUNTING_BATCH
   set) on their own ZeroMQ endpoints and waits until each has migrated and
   connected.
2. Baselines, same cluster, same machine, a few seconds before the measured run
   (the machines are shared and noisy: read the ratios, not the absolute numbers):
   - fsync     4 KiB append + fdatasync per operation for 1 s in the spool's file
               system: what one durable flush costs here.
   - copy      one psql `COPY` of the same N rows (same values as the gateway
               writes) into a table shaped like usage_events (primary key and both
               indexes), one transaction: PostgreSQL's bulk-ingest ceiling.
   - same_sql  the accounting's exact SQL from psql, no gateway around it: per
               batch of GW_ACCOUNTING_BATCH rows, BEGIN; COPY into the session's
               ON COMMIT DELETE ROWS temp stage; INSERT ... SELECT ... ORDER BY
               event_id ON CONFLICT (event_id) DO NOTHING; COMMIT (as
               usage_store_insert() in services/accounting/usage_store.c does;
               keep the two in step).
   - insert    pgbench, `--pgbench-clients` clients for `--pgbench-seconds`,
               one single-row INSERT + COMMIT per event: what a commit per event
               would give.
   The baseline tables are dropped and a CHECKPOINT taken before step 3.
3. The measured run: bin/usage-gen --count N through the real dispatcher spool
   (fdatasync'd group commits) and sender to the accounting endpoint(s), waiting
   until every event is acknowledged after the database commit. Its events/s is
   the result. CPU time (utime+stime from /proc) of usage-gen, the accounting
   processes and every PostgreSQL process is sampled around this run.
4. Durability check against the database: row count = N; every event_id is one
   of gen-<first>..gen-<first+N-1> (with the primary key this means each event is
   there exactly once); cache-hit, cache-miss and completion token sums and the
   cost sum equal usage-gen's totals exactly (the token sums are also recomputed
   here from the generator's formulas); no unpriced row. A failed check fails the
   benchmark (exit status 1).
5. Accounting is stopped (SIGTERM, must exit 0); its "stored=" count over N is
   the deliveries per event (1.00: nothing was sent twice; above: resends the
   ON CONFLICT absorbed).

bin/accounting, bin/usage-gen and prices/prices.csv are copied once at the
start and every trial runs those copies: a `make` in the tree meanwhile does not
mix two builds into one table. The git commit, whether the tree differs from it,
and the binaries' build times are recorded with the machine description.

Trials are interleaved (repetition 1 of every configuration, then repetition 2...)
so that a noisy minute does not land on one configuration only. The summary gives
the median of --repeat trials per configuration. Output: progress on stderr, a
Markdown summary on stdout, every trial's figures as JSON with --json FILE.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import harness  # noqa: E402
import pg  # noqa: E402
from pg import Postgres  # noqa: E402

DEFAULT_BATCH = 5000       # services/accounting/main.c: GW_ACCOUNTING_BATCH
DEFAULT_RESEND_MS = 2000   # services/dispatcher/main.c: GW_USAGE_RESEND_MS
TARGET = 50000             # issue 3: at least 50,000 durable events/s

COLUMNS = ("event_id, request_id, dispatch, attempt, api_key_id, provider, upstream_model, model,"
           " cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status,"
           " usage_known, streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at,"
           " currency, cost_pico")

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- machine -------------------------------------------------------------------

def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def _mount_of(path):
    """(device, mount point, fs type) of the file system holding path."""
    best = ("?", "/", "?")
    real = os.path.realpath(path)
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        dev, mnt, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
            best = (dev, mnt, fstype)
    return best


def build_info(bin_dir):
    def git(*argv):
        proc = subprocess.run(["git", "-C", ROOT] + list(argv), capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else "?"
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith("bench/")]
    built = {name: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(os.path.join(bin_dir, name))))
             for name in ("accounting", "usage-gen")}
    # `make -q`: 0 when bin/ is up to date with the sources (only asked for bin/ itself)
    fresh = None
    if os.path.realpath(bin_dir) == os.path.realpath(os.path.join(ROOT, "bin")):
        fresh = subprocess.run(["make", "-q", "-C", ROOT], capture_output=True).returncode == 0
    return {"commit": git("rev-parse", "--short", "HEAD"), "commit_date": git("log", "-1", "--format=%cI"),
            "changed_outside_bench": changed, "binaries_built": built, "bin_up_to_date": fresh}


def machine_info(tmp_dir):
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem_kb = re.search(r"^MemTotal:\s*(\d+)", _read("/proc/meminfo"), re.M)
    dev, mnt, fstype = _mount_of(tmp_dir)
    block = os.path.basename(dev)
    rotational = _read(f"/sys/block/{block}/queue/rotational").strip()
    size = _read(f"/sys/block/{block}/size").strip()
    try:
        pg_version = subprocess.run([os.path.join(pg.PG_BIN, "postgres"), "--version"], capture_output=True,
                                    text=True).stdout.strip()
    except OSError:
        pg_version = "?"
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', _read("/etc/os-release"), re.M))
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model.group(1).strip() if model else "?",
        "virtualized": " hypervisor" in cpuinfo,
        "memory_gib": round(int(mem_kb.group(1)) / 1048576, 1) if mem_kb else None,
        "disk": {"device": dev, "mount": mnt, "fstype": fstype,
                 "size_gib": round(int(size) * 512 / 2**30) if size.isdigit() else None,
                 "rotational_flag": rotational or "?"},
        "os": os_release.get("PRETTY_NAME", "?"),
        "debian_version": _read("/etc/debian_version").strip() or "?",
        "kernel": os.uname().release,
        "postgresql": pg_version,
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
    }


# -- CPU accounting ----------------------------------------------------------------

def _proc_cpu_s(pid):
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _system_cpu():
    """(busy, idle, iowait, steal) jiffies since boot, summed over CPUs (busy excludes steal)."""
    values = [int(v) for v in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle, iowait, steal = values[3], values[4], values[7]
    return sum(values[:8]) - idle - iowait - steal, idle, iowait, steal


def _all_procs():
    """{pid: (command name, cpu seconds)} of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _read(f"/proc/{name}/stat")
            if stat:
                out[int(name)] = (stat[stat.find("(") + 1:stat.rfind(")")], _proc_cpu_s(name))
    return out


def cpu_sample(groups):
    """{group: cpu seconds} for {group: [pids]}, the system counters, every process."""
    return ({name: sum(_proc_cpu_s(p) for p in pids) for name, pids in groups.items()}, _system_cpu(),
            _all_procs())


# -- baselines ---------------------------------------------------------------------

def row_text(i, started_at="2026-01-01 00:00:00.000+00"):
    """Event i as the accounting writes it (COPY text), the values usage-gen sends."""
    return (f"gen-{i}\tgen-{i}\t0\t1\t\\N\tdeepseek\tdeepseek-chat\tdeepseek-chat\t{(i * 7) % 1000}"
            f"\t{10 + (i * 13) % 2000}\t{1 + (i * 31) % 4000}\t0\t200\tt\tf\tf\t0\t0\t1000\t{started_at}"
            f"\tCNY\t{8120400000 + i % 1000}\n")


def expected_tokens(first, count):
    hit = miss = out = 0
    for i in range(first, first + count):
        hit += (i * 7) % 1000
        miss += 10 + (i * 13) % 2000
        out += 1 + (i * 31) % 4000
    return hit, miss, out


class Inputs:
    """The baseline input files, written once per benchmark and reused by every trial."""

    def __init__(self, work, first, count):
        self.work, self.first, self.count = work, first, count
        self.rows_path = os.path.join(work, "rows.copy")
        self._scripts = {}
        with open(self.rows_path, "w") as f:
            for i in range(first, first + count):
                f.write(row_text(i))

    def same_sql_script(self, batch):
        """A psql script: per batch, the accounting's BEGIN / COPY stage / INSERT ON CONFLICT / COMMIT."""
        if batch in self._scripts:
            return self._scripts[batch]
        path = os.path.join(self.work, f"same_sql_{batch}.sql")
        with open(self.rows_path) as rows, open(path, "w") as out:
            out.write("CREATE TEMP TABLE usage_stage (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;\n")
            while True:
                chunk = list(itertools.islice(rows, batch))
                if not chunk:
                    break
                out.write(f"BEGIN;\nCOPY usage_stage ({COLUMNS}) FROM STDIN;\n")
                out.writelines(chunk)
                out.write("\\.\n")
                out.write(f"INSERT INTO baseline_same_sql ({COLUMNS}) SELECT {COLUMNS} FROM usage_stage"
                          " ORDER BY event_id ON CONFLICT (event_id) DO NOTHING;\nCOMMIT;\n")
        self._scripts[batch] = path
        return path


def fsync_rate(directory, seconds=1.0):
    """4 KiB appends, each followed by fdatasync, per second."""
    path = os.path.join(directory, "fsync-probe")
    block = b"x" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            n += 1
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


def _psql(db, args, stdin=None, timeout=900):
    env = pg._env()
    proc = subprocess.run([os.path.join(pg.PG_BIN, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db.dsn] + args,
                          stdin=stdin, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"psql {args[:2]} failed: {proc.stderr.strip()[-2000:]}")


def baseline_copy(db, inputs):
    # Created in its own transaction: with wal_level=minimal a COPY into a table
    # created in the same transaction would skip the WAL, which the gateway's
    # path never does.
    db.psql("CREATE TABLE baseline_copy (LIKE usage_events INCLUDING ALL)")
    with open(inputs.rows_path) as rows:
        t0 = time.monotonic()
        _psql(db, ["-c", f"COPY baseline_copy ({COLUMNS}) FROM STDIN"], stdin=rows)
        secs = time.monotonic() - t0
    n = int(db.psql("SELECT count(*) FROM baseline_copy"))
    assert n == inputs.count, f"baseline copy stored {n} rows"
    db.psql("DROP TABLE baseline_copy")
    return inputs.count / secs


def baseline_same_sql(db, inputs, batch):
    script = inputs.same_sql_script(batch)
    db.psql("CREATE TABLE baseline_same_sql (LIKE usage_events INCLUDING ALL)")
    t0 = time.monotonic()
    _psql(db, ["-f", script])
    secs = time.monotonic() - t0
    n = int(db.psql("SELECT count(*) FROM baseline_same_sql"))
    assert n == inputs.count, f"baseline same_sql stored {n} rows"
    db.psql("DROP TABLE baseline_same_sql")
    return inputs.count / secs


def baseline_insert(db, work, clients, seconds):
    db.psql("CREATE TABLE baseline_insert (LIKE usage_events INCLUDING ALL); CREATE SEQUENCE baseline_seq")
    script = os.path.join(work, "insert.sql")
    with open(script, "w") as f:
        f.write(f"INSERT INTO baseline_insert ({COLUMNS}) VALUES ('pgb-' || nextval('baseline_seq'), 'r', 0, 1,"
                " NULL, 'deepseek', 'deepseek-chat', 'deepseek-chat', 7, 23, 31, 0, 200, true, false, false,"
                " 0, 0, 1000, now(), 'CNY', 8120400000);\n")
    proc = subprocess.run([os.path.join(pg.PG_BIN, "pgbench"), "-n", "-c", str(clients),
                           "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds), "-f", script, db.dsn],
                          env=pg._env(), capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pgbench failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")
    db.psql("DROP TABLE baseline_insert; DROP SEQUENCE baseline_seq")
    return float(found.group(1))


# -- one trial -------------------------------------------------------------------------

def _wait_connected(accs, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        if all("store: connected to PostgreSQL" in a.log() for a in accs):
            return
        for a in accs:
            if a.proc.poll() is not None:
                a._fail(f"exited with status {a.proc.returncode} at start")
        if time.monotonic() > deadline:
            raise RuntimeError("accounting did not connect to PostgreSQL:\n" + "\n".join(a.log()[-2000:] for a in accs))
        time.sleep(0.02)


def trial(args, cfg, inputs, work):
    instances, batch, resend_ms = cfg
    result = {"instances": instances, "batch": batch, "resend_ms": resend_ms}
    spool = tempfile.mkdtemp(prefix="spool-", dir=work)
    accs = []
    with Postgres() as db:
        try:
            endpoints = [f"tcp://127.0.0.1:{harness.free_port()}" for _ in range(instances)]
            for k, ep in enumerate(endpoints):
                accs.append(harness.start(f"accounting{k}", [os.path.join(args.run_bin, "accounting")], {
                    "DATABASE_URL": db.dsn, "GW_ACCOUNTING_BIND": ep, "GW_ACCOUNTING_BATCH": str(batch),
                    "GW_PRICES": args.prices}))
            _wait_connected(accs)

            if not args.no_baselines:
                result["fsync_per_s"] = fsync_rate(spool)
                result["copy_rows_per_s"] = baseline_copy(db, inputs)
                result["same_sql_rows_per_s"] = baseline_same_sql(db, inputs, batch)
                result["insert_tps"] = baseline_insert(db, work, args.pgbench_clients, args.pgbench_seconds)
            db.psql("CHECKPOINT")

            env = dict(os.environ, GW_USAGE_RESEND_MS=str(resend_ms), GW_PRICES=args.prices)
            argv = [os.path.join(args.run_bin, "usage-gen"), "--count", str(args.events), "--first", str(args.first),
                    "--endpoints", ",".join(endpoints), "--spool", spool, "--timeout-s", str(args.timeout_s)]
            out_path = os.path.join(work, "usage-gen.out")
            with open(out_path, "w") as out, open(os.path.join(work, "usage-gen.err"), "w") as err:
                gen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
                groups = {"usage_gen": [gen.pid], "accounting": [a.proc.pid for a in accs],
                          "postgres": pg._procs_in(db.data_dir)}
                cpu0, sys0, all0 = cpu_sample(groups)
                t0 = time.monotonic()
                # Sample while it runs too: a PostgreSQL process that started meanwhile
                # (autovacuum worker) is counted from when it is first seen.
                seen = set(groups["postgres"])
                while True:
                    # wait4 rather than poll(): usage-gen's own CPU time comes with
                    # its exit status (its /proc entry is gone once it is reaped).
                    pid, status, usage = os.wait4(gen.pid, os.WNOHANG)
                    if pid == gen.pid:
                        break
                    time.sleep(0.1)
                    for p in pg._procs_in(db.data_dir):
                        if p not in seen:
                            seen.add(p)
                            groups["postgres"].append(p)
                wall = time.monotonic() - t0
                gen.returncode = os.waitstatus_to_exitcode(status)
                groups["usage_gen"] = []
                cpu1, sys1, all1 = cpu_sample(groups)
                cpu1["usage_gen"] = usage.ru_utime + usage.ru_stime
            with open(out_path) as f:
                text = f.read()
            if gen.returncode != 0:
                with open(os.path.join(work, "usage-gen.err")) as f:
                    raise RuntimeError(f"usage-gen exited {gen.returncode}: {text}\n{f.read()[-3000:]}")
            gen_out = json.loads(text.strip().splitlines()[-1])
            result["events_per_s"] = gen_out["events_per_s"]
            result["seconds"] = gen_out["seconds"]
            # Percent of one CPU over the run (nproc * 100 is the whole machine).
            pct = {k: 100.0 * (cpu1[k] - cpu0[k]) / wall for k in cpu0}
            pct["system_busy"] = 100.0 * (sys1[0] - sys0[0]) / CLK_TCK / wall
            pct["idle"] = 100.0 * (sys1[1] - sys0[1]) / CLK_TCK / wall
            pct["iowait"] = 100.0 * (sys1[2] - sys0[2]) / CLK_TCK / wall
            pct["steal"] = 100.0 * (sys1[3] - sys0[3]) / CLK_TCK / wall
            # Everything else that ran on this machine meanwhile (other users of a
            # shared machine, kernel threads, this script): the noise of this trial.
            pct["other"] = max(0.0, pct["system_busy"] - pct["usage_gen"] - pct["accounting"] - pct["postgres"])
            result["cpu_pct"] = pct
            ours = {gen.pid, os.getpid()} | set(groups["accounting"]) | set(groups["postgres"])
            others = sorted(((all1[p][1] - all0[p][1], all1[p][0]) for p in all1
                             if p in all0 and p not in ours and all1[p][0] == all0[p][0]), reverse=True)
            result["other_top"] = [f"{name} {100.0 * secs / wall:.0f}%" for secs, name in others[:3]
                                   if 100.0 * secs / wall >= 2]

            result["check"] = verify(db, args, gen_out)
        finally:
            stored = 0
            for a in accs:
                try:
                    a.stop()
                    found = re.search(r"stopping stored=(\d+)", a.log())
                    stored += int(found.group(1)) if found else 0
                except AssertionError as e:
                    result.setdefault("errors", []).append(str(e)[-2000:])
            result["deliveries_per_event"] = stored / args.events
            shutil.rmtree(spool, ignore_errors=True)
    return result


def verify(db, args, gen):
    first, count = args.first, args.events
    row = db.psql(
        "SELECT count(*), coalesce(sum(cache_hit_tokens), 0), coalesce(sum(cache_miss_tokens), 0),"
        " coalesce(sum(completion_tokens), 0), coalesce(sum(cost_pico), 0),"
        " count(*) FILTER (WHERE cost_pico IS NULL),"
        f" count(*) FILTER (WHERE event_id ~ '^gen-(0|[1-9][0-9]*)$'"
        f"   AND substr(event_id, 5)::numeric BETWEEN {first} AND {first + count - 1})"
        " FROM usage_events").strip().split("|")
    rows, hit, miss, out, cost, unpriced, in_range = (int(v) for v in row)
    exp_hit, exp_miss, exp_out = expected_tokens(first, count)
    checks = {
        "usage-gen acknowledged every event": gen.get("acknowledged") is True and gen.get("events") == count,
        f"rows = {count}": rows == count,
        "every row is one of the sent event ids": in_range == rows,
        "cache_hit_tokens sum": hit == gen["cache_hit_tokens"] == exp_hit,
        "cache_miss_tokens sum": miss == gen["cache_miss_tokens"] == exp_miss,
        "completion_tokens sum": out == gen["completion_tokens"] == exp_out,
        "cost_pico sum": isinstance(gen["cost_pico"], int) and cost == gen["cost_pico"],
        "no unpriced row": unpriced == 0,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return {"ok": not failed, "failed": failed,
            "db": {"rows": rows, "cache_hit_tokens": hit, "cache_miss_tokens": miss, "completion_tokens": out,
                   "cost_pico": cost},
            "usage_gen": {k: gen[k] for k in ("cache_hit_tokens", "cache_miss_tokens", "completion_tokens",
                                              "cost_pico")}}


# -- summary ----------------------------------------------------------------------------

def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt_k(v):
    return "-" if v is None else f"{v / 1000:.1f}k"


def summarize(machine, args, configs, trials):
    lines = []
    lines.append(f"events per trial: {args.events}, trials per configuration: {args.repeat}, "
                 f"pgbench clients: {args.pgbench_clients}")
    lines.append("")
    lines.append("| accounting | GW_ACCOUNTING_BATCH | GW_USAGE_RESEND_MS | durable events/s, median (min-max) "
                 "| verified | deliveries/event | same SQL via psql, rows/s | events/s ÷ same SQL "
                 "| plain COPY, rows/s | events/s ÷ COPY | 1-row INSERT+COMMIT/s | CPU % usage-gen / accounting / postgres / other / idle+iowait "
                 f"| ≥ {TARGET // 1000}k |")
    lines.append("|" + "---|" * 13)
    for cfg in configs:
        ts = [t for t in trials if (t["instances"], t["batch"], t["resend_ms"]) == cfg]
        if not ts:
            continue
        eps = [t["events_per_s"] for t in ts if "events_per_s" in t]
        ok = sum(1 for t in ts if t.get("check", {}).get("ok"))
        med = _med(eps)
        ratio_same = _med([t["events_per_s"] / t["same_sql_rows_per_s"] for t in ts
                           if "events_per_s" in t and t.get("same_sql_rows_per_s")])
        ratio_copy = _med([t["events_per_s"] / t["copy_rows_per_s"] for t in ts
                           if "events_per_s" in t and t.get("copy_rows_per_s")])
        cpu = {k: _med([t["cpu_pct"].get(k) for t in ts if "cpu_pct" in t])
               for k in ("usage_gen", "accounting", "postgres", "idle", "iowait", "other")}
        idle = None if cpu["idle"] is None else cpu["idle"] + cpu["iowait"]
        ins = _med([t.get("insert_tps") for t in ts])
        lines.append(
            f"| {cfg[0]} | {cfg[1]}{' (default)' if cfg[1] == DEFAULT_BATCH else ''} "
            f"| {cfg[2]}{' (default)' if cfg[2] == DEFAULT_RESEND_MS else ''} "
            f"| **{_fmt_k(med)}** ({_fmt_k(min(eps) if eps else None)}-{_fmt_k(max(eps) if eps else None)}) "
            f"| {ok}/{len(ts)} "
            f"| {_med([t.get('deliveries_per_event') for t in ts]):.2f} "
            f"| {_fmt_k(_med([t.get('same_sql_rows_per_s') for t in ts]))} "
            f"| {'-' if ratio_same is None else f'{ratio_same:.2f}'} "
            f"| {_fmt_k(_med([t.get('copy_rows_per_s') for t in ts]))} "
            f"| {'-' if ratio_copy is None else f'{ratio_copy:.2f}'} "
            f"| {'-' if ins is None else f'{ins:.0f}'} "
            f"| {' / '.join('-' if cpu[k] is None else f'{cpu[k]:.0f}' for k in ('usage_gen', 'accounting', 'postgres', 'other'))}"
            f" / {'-' if idle is None else f'{idle:.0f}'} "
            f"| {'yes' if med is not None and med >= TARGET else 'no'} |")
    lines.append("")
    fs = _med([t.get("fsync_per_s") for t in trials])
    if fs:
        lines.append(f"4 KiB append + fdatasync on {machine['disk']['mount']} ({machine['disk']['device']}): "
                     f"median {fs:.0f}/s ({1000 / fs:.2f} ms each)")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500000, help="usage events per trial (500000)")
    parser.add_argument("--first", type=int, default=0, help="first event number (0)")
    parser.add_argument("--repeat", type=int, default=3, help="trials per configuration (3); the median is reported")
    parser.add_argument("--instances", default="1,2", help="accounting processes, comma-separated list (1,2)")
    parser.add_argument("--batch", default="5000,20000", help="GW_ACCOUNTING_BATCH values (5000,20000)")
    parser.add_argument("--resend-ms", default="2000,5000", help="GW_USAGE_RESEND_MS values (2000,5000)")
    parser.add_argument("--pgbench-clients", type=int, default=8, help="clients of the 1-row INSERT baseline (8)")
    parser.add_argument("--pgbench-seconds", type=int, default=5, help="length of the 1-row INSERT baseline (5)")
    parser.add_argument("--no-baselines", action="store_true", help="only the gateway path")
    parser.add_argument("--timeout-s", type=int, default=900, help="usage-gen --timeout-s (900)")
    parser.add_argument("--bin", default=os.path.join(ROOT, "bin"), help="build to measure (bin/)")
    parser.add_argument("--json", help="write the machine and every trial's figures to this file")
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    for name in ("accounting", "usage-gen"):
        if not os.access(os.path.join(args.bin, name), os.X_OK):
            sys.exit(f"{args.bin}/{name} not found: run make first")
    os.chdir(ROOT)

    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    configs = list(itertools.product(ints(args.instances), ints(args.batch), ints(args.resend_ms)))
    work = tempfile.mkdtemp(prefix="gw-bench-", dir=pg._base_tmp())
    machine = machine_info(work)
    machine["build"] = build_info(args.bin)
    log(f"machine: {json.dumps(machine)}")
    # The copies every trial runs (see the module docstring).
    args.run_bin = os.path.join(work, "bin")
    os.mkdir(args.run_bin)
    for name in ("accounting", "usage-gen"):
        shutil.copy2(os.path.join(args.bin, name), args.run_bin)
    args.prices = os.path.join(work, "prices.csv")
    shutil.copy2(os.path.join(ROOT, "prices", "prices.csv"), args.prices)
    trials = []
    failed = False
    try:
        inputs = None if args.no_baselines else Inputs(work, args.first, args.events)
        for rep in range(args.repeat):
            for cfg in configs:
                label = f"instances={cfg[0]} batch={cfg[1]} resend_ms={cfg[2]} trial {rep + 1}/{args.repeat}"
                log(f"{label}: running")
                t = trial(args, cfg, inputs, work)
                t["repetition"] = rep + 1
                trials.append(t)
                ok = t.get("check", {}).get("ok") and not t.get("errors")
                failed |= not ok
                base = "" if args.no_baselines else (
                    f" | same_sql {t['same_sql_rows_per_s']:.0f}/s copy {t['copy_rows_per_s']:.0f}/s"
                    f" insert {t['insert_tps']:.0f}/s fsync {t['fsync_per_s']:.0f}/s")
                log(f"{label}: {t['events_per_s']:.0f} events/s in {t['seconds']:.2f} s, "
                    f"deliveries/event {t['deliveries_per_event']:.2f}, "
                    f"cpu% gen {t['cpu_pct']['usage_gen']:.0f} acc {t['cpu_pct']['accounting']:.0f} "
                    f"pg {t['cpu_pct']['postgres']:.0f} other {t['cpu_pct']['other']:.0f} "
                    f"{t['other_top']} steal {t['cpu_pct']['steal']:.0f} idle {t['cpu_pct']['idle']:.0f} "
                    f"iowait {t['cpu_pct']['iowait']:.0f}{base} | "
                    + ("verified" if ok else f"FAILED {t.get('check', {}).get('failed')} {t.get('errors', '')}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "argv": sys.argv, "trials": trials}, f, indent=1)
    print(summarize(machine, args, configs, trials))
    if failed:
        log("DURABILITY CHECK FAILED (see above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
