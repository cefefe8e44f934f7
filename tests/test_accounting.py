"""Accounting: every usage event stored exactly once in PostgreSQL, through crashes and outages.

Real PostgreSQL (tests/pg.py), real accounting instances, the real dispatcher spool
and sender (through bin/usage-gen or a whole gateway stack).
"""

import json
import os
import subprocess
import tempfile
import threading
import time

import harness
from pg import Postgres
from test_gateway import BIN, Stack, chat, kill9, post, wait_for


_started = []


def start_accounting(db, endpoint, extra=None, control=None):
    """Starts an accounting instance; any still running when its test ends is killed (see cleanup).

    endpoint is its usage endpoint (GW_ACCOUNTING_BIND); control its control endpoint
    (GW_CONTROL_BIND: keys, admission, reports), a free port when not given, so that
    two instances never fight over the default 5557. proc.control holds it."""
    control = control or f"tcp://127.0.0.1:{harness.free_port()}"
    env = {"DATABASE_URL": db.dsn, "GW_ACCOUNTING_BIND": endpoint, "GW_CONTROL_BIND": control,
           "GW_LOG_LEVEL": "info"}
    env.update(extra or {})
    proc = harness.start("accounting", [os.path.join(BIN, "accounting")], env)
    proc.control = control
    _started.append(proc)
    return proc


def cleanup(test):
    """Decorator: a failing test must not leave accounting instances behind."""
    def run():
        try:
            test()
        finally:
            while _started:
                proc = _started.pop()
                if proc.proc.poll() is None:
                    kill9(proc)
    run.__name__ = test.__name__
    return run


