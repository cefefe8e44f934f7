"""Integration tests of the core gateway: real mock upstream, ingress and dispatchers on loopback.

Each test starts its own processes (tests/harness.py) and talks HTTP to the
ingress as any OpenAI/DeepSeek client would. Usage events are read from the
dispatchers' GW_USAGE_LOG file.
"""

import json
import os
import signal
import socket
import tempfile
import threading
import time

import harness

BIN = os.environ.get("GW_BIN_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin"))
MOCK_KEY = "sk-mock-test-key"


class Stack:
    """Mock upstream + ingresses + dispatchers, torn down (and checked) on exit."""

    def __init__(self, dispatchers=1, ingresses=1, ingress_env=None, dispatcher_env=None, mock=True,
                 mock_key=MOCK_KEY):
        self.mock_key = mock_key  # the upstream key: the mock's and the dispatchers' DEEPSEEK_API_KEY
        self.tmp = tempfile.mkdtemp(prefix="gw-test-")
        self.usage_path = os.path.join(self.tmp, "usage.log")
        self.procs = []
        # a stack that fails to start stops what it started: left running, its
        # processes would load every later test
        try:
            self.mock_url = None
            if mock:
                port = harness.free_port()
                self.mock_url = f"http://127.0.0.1:{port}"
                self.mock = self._start("mock", [os.path.join(BIN, "mock-upstream")],
                                        {"MOCK_PORT": str(port), "MOCK_API_KEY": mock_key},
                                        self.mock_url + "/mock/stats")
            self.ingress_urls = []
            self.jobs_endpoints = []
            self.ingresses = []
            for _ in range(ingresses):
                self.add_ingress(ingress_env)
            self.dispatchers = []
            for _ in range(dispatchers):
                self.add_dispatcher(dispatcher_env)
            if dispatchers:
                for url in self.ingress_urls:
                    wait_for(lambda: harness.http("GET", url + "/ready")[0] == 200, 10, "ingress ready")
        except BaseException:
            self._stop_all()
            raise

    def _start(self, name, argv, env, ready_url=None):
        env = dict(env)
        env.setdefault("GW_LOG_LEVEL", "info")
        proc = harness.start(name, argv, env, ready_url=ready_url)
        self.procs.append(proc)
        return proc

    def add_ingress(self, extra=None, port=None, jobs=None):
        """Starts an ingress; port/jobs given reuse the addresses of one that stopped."""
        replacing = port is not None
        port, jobs = port or harness.free_port(), jobs or harness.free_port()
        # Keys are on by default (docs/keys.md); these stacks have no accounting to
        # ask, so they run without them unless the caller says otherwise.
        # Heartbeats every 100 ms, a peer dead after 1 s of silence: a loop that
        # stalls a few hundred ms on a loaded ASan run is not taken for dead (a
        # killed peer is noticed at the next send anyway).
        env = {"GW_HTTP_PORT": str(port), "GW_JOBS_BIND": f"tcp://127.0.0.1:{jobs}",
               "GW_HEARTBEAT_MS": "100", "GW_HEARTBEAT_LIVENESS": "10", "GW_AUTH": "none"}
        env.update(extra or {})
        url = f"http://127.0.0.1:{port}"
        proc = self._start("ingress", [os.path.join(BIN, "ingress")], env, url + "/health")
        if replacing:
            return proc
        self.ingress_urls.append(url)
        self.jobs_endpoints.append(f"tcp://127.0.0.1:{jobs}")
        self.ingresses.append(proc)
        return proc

    def add_dispatcher(self, extra=None):
        env = {"GW_INGRESS_ENDPOINTS": ",".join(self.jobs_endpoints),
               "GW_HEARTBEAT_MS": "100", "GW_HEARTBEAT_LIVENESS": "10",
               "GW_USAGE_LOG": self.usage_path, "DEEPSEEK_API_KEY": self.mock_key,
               "GW_RETRY_BASE_MS": "20"}
        if self.mock_url:
            env["GW_PROVIDER_DEEPSEEK_BASE_URL"] = self.mock_url
        env.update(extra or {})
        proc = self._start("dispatcher", [os.path.join(BIN, "dispatcher")], env)
        self.dispatchers.append(proc)
        return proc

    @property
    def url(self):
        return self.ingress_urls[0]

    def usage(self, request_id=None):
        if not os.path.exists(self.usage_path):
            return []
        with open(self.usage_path) as f:
            events = [json.loads(line) for line in f if line.strip()]
        return [e for e in events if request_id is None or e["request_id"] == request_id]

    def __enter__(self):
        return self

    def _stop_all(self):
        """Stops every process, last started first; returns what went wrong."""
        errors = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except AssertionError as e:
                errors.append(str(e))
        return errors

    def __exit__(self, exc_type, exc, tb):
        errors = self._stop_all()
        if errors and exc_type is None:
            raise AssertionError("\n".join(errors))


