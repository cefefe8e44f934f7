"""The local dispatcher (README, "One host"): an ingress with GW_LOCAL_DISPATCHER=1
runs a whole dispatcher on a thread of its own process, joined over inproc.

Each test starts its own processes (tests/harness.py): the mock upstream, an
ingress carrying the dispatcher's settings, and, where usage must be stored, a
private PostgreSQL with accounting. No dispatcher process runs unless a test adds
one over TCP.
"""

import json
import os
import signal
import subprocess
import tempfile
import threading
import time

import harness
from pg import Postgres
from test_accounting import cleanup, start_accounting, totals
from test_gateway import BIN, Stack, chat, kill9, post, strip_ids, wait_for, without_cost


def local_stack(extra=None, **kw):
    """A Stack whose only dispatcher is the ingress's own: the dispatcher's
    settings go to the ingress."""
    port = harness.free_port()
    mock_url = f"http://127.0.0.1:{port}"
    env = {"GW_LOCAL_DISPATCHER": "1", "DEEPSEEK_API_KEY": "sk-mock-test-key", "GW_RETRY_BASE_MS": "20"}
    env.update(extra or {})
    s = Stack(dispatchers=0, ingresses=0, mock=False, **kw)
    s.mock_url = mock_url
    s.mock = s._start("mock", [os.path.join(BIN, "mock-upstream")],
                      {"MOCK_PORT": str(port), "MOCK_API_KEY": "sk-mock-test-key"}, mock_url + "/mock/stats")
    env.update({"GW_PROVIDER_DEEPSEEK_BASE_URL": mock_url, "GW_USAGE_LOG": s.usage_path})
    s.local_env = env  # for a restart of the ingress
    try:
        s.add_ingress(env)
        wait_for(lambda: harness.http("GET", s.url + "/ready")[0] == 200, 10, "ingress ready with its dispatcher")
    except BaseException:
        s.__exit__(None, None, None)
        raise
    return s


def test_local_dispatcher_answers_as_a_dispatcher_process_does():
    with local_stack() as s:
        # the same answer as the mock's own, streamed or not
        st, hd, raw = post(s.url, chat("local [[mock tokens=7]]"))
        assert st == 200, raw
        _, _, direct = harness.http("POST", s.mock_url + "/chat/completions", chat("local [[mock tokens=7]]"),
                                    {"Authorization": "Bearer sk-mock-test-key"})
        assert strip_ids(json.loads(raw)) == strip_ids(json.loads(direct))
        stream = harness.SSEStream(s.url + "/v1/chat/completions", chat("[[mock tokens=5 token_ms=10]]", stream=True))
        events = without_cost(stream.events())
        assert events[-1] == ("data", "[DONE]") and len(events) >= 7, events
        # one usage event each, from the thread that logs as the dispatcher
        wait_for(lambda: len(s.usage()) == 2, 5, "two usage events")
        assert all(u["usage_known"] and u["status"] == 200 for u in s.usage())
        log = s.ingresses[0].log()
        assert " dispatcher link: ingress connected endpoint=inproc://" in log, log[-2000:]
        assert " ingress pool: dispatcher joined" in log


def test_local_dispatcher_sigterm_drains_then_stops():
    """SIGTERM: requests in progress finish, a call whose client left is still
    drained for its usage after the front has nothing left, and the process
    exits 0."""
    with local_stack({"GW_SHUTDOWN_GRACE_MS": "10000"}) as s:
        stream = harness.SSEStream(s.url + "/v1/chat/completions",
                                   chat("[[mock tokens=10 token_ms=40]]", stream=True))
        assert stream.next_event()[0] == "data"
        left = harness.SSEStream(s.url + "/v1/chat/completions",
                                 chat("[[mock tokens=30 token_ms=40]]", stream=True))
        assert left.next_event()[0] == "data"
        left_id = left.headers["x-request-id"]
        left.close()
        time.sleep(0.1)
        signalled = time.monotonic()
        s.ingresses[0].proc.send_signal(signal.SIGTERM)
        events = without_cost(stream.events())
        assert events[-1] == ("data", "[DONE]")
        assert not any(kind == "data" and '"error"' in data for kind, data in events)
        # it exits once both are done (the left call needs about 1.2 s more),
        # not at the end of the 10 s grace
        s.ingresses[0].proc.wait(15)
        assert time.monotonic() - signalled < 5, time.monotonic() - signalled
        s.ingresses[0].stop()  # exit status 0, no sanitizer report
        (usage,) = s.usage(left_id)
        assert usage["client_aborted"] and usage["usage_known"] and usage["completion_tokens"] == 30, usage
        assert len(s.usage()) == 2