def usage_gen(endpoints, spool, count, first=0, timeout_s=120, env=None):
    """Starts bin/usage-gen; returns the Popen (stdout: one JSON line)."""
    full_env = dict(os.environ)
    full_env.update({"GW_LOG_LEVEL": "warn", "GW_USAGE_RESEND_MS": "500", "USAGE_GEN_STARTED_MS": "1795000000000"})
    full_env.update(env or {})
    return subprocess.Popen([os.path.join(BIN, "usage-gen"), "--count", str(count), "--first", str(first),
                             "--endpoints", endpoints, "--spool", spool, "--timeout-s", str(timeout_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def totals(db, where="true"):
    row = db.psql("SELECT count(*), count(DISTINCT event_id), coalesce(sum(cache_hit_tokens),0),"
                  " coalesce(sum(cache_miss_tokens),0), coalesce(sum(completion_tokens),0),"
                  f" coalesce(sum(cost_pico),0), count(*) FILTER (WHERE cost_pico IS NULL) FROM usage_events WHERE {where}")
    return [int(x) for x in row.strip().split("|")]


@cleanup
def test_each_event_twice_with_accounting_killed_repeatedly():
    """N events, each sent twice (two generators, two spools), while two accounting
    instances are SIGKILLed and restarted every second: rows = distinct events and the
    token and cost sums equal the generator's totals exactly."""
    count = 50000
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        endpoints = [f"tcp://127.0.0.1:{harness.free_port()}" for _ in range(2)]
        # both start at once on an empty database: the migration lock holds
        acc = [start_accounting(db, ep) for ep in endpoints]
        gens = [usage_gen(",".join(endpoints), os.path.join(tmp, f"spool-{i}"), count) for i in range(2)]
        kills = 0
        deadline = time.monotonic() + 100
        while any(g.poll() is None for g in gens) and time.monotonic() < deadline:
            time.sleep(0.5)
            if kills < 8:
                victim = kills % 2
                kill9(acc[victim])
                acc[victim] = start_accounting(db, endpoints[victim])
                kills += 1
        outs = [g.communicate(timeout=30) for g in gens]
        for g, (out, err) in zip(gens, outs):
            assert g.returncode == 0, err[-2000:]
        expected = json.loads(outs[0][0])
        assert expected == {**json.loads(outs[1][0]), "seconds": expected["seconds"],
                            "events_per_s": expected["events_per_s"]}
        rows, distinct, hit, miss, out_tokens, cost, unpriced = totals(db)
        assert kills >= 2, "the run ended before accounting was killed"
        assert rows == distinct == count, (rows, distinct)
        assert (hit, miss, out_tokens) == (expected["cache_hit_tokens"], expected["cache_miss_tokens"],
                                           expected["completion_tokens"])
        assert cost == expected["cost_pico"] and unpriced == 0
        # the hourly spend the alerter reads moved with the rows, once each
        # (both instances stored at once, resends included)
        assert spend_by_hour(db) == spend_rollup(db) and spend_rollup(db), spend_rollup(db)[:3]
        assert sum(int(row.split("|")[2]) for row in spend_rollup(db)) == expected["cost_pico"]
        for a in acc:
            a.stop()


def spend_by_hour(db):
    """The stored spend per currency and UTC hour, summed from usage_events."""
    return db.psql("SELECT currency, date_trunc('hour', started_at, 'UTC'), sum(cost_pico) FROM usage_events"
                   " WHERE cost_pico <> 0 GROUP BY 1, 2 ORDER BY 1, 2").splitlines()


def spend_rollup(db):
    """The same from the rollup the alerter reads (spend_hours, all shards)."""
    return db.psql("SELECT currency, hour, sum(cost_pico) FROM spend_hours GROUP BY 1, 2 ORDER BY 1, 2").splitlines()


@cleanup
def test_spend_rollup_takes_in_the_rows_stored_before_it():
    """A database whose usage was stored before the hourly rollup existed: the
    migration that adds it sums the old rows in (unpriced and cached ones add
    nothing), rows stored after it are added as they come, and rows changed or
    deleted by hand move it too."""
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        acc = start_accounting(db, ep)
        wait_for(lambda: db.psql("SELECT count(*) FROM schema_migrations WHERE version = 8").strip() == "1", 20,
                 "migration 8")
        acc.stop()
        # back to the schema before migration 8, with usage in it
        db.psql("DROP TRIGGER usage_events_spend_hours_insert ON usage_events;"
                " DROP TRIGGER usage_events_spend_hours_update ON usage_events;"
                " DROP TRIGGER usage_events_spend_hours_delete ON usage_events; DROP FUNCTION gw_spend_hours_apply();"
                " DROP TABLE spend_hours; DELETE FROM schema_migrations WHERE version = 8")
        db.psql("INSERT INTO usage_events (event_id, request_id, dispatch, attempt, provider, upstream_model, model,"
                " cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status, usage_known,"
                " streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at, currency, cost_pico)"
                " SELECT 'old-' || n, 'r-' || n, 0, 0, 'deepseek', 'deepseek-chat', 'deepseek-chat', 0, 10, 10, 0,"
                " 200, true, false, false, 0, 0, 0, v.at, v.currency, v.cost"
                " FROM (VALUES (1, '2026-03-01T10:15:00Z'::timestamptz, 'CNY', 700::bigint),"
                "  (2, '2026-03-01T10:59:59.999Z', 'CNY', 300), (3, '2026-03-01T11:00:00Z', 'CNY', 5),"
                "  (4, '2026-03-01T11:30:00Z', 'USD', 9), (5, '2026-03-01T11:40:00Z', 'CNY', NULL),"
                "  (6, '2026-03-01T11:50:00Z', 'CNY', 0)) AS v (n, at, currency, cost)")
        acc = start_accounting(db, ep)
        wait_for(lambda: db.psql("SELECT count(*) FROM schema_migrations WHERE version = 8").strip() == "1", 20,
                 "migration 8 applied again")
        assert spend_rollup(db) == ["CNY|2026-03-01 10:00:00+00|1000", "CNY|2026-03-01 11:00:00+00|5",
                                    "USD|2026-03-01 11:00:00+00|9"], spend_rollup(db)
        # new usage goes through the trigger
        gen = usage_gen(ep, os.path.join(tmp, "spool"), 200)
        out, err = gen.communicate(timeout=60)
        assert gen.returncode == 0, err
        assert int(db.psql("SELECT count(*) FROM usage_events").strip()) == 206
        assert spend_by_hour(db) == spend_rollup(db), (spend_by_hour(db), spend_rollup(db))
        # rows written by hand in other hours, the unpriced one priced later
        # (docs/operations.md) and one deleted: the rollup follows each change
        db.psql("INSERT INTO usage_events (event_id, request_id, dispatch, attempt, provider, upstream_model, model,"
                " cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, status, usage_known,"
                " streamed, client_aborted, queue_wait_us, ttfb_us, total_us, started_at, currency, cost_pico)"
                " SELECT 'new-' || h, 'r-new-' || h, 0, 0, 'deepseek', 'deepseek-chat', 'deepseek-chat', 0, 1, 1, 0,"
                " 200, true, false, false, 0, 0, 0, '2026-03-02T00:00:00Z'::timestamptz + h * interval '37 minutes',"
                " 'CNY', 11 * h FROM generate_series(1, 5) h")
        assert spend_by_hour(db) == spend_rollup(db), (spend_by_hour(db), spend_rollup(db))
        db.psql("UPDATE usage_events SET cost_pico = 40 WHERE event_id IN ('old-5', 'old-1')")
        db.psql("DELETE FROM usage_events WHERE event_id = 'new-3'")
        assert spend_by_hour(db) == spend_rollup(db), (spend_by_hour(db), spend_rollup(db))
        assert "CNY|2026-03-01 10:00:00+00|340" in spend_rollup(db) \
            and "CNY|2026-03-01 11:00:00+00|45" in spend_rollup(db), spend_rollup(db)
        acc.stop()


@cleanup
def test_cost_of_a_known_mix_matches_hand_computation():
    """One event through the whole path, priced at V3.2 CNY: ¥0.2 / ¥2 / ¥3 per 1M tokens."""
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        acc = start_accounting(db, ep)
        gen = usage_gen(ep, os.path.join(tmp, "spool"), 1, first=12345)
        out, err = gen.communicate(timeout=60)
        assert gen.returncode == 0, err
        # usage-gen's event 12345: hit = 12345*7 % 1000, miss = 10 + 12345*13 % 2000, out = 1 + 12345*31 % 4000
        hit, miss, output = 12345 * 7 % 1000, 10 + 12345 * 13 % 2000, 1 + 12345 * 31 % 4000
        expected_pico = hit * 200000 + miss * 2000000 + output * 3000000  # micro-yuan per 1M tokens x tokens
        row = db.psql("SELECT cache_hit_tokens, cache_miss_tokens, completion_tokens, cost_pico, currency"
                      " FROM usage_events WHERE event_id = 'gen-12345'").strip().split("|")
        assert [int(x) for x in row[:4]] == [hit, miss, output, expected_pico], row
        assert row[4] == "CNY"
        acc.stop()


@cleanup
def test_gateway_keeps_serving_while_postgres_is_down():
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        acc = start_accounting(db, ep)
        with Stack(dispatcher_env={"GW_ACCOUNTING_ENDPOINTS": ep, "GW_SPOOL_DIR": os.path.join(tmp, "spool"),
                                   "GW_USAGE_RESEND_MS": "300"}) as s:
            results = []

            def load():
                for i in range(120):
                    results.append(post(s.url, chat(f"outage {i}"))[0])
                    time.sleep(0.02)

            t = threading.Thread(target=load)
            t.start()
            time.sleep(0.5)
            db.stop()
            time.sleep(1.5)
            db.start()
            t.join(60)
            assert results == [200] * 120, {st: results.count(st) for st in set(results)}
            wait_for(lambda: totals(db)[0] >= 120, 30,
                     lambda: "all usage rows after the outage (%s stored; accounting log: %s)"
                     % (totals(db)[0], acc.log()[-800:]))
            time.sleep(0.5)
            rows, distinct = totals(db)[:2]
            assert rows == distinct == 120
            assert int(db.psql("SELECT count(DISTINCT request_id) FROM usage_events")) == 120
        acc.stop()


@cleanup
def test_dispatcher_killed_with_unacknowledged_events_resends_them():
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        spool = os.path.join(tmp, "spool")
        env = {"GW_ACCOUNTING_ENDPOINTS": ep, "GW_SPOOL_DIR": spool, "GW_USAGE_RESEND_MS": "300"}
        with Stack(dispatcher_env=env) as s:
            # accounting is not running yet: events can only wait in the spool
            ids = []
            for i in range(25):
                st, hd, _ = post(s.url, chat(f"spooled {i}", stream=i % 2 == 1))
                assert st == 200
                ids.append(hd["x-request-id"])
            kill9(s.dispatchers[0])
            acc = start_accounting(db, ep)
            again = s.add_dispatcher(env)
            wait_for(lambda: totals(db)[0] >= 25, 30,
                     lambda: "the spooled events (%d stored; dispatcher log: %s; accounting log: %s)"
                     % (totals(db)[0], again.log()[-1200:], acc.log()[-600:]))
            time.sleep(0.5)
            assert totals(db)[:2] == [25, 25]
            stored = set(db.psql("SELECT request_id FROM usage_events").split())
            assert stored == set(ids)
        acc.stop()


@cleanup
def test_usage_reports_over_http_and_cli():
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        acc = start_accounting(db, ep)
        # GW_AUTH=none (Stack's default): /v1/usage is open, as before keys existed
        with Stack(ingress_env={"GW_CONTROL_ENDPOINTS": acc.control, "GW_CONTROL_TIMEOUT_MS": "1000"},
                   dispatcher_env={"GW_ACCOUNTING_ENDPOINTS": ep, "GW_SPOOL_DIR": os.path.join(tmp, "spool"),
                                   "GW_USAGE_RESEND_MS": "300"}) as s:
            for i in range(6):
                model = "deepseek-chat" if i < 4 else "deepseek-reasoner"
                assert post(s.url, chat(f"report {i} [[mock tokens=10 reasoning=5 cache=3]]", model))[0] == 200
            wait_for(lambda: totals(db)[0] == 6, 20, "six usage rows")
            st, _, body = harness.http("GET", s.url + "/v1/usage?period=today&group_by=model")
            assert st == 200, body
            report = json.loads(body)
            assert report["object"] == "usage_report" and report["currency"] == "CNY"
            by_model = {r["group"]: r for r in report["data"]}
            assert by_model["deepseek-chat"]["calls"] == 4 and by_model["deepseek-reasoner"]["calls"] == 2
            assert by_model["deepseek-reasoner"]["reasoning_tokens"] == 10
            assert report["total"]["cache_hit_tokens"] == 18 and report["total"]["requests"] == 6
            # the report's cost is the exact sum of the stored costs
            cost_pico = int(db.psql("SELECT sum(cost_pico) FROM usage_events"))
            assert report["total"]["cost_pico"] == str(cost_pico) and cost_pico > 0
            # a period that holds nothing, a custom one, a bad one
            st, _, body = harness.http("GET", s.url + "/v1/usage?period=yesterday")
            assert st == 200 and json.loads(body)["total"]["calls"] == 0
            st, _, body = harness.http("GET", s.url + "/v1/usage?from=2020-01-01&to=2030-01-01&group_by=day")
            assert st == 200 and json.loads(body)["total"]["calls"] == 6
            st, _, body = harness.http("GET", s.url + "/v1/usage?period=fortnight")
            assert st == 400 and "period" in json.loads(body)["error"]["message"]
            st, _, body = harness.http("GET", s.url + "/v1/usage?from=yesterday&to=today")
            assert st == 400
            # the operator's command-line tool says the same
            # (reports are asked on accounting's control endpoint: GW_CONTROL_ENDPOINTS)
            cli_env = dict(os.environ, GW_CONTROL_ENDPOINTS=acc.control)
            cli = subprocess.run([os.path.join(BIN, "gw-report"), "--period", "month",
                                  "--by", "model", "--json"], capture_output=True, text=True, timeout=30, env=cli_env)
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["total"]["cost_pico"] == str(cost_pico)
            table = subprocess.run([os.path.join(BIN, "gw-report"), "--by", "model"],
                                   capture_output=True, text=True, timeout=30, env=cli_env).stdout
            assert "deepseek-reasoner" in table and "TOTAL" in table
            # accounting gone: a clear 503, not a hang
            acc.stop()
            st, _, body = harness.http("GET", s.url + "/v1/usage", timeout=30)
            assert st == 503 and json.loads(body)["error"]["code"] == "accounting_unavailable"


@cleanup
def test_full_spool_refuses_new_jobs_until_accounting_drains_it():
    """GW_SPOOL_FULL_POLICY=refuse (the default): with accounting away and the spool
    near its bound, the dispatcher takes no new jobs (clients get 503) rather than
    serve calls it could not record; once accounting is back it drains and serves
    again, and every call that was served has exactly one row."""
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        env = {"GW_ACCOUNTING_ENDPOINTS": ep, "GW_SPOOL_DIR": os.path.join(tmp, "spool"),
               "GW_SPOOL_MAX_BYTES": "65536", "GW_USAGE_RESEND_MS": "300"}
        with Stack(dispatcher_env=env, ingress_env={"GW_QUEUE_TIMEOUT_MS": "300"}) as s:
            served = []
            statuses = []
            # ~300 events fill 90% of 64 KiB; the spool is checked every 100 ms
            for i in range(2000):
                st, hd, _ = post(s.url, chat(f"fill {i}"))
                statuses.append(st)
                if st == 200:
                    served.append(hd["x-request-id"])
                if st == 503:
                    break
            assert statuses[-1] == 503, f"the spool never filled ({len(served)} served)"
            assert 100 < len(served) < 2000
            acc = start_accounting(db, ep)
            wait_for(lambda: post(s.url, chat("after"))[0] == 200, 30, "the dispatcher to take jobs again")
            wait_for(lambda: totals(db)[0] >= len(served) + 1, 30, "all served calls stored")
            time.sleep(0.5)
            rows, distinct = totals(db)[:2]
            stored = set(db.psql("SELECT request_id FROM usage_events").split())
            assert set(served) <= stored and rows == distinct == len(stored)
            acc.stop()