def kill9(proc):
    """SIGKILL, and tell the harness not to expect a clean exit."""
    proc.proc.kill()
    proc.proc.wait()
    proc._stopped = True


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RuntimeError):  # not up yet: a refused connection, a missing table
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def established(port):
    """TCP connections in ESTABLISHED state whose local port is port (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def chat(content="Hello", model="deepseek-chat", **fields):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(fields)
    return body


def post(url, body, headers=None, timeout=20):
    return harness.http("POST", url + "/v1/chat/completions", body, headers, timeout)


def strip_ids(obj):
    """A response without what legitimately differs between two calls."""
    obj = dict(obj)
    obj.pop("id", None)
    obj.pop("created", None)
    return obj


def without_cost(events):
    """SSEStream events without the gateway's closing `: x-gateway-cost=...` comment (docs/keys.md)."""
    return [e for e in events if not (e[0] == "comment" and e[1].startswith("x-gateway-cost="))]


def error_of(body):
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err


# ---------------------------------------------------------------- tests


def test_same_body_as_direct_nonstream():
    with Stack() as s:
        for model in ("deepseek-chat", "deepseek-reasoner"):
            body = chat("Compare me [[mock tokens=7 reasoning=3 cache=2]]", model, temperature=0.7)
            st, hd, via = post(s.url, body)
            assert st == 200, via
            assert hd["content-type"].startswith("application/json")
            assert len(hd["x-request-id"]) == 36
            st2, _, direct = post(s.mock_url, body, {"Authorization": f"Bearer {MOCK_KEY}"})
            assert st2 == 200
            assert strip_ids(json.loads(via)) == strip_ids(json.loads(direct))
            usage = s.usage(hd["x-request-id"])
            assert len(usage) == 1 and usage[0]["status"] == 200 and usage[0]["usage_known"]
            u = json.loads(via)["usage"]
            assert usage[0]["completion_tokens"] == u["completion_tokens"]
            assert usage[0]["cache_hit_tokens"] == 2 and usage[0]["cache_miss_tokens"] == u["prompt_tokens"] - 2
            assert usage[0]["reasoning_tokens"] == (3 if model == "deepseek-reasoner" else 0)


def test_same_body_as_direct_stream():
    with Stack() as s:
        for model in ("deepseek-chat", "deepseek-reasoner"):
            body = chat("Stream me [[mock tokens=5 reasoning=2]]", model, stream=True)
            st, hd, via = post(s.url, body)
            assert st == 200 and hd["content-type"] == "text/event-stream; charset=utf-8", (st, hd)
            assert hd["cache-control"] == "no-cache"
            _, _, direct = post(s.mock_url, body, {"Authorization": f"Bearer {MOCK_KEY}"})
            ev_via, ev_direct = harness.sse_events(via), harness.sse_events(direct)
            assert ev_via[-1] == "[DONE]" and ev_direct[-1] == "[DONE]"
            assert [strip_ids(json.loads(e)) for e in ev_via[:-1]] == [strip_ids(json.loads(e)) for e in ev_direct[:-1]]
            if model == "deepseek-reasoner":
                assert any("reasoning_content" in json.loads(e)["choices"][0]["delta"] for e in ev_via[:-1])
            usage = s.usage(hd["x-request-id"])
            assert len(usage) == 1 and usage[0]["streamed"] and usage[0]["usage_known"]
            assert usage[0]["completion_tokens"] == 5 + (2 if model == "deepseek-reasoner" else 0)


def test_usage_on_separate_chunk():
    """OpenAI-style usage chunk: captured always, shown only to a client that asked for it."""
    with Stack() as s:
        body = chat("[[mock usage=separate tokens=4]]", stream=True)
        st, hd, raw = post(s.url, body)
        events = harness.sse_events(raw)
        assert st == 200 and events[-1] == "[DONE]"
        assert not any(json.loads(e)["choices"] == [] for e in events[:-1]), events
        usage = s.usage(hd["x-request-id"])
        assert usage[0]["usage_known"] and usage[0]["completion_tokens"] == 4
        body["stream_options"] = {"include_usage": True}
        st, hd, raw = post(s.url, body)
        events = harness.sse_events(raw)
        last = json.loads(events[-2])
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4