def test_local_dispatcher_sigterm_serves_the_queue():
    """A request still queued at SIGTERM (the one slot busy) is served, as a
    dispatcher process that outlives its ingress would serve it."""
    with local_stack({"GW_SHUTDOWN_GRACE_MS": "10000", "GW_DISPATCHER_SLOTS": "1"}) as s:
        results = {}
        def call(name):
            results[name] = post(s.url, chat(f"{name} [[mock tokens=20 token_ms=100]]"))[0]
        first = threading.Thread(target=call, args=("first",))
        first.start()
        time.sleep(0.2)
        second = threading.Thread(target=call, args=("queued",))
        second.start()
        # the second accepted and queued (the first holds the slot for 2 s): a
        # connection still in the accept queue at the signal would be reset
        time.sleep(1.0)
        s.ingresses[0].proc.send_signal(signal.SIGTERM)
        first.join(15)
        second.join(15)
        assert results == {"first": 200, "queued": 200}, results
        s.ingresses[0].proc.wait(15)
        s.ingresses[0].stop()
        assert len(s.usage()) == 2


def test_local_dispatcher_that_cannot_start_stops_the_ingress():
    """A spool it cannot create: the ingress does not serve without its
    dispatcher, it exits 1 at once and says why."""
    env = dict(os.environ, GW_LOCAL_DISPATCHER="1", GW_HTTP_PORT=str(harness.free_port()), GW_AUTH="none",
               GW_JOBS_BIND=f"tcp://127.0.0.1:{harness.free_port()}", GW_SPOOL_DIR="/dev/null/spool",
               GW_ACCOUNTING_ENDPOINTS=f"tcp://127.0.0.1:{harness.free_port()}")
    started = time.monotonic()
    out = subprocess.run([os.path.join(BIN, "ingress")], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 1, out.stderr[-2000:]
    assert time.monotonic() - started < 10
    assert "dispatcher spool: cannot create dir=/dev/null/spool" in out.stderr, out.stderr[-2000:]
    assert "the local dispatcher did not start" in out.stderr, out.stderr[-2000:]
    assert "listening" not in out.stderr


def test_local_dispatcher_second_signal_cuts_the_grace_short():
    with local_stack({"GW_SHUTDOWN_GRACE_MS": "60000"}) as s:
        stream = harness.SSEStream(s.url + "/v1/chat/completions",
                                   chat("[[mock tokens=400 token_ms=50]]", stream=True))
        assert stream.next_event()[0] == "data"
        request_id = stream.headers["x-request-id"]
        proc = s.ingresses[0].proc
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first signal waits for the stream"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        events = without_cost(stream.events())
        proc.wait(10)
        assert time.monotonic() - started < 5
        assert events[-1] == ("data", "[DONE]")
        assert json.loads(events[-2][1])["error"]["code"] == "shutting_down", events[-3:]
        s.ingresses[0].stop()
        # the cut call's usage is still written (what the provider did not say, unknown)
        (usage,) = s.usage(request_id)
        assert usage["streamed"] and not usage["usage_known"], usage


def test_local_and_remote_dispatchers_share_the_work():
    """Dispatchers on other hosts still join over GW_JOBS_BIND: with one slot
    each, four concurrent requests go to both."""
    with local_stack({"GW_DISPATCHER_SLOTS": "1"}) as s:
        remote_usage = os.path.join(s.tmp, "remote-usage.log")
        s.add_dispatcher({"GW_PROVIDER_DEEPSEEK_BASE_URL": s.mock_url, "GW_USAGE_LOG": remote_usage,
                          "GW_DISPATCHER_SLOTS": "1"})
        wait_for(lambda: s.ingresses[0].log().count("pool: dispatcher joined") == 2, 10,
                 "the remote dispatcher to join")
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            post(s.url, chat(f"both {i} [[mock tokens=5 token_ms=100]]"))[0])) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert results == [200] * 4
        # each wrote usage for what it ran, in its own log
        local, remote = len(s.usage()), len(open(remote_usage).readlines())
        assert local >= 1 and remote >= 1 and local + remote == 4, (local, remote)


@cleanup
def test_local_dispatcher_usage_stored_once_through_a_kill():
    """Usage goes through the local dispatcher's spool to accounting: a SIGKILL of
    the whole ingress process after the answers loses none and doubles none."""
    with Postgres() as db, tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{harness.free_port()}"
        spool = os.path.join(tmp, "spool")
        extra = {"GW_ACCOUNTING_ENDPOINTS": ep, "GW_SPOOL_DIR": spool, "GW_USAGE_RESEND_MS": "300"}
        with local_stack(extra) as s:
            # accounting is not running yet: the events wait in the spool
            ids = []
            for i in range(10):
                st, hd, _ = post(s.url, chat(f"local spooled {i}", stream=i % 2 == 1))
                assert st == 200
                ids.append(hd["x-request-id"])
            kill9(s.ingresses[0])
            acc = start_accounting(db, ep)
            s.add_ingress(s.local_env, port=int(s.url.rsplit(":", 1)[1]))
            wait_for(lambda: totals(db)[0] >= 10, 30, lambda: "the spooled events (%d stored)" % totals(db)[0])
            for i in range(5):
                st, hd, _ = post(s.url, chat(f"local after {i}"))
                assert st == 200
                ids.append(hd["x-request-id"])
            wait_for(lambda: totals(db)[0] >= 15, 30, "the later events")
            time.sleep(0.5)
            assert totals(db)[:2] == [15, 15]
            assert set(db.psql("SELECT request_id FROM usage_events").split()) == set(ids)
        acc.stop()