def test_models_health_ready():
    with Stack(dispatchers=0) as s:
        assert harness.http("GET", s.url + "/health")[0] == 200
        st, _, body = harness.http("GET", s.url + "/ready")
        assert st == 503, body
        s.add_dispatcher()
        wait_for(lambda: harness.http("GET", s.url + "/ready")[0] == 200, 10, "ready")
        for path in ("/v1/models", "/models"):
            st, hd, body = harness.http("GET", s.url + path)
            models = json.loads(body)
            assert st == 200 and models["object"] == "list"
            assert [m["id"] for m in models["data"]] == ["deepseek-chat", "deepseek-reasoner"]
            assert all(m["owned_by"] == "deepseek" and "created" not in m for m in models["data"])


def test_bad_requests():
    with Stack() as s:
        st, _, body = harness.http("POST", s.url + "/v1/chat/completions", b"{not json")
        assert st == 400 and "not valid JSON" in error_of(body)["message"]
        st, _, body = post(s.url, {"messages": [{"role": "user", "content": "x"}]})
        assert st == 400 and error_of(body)["param"] == "model"
        st, _, body = post(s.url, chat(model="deepseek-nope"))
        assert st == 400 and error_of(body)["message"] == "Model Not Exist"
        st, _, body = post(s.url, chat(n=3))
        assert st == 400 and error_of(body)["param"] == "n"
        st, _, body = harness.http("GET", s.url + "/v1/nothing")
        assert st == 404 and error_of(body)["code"] == "unknown_url"
        st, _, body = harness.http("GET", s.url + "/v1/chat/completions")
        assert st == 405
        # the alias DeepSeek also accepts
        st, _, body = harness.http("POST", s.url + "/chat/completions", chat())
        assert st == 200, body
        # the upstream's own validation passes through with its status
        st, _, body = post(s.url, chat(max_tokens=100000))
        assert st == 400 and "max_tokens" in error_of(body)["message"]


def test_body_over_limit_413_without_reading_it():
    with Stack(ingress_env={"GW_MAX_BODY_BYTES": "4096"}) as s:
        port = int(s.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            # Announce 100 MB, send 1 KB: the answer must come without the rest.
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000000\r\n\r\n" + b"{" * 1024)
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        # a chunked body is counted as it arrives
        big = json.dumps(chat("x" * 8000)).encode()
        st, _, body = post(s.url, iter([big[:3000], big[3000:]]))  # an iterable goes chunked
        assert st == 413 and error_of(body)["code"] == "request_too_large"
        st, _, _ = post(s.url, chat("small enough"))
        assert st == 200


def test_upstream_errors_pass_through():
    with Stack() as s:
        for status, message in ((401, "Authentication Fails"), (402, "Insufficient Balance"), (400, None)):
            st, hd, body = post(s.url, chat(f"[[mock status={status}]]"))
            assert st == status, (st, body)
            err = error_of(body)
            if message:
                assert message in err["message"], err
            assert len(s.usage(hd["x-request-id"])) == 1  # not retried
        # the gateway's own key never reaches the client
        st, _, body = post(s.url, chat("[[mock status=401]]"))
        assert MOCK_KEY.encode() not in body


def test_retry_429_then_200():
    with Stack() as s:
        st, hd, body = post(s.url, chat("[[mock status=429 retry_after=1 times=1 id=retry-a]]"))
        assert st == 200, body
        usage = s.usage(hd["x-request-id"])
        assert [u["status"] for u in usage] == [429, 200], usage
        assert [u["attempt"] for u in usage] == [1, 2]
        # Retry-After was honoured: the second attempt started at least 1 s after the first
        assert usage[1]["started_ms"] - usage[0]["started_ms"] >= 990  # ms clocks round
        # 503 twice, then 200: still transparent (GW_RETRY_MAX=2)
        st, hd, body = post(s.url, chat("[[mock status=503 times=2 id=retry-b]]", stream=True))
        assert st == 200 and harness.sse_events(body)[-1] == "[DONE]"
        assert [u["status"] for u in s.usage(hd["x-request-id"])] == [503, 503, 200]
        # always 500: the client gets the 500 after the retries
        st, hd, body = post(s.url, chat("[[mock status=500]]"))
        assert st == 500 and len(s.usage(hd["x-request-id"])) == 3


def test_fallback_to_next_provider():
    dead = harness.free_port()
    with Stack(dispatcher_env={"GW_PROVIDERS": "primary,deepseek",
                               "GW_PROVIDER_PRIMARY_BASE_URL": f"http://127.0.0.1:{dead}",
                               "GW_PROVIDER_PRIMARY_MODELS": "deepseek-chat=primary-chat",
                               "PRIMARY_API_KEY": "sk-primary", "GW_RETRY_MAX": "1"}) as s:
        st, hd, body = post(s.url, chat())
        assert st == 200, body
        usage = s.usage(hd["x-request-id"])
        assert [(u["provider"], u["status"]) for u in usage] == [("primary", 0), ("primary", 0), ("deepseek", 200)]
        assert usage[0]["upstream_model"] == "primary-chat" and usage[2]["upstream_model"] == "deepseek-chat"


def test_first_byte_timeout():
    with Stack(dispatcher_env={"GW_UPSTREAM_FIRST_BYTE_TIMEOUT_MS": "1000", "GW_RETRY_MAX": "1"}) as s:
        st, hd, body = post(s.url, chat("[[mock hold_ms=2000 times=1 id=fb-1]]"))
        assert st == 200, body
        st, hd, body = post(s.url, chat("[[mock hold_ms=2000]]"))
        assert st == 504 and error_of(body)["code"] == "upstream_timeout"


def test_keepalive_comments_relayed():
    with Stack() as s:
        with harness.SSEStream(s.url + "/v1/chat/completions",
                               chat("[[mock first_byte_ms=500 keepalive_ms=100 tokens=2]]", stream=True)) as stream:
            events = without_cost(stream.events())
        assert ("comment", "keep-alive") in events[:3], events
        assert events[-1] == ("data", "[DONE]")


def test_concurrent_streams_do_not_mix():
    with Stack() as s:
        results = {}

        def one(i):
            body = chat(f"stream {i} [[mock tokens={5 + i % 7} token_ms=20]]", stream=True)
            st, hd, raw = post(s.url, body, timeout=30)
            results[i] = (st, raw)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 50
        for i, (st, raw) in results.items():
            assert st == 200
            events = harness.sse_events(raw)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert len({c["id"] for c in chunks}) == 1, f"stream {i} mixes responses"
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert text.split() == [f"tok{k}" for k in range(1, 6 + i % 7)], (i, text)


def test_dispatcher_killed_under_load_loses_nothing_unstarted():
    with Stack(dispatchers=2) as s:
        results = {}

        def one(i, stream):
            body = chat(f"load {i} [[mock tokens=8 token_ms=60]]", stream=stream)
            try:
                results[(i, stream)] = post(s.url, body, timeout=30)
            except Exception as e:  # a broken stream is a result too
                results[(i, stream)] = e

        threads = [threading.Thread(target=one, args=(i, i % 4 == 0)) for i in range(40)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        kill9(s.dispatchers[0])
        for t in threads:
            t.join(60)
        assert len(results) == 40
        broken = 0
        for (i, stream), res in results.items():
            assert not isinstance(res, Exception), (i, res)
            st, hd, raw = res
            if not stream:
                assert st == 200, (i, st, raw)
                assert json.loads(raw)["choices"][0]["message"]["content"].split()[-1] == "tok8"
                continue
            events = harness.sse_events(raw)
            assert events[-1] == "[DONE]", events
            if "error" in json.loads(events[-2]):
                broken += 1  # it had started on the killed dispatcher: ended clearly
                assert json.loads(events[-2])["error"]["code"] == "dispatcher_lost"
        # requests that were re-queued show a second dispatch in the usage
        assert any(u["dispatch"] == 1 for u in s.usage()), "nothing was re-dispatched"


def test_no_dispatcher_503_within_timeout():
    with Stack(dispatchers=0, ingress_env={"GW_QUEUE_TIMEOUT_MS": "300"}) as s:
        started = time.monotonic()
        st, hd, body = post(s.url, chat())
        elapsed = time.monotonic() - started
        assert st == 503 and error_of(body)["code"] == "no_capacity"
        assert 0.25 <= elapsed < 3, elapsed


def test_client_disconnect_mid_stream():
    with Stack() as s:
        stream = harness.SSEStream(s.url + "/v1/chat/completions",
                                   chat("[[mock tokens=30 token_ms=40]]", stream=True))
        request_id = stream.headers["x-request-id"]
        for _ in range(3):
            assert stream.next_event()[0] == "data"
        port = int(s.url.rsplit(":", 1)[1])
        assert established(port) == 1
        stream.close()
        # the dispatcher drains the upstream to its end and logs the real usage
        wait_for(lambda: s.usage(request_id), 10, "usage of the aborted stream")
        (usage,) = s.usage(request_id)
        assert usage["client_aborted"] and usage["usage_known"] and usage["completion_tokens"] == 30
        stats = json.loads(harness.http("GET", s.mock_url + "/mock/stats")[2])
        assert stats["active"] == 0, stats
        # nor does the ingress keep the client's connection
        wait_for(lambda: established(port) == 0, 5, "ingress to close the client connection")
        # and the gateway is fine afterwards
        assert post(s.url, chat())[0] == 200


def test_upstream_drop_mid_stream_ends_with_error_event():
    with Stack() as s:
        st, hd, raw = post(s.url, chat("[[mock drop_after=3 tokens=10]]", stream=True))
        events = harness.sse_events(raw)
        assert st == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "upstream_disconnected"
        (usage,) = s.usage(hd["x-request-id"])
        assert not usage["usage_known"]
        # the same without streaming is retried (nothing was sent to the client)
        st, hd, raw = post(s.url, chat("[[mock drop_after=3 times=1 id=drop-ns]]"))
        assert st == 200, raw
        # malformed JSON from upstream: a clear 502
        st, hd, raw = post(s.url, chat("[[mock malformed=1]]"))
        assert st == 502 and error_of(raw)["code"] == "bad_upstream_response"


def test_two_ingresses_two_dispatchers():
    with Stack(dispatchers=2, ingresses=2) as s:
        for url in s.ingress_urls:
            for i in range(6):
                st, _, body = post(url, chat(f"spread {i}"))
                assert st == 200, body
        used = {u["event_id"] for u in s.usage()}
        assert len(used) == 12
        # the ingress restarts: dispatchers find it again
        s.ingresses[0].stop()
        port = int(s.ingress_urls[0].rsplit(":", 1)[1])
        s.add_ingress(port=port, jobs=int(s.jobs_endpoints[0].rsplit(":", 1)[1]))
        wait_for(lambda: harness.http("GET", s.ingress_urls[0] + "/ready")[0] == 200, 10, "restarted ingress ready")
        assert post(s.ingress_urls[0], chat())[0] == 200


def test_ingress_sigterm_lets_requests_finish():
    with Stack() as s:
        stream = harness.SSEStream(s.url + "/v1/chat/completions",
                                   chat("[[mock tokens=30 token_ms=40]]", stream=True))
        assert stream.next_event()[0] == "data"
        plain = {}
        t = threading.Thread(target=lambda: plain.update(r=post(s.url, chat("[[mock tokens=10 token_ms=50]]"))))
        t.start()
        # both at the mock before the signal: a connection still in the accept
        # queue when the ingress closes its listener would be reset
        wait_for(lambda: json.loads(harness.http("GET", s.mock_url + "/mock/stats")[2])["active"] == 2, 5,
                 "both requests at the mock")
        s.ingresses[0].proc.send_signal(signal.SIGTERM)
        events = without_cost(stream.events())
        t.join(10)
        assert events[-1] == ("data", "[DONE]") and not any("error" in e[1] for e in events if e[1] != "[DONE]")
        assert plain["r"][0] == 200
        s.ingresses[0].stop()  # exit status 0, no sanitizer report
        port = int(s.url.rsplit(":", 1)[1])
        try:
            harness.http("GET", s.url + "/health", timeout=1)
            raise AssertionError(f"port {port} still answers")
        except OSError:
            pass


def test_ingress_sigterm_grace_runs_out():
    with Stack(ingress_env={"GW_SHUTDOWN_GRACE_MS": "200"}) as s:
        stream = harness.SSEStream(s.url + "/v1/chat/completions",
                                   chat("[[mock tokens=100 token_ms=50]]", stream=True))
        assert stream.next_event()[0] == "data"
        s.ingresses[0].proc.send_signal(signal.SIGTERM)
        events = without_cost(stream.events())
        assert events[-1] == ("data", "[DONE]")
        assert json.loads(events[-2][1])["error"]["code"] == "shutting_down"
        s.ingresses[0].stop()


def test_dispatcher_sigterm_finishes_its_jobs():
    with Stack(dispatchers=2) as s:
        streams = [harness.SSEStream(s.url + "/v1/chat/completions",
                                     chat(f"drain {i} [[mock tokens=12 token_ms=40]]", stream=True)) for i in range(6)]
        for st in streams:
            assert st.next_event()[0] == "data"
        leaving = s.dispatchers[0]
        leaving.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        # new work goes to the other dispatcher while the first finishes
        for i in range(5):
            assert post(s.url, chat(f"after {i}"))[0] == 200
        for st in streams:
            events = without_cost(st.events())
            assert events[-1] == ("data", "[DONE]")
            assert not any(kind == "data" and '"error"' in data for kind, data in events)
        leaving.stop()  # exit status 0 once its jobs are done
        usage = s.usage()
        assert len(usage) == 11 and all(u["usage_known"] and u["status"] == 200 for u in usage)
        assert not any(u["dispatch"] for u in usage), "nothing needed re-dispatching"
