"""Integration tests of bin/mock-upstream, the mock DeepSeek API: each test starts a real mock on a free port.

Run standalone with `python3 tests/test_mock_upstream.py [name ...]`; MOCK_BIN
selects the binary (default bin/mock-upstream, e.g. a sanitizer build).
"""

import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_BIN = os.environ.get("MOCK_BIN", os.path.join(ROOT, "bin", "mock-upstream"))
KEY = "sk-mock"
AUTH = {"Authorization": f"Bearer {KEY}"}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@contextlib.contextmanager
def mock(**env):
    """A running mock on a free port; yields its base URL; checks a clean exit."""
    port = harness.free_port()
    full_env = {"MOCK_HOST": "127.0.0.1", "MOCK_PORT": str(port)}
    full_env.update({k: str(v) for k, v in env.items()})
    base = f"http://127.0.0.1:{port}"
    with harness.start("mock-upstream", [MOCK_BIN], full_env, ready_url=base + "/mock/stats"):
        yield base


def chat(base, body, headers=None, timeout=10):
    return harness.http("POST", base + "/chat/completions", body, dict(AUTH, **(headers or {})), timeout)


def request(content="Hello", model="deepseek-chat", **fields):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(fields)
    return body


def prompt_tokens(messages):
    """The documented rule: per message 4 + ceil(bytes / 4) of its content."""
    total = 0
    for message in messages:
        if "content" not in message:
            size = 0
        elif isinstance(message["content"], str):
            size = len(message["content"].encode("utf-8"))
        else:
            size = len(json.dumps(message["content"], separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        total += 4 + (size + 3) // 4
    return total


def words(prefix, count):
    return " ".join(f"{prefix}{i}" for i in range(1, count + 1))


def assert_error(status, headers, body, want_status, message=None, type_=None):
    assert status == want_status, (status, body)
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert list(doc) == ["error"], doc
    assert sorted(doc["error"]) == ["code", "message", "param", "type"], doc
    assert doc["error"]["param"] is None
    if message is not None:
        assert doc["error"]["message"] == message, doc
    if type_ is not None:
        assert doc["error"]["type"] == type_, doc
    return doc["error"]


def stats(base):
    status, _, body = harness.http("GET", base + "/mock/stats")
    assert status == 200
    return json.loads(body)


def stream_chunks(body):
    """Parsed chunks of a complete stream body, checking it ends with [DONE]."""
    events = harness.sse_events(body)
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def test_models():
    with mock() as base:
        want = {"object": "list", "data": [
            {"id": "deepseek-chat", "object": "model", "owned_by": "deepseek"},
            {"id": "deepseek-reasoner", "object": "model", "owned_by": "deepseek"}]}
        for path in ("/models", "/v1/models"):
            status, headers, body = harness.http("GET", base + path, headers=AUTH)
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == want


def test_balance():
    with mock() as base:
        status, _, body = harness.http("GET", base + "/user/balance", headers=AUTH)
        assert status == 200
        doc = json.loads(body)
        assert doc["is_available"] is True
        info = doc["balance_infos"][0]
        assert info["currency"] in ("CNY", "USD")
        for field in ("total_balance", "granted_balance", "topped_up_balance"):
            assert isinstance(info[field], str) and float(info[field]) >= 0


def test_auth_401():
    with mock(MOCK_API_KEY="sk-secret-key") as base:
        msg = "Authentication Fails, Your api key: ****abcd is invalid"
        for method, path, body in (("GET", "/models", None), ("GET", "/user/balance", None),
                                   ("POST", "/chat/completions", "not json at all")):
            status, headers, data = harness.http(method, base + path, body,
                                                 {"Authorization": "Bearer sk-wrong-abcd"})
            error = assert_error(status, headers, data, 401, msg, "authentication_error")
            assert error["code"] == "invalid_request_error"
        status, headers, data = harness.http("GET", base + "/models")
        assert_error(status, headers, data, 401, type_="authentication_error")
        status, _, _ = harness.http("GET", base + "/models", headers={"Authorization": "Bearer sk-secret-key"})
        assert status == 200


def test_not_found_and_wrong_method():
    with mock() as base:
        status, headers, body = harness.http("GET", base + "/nope", headers=AUTH)
        assert_error(status, headers, body, 404)
        status, headers, body = harness.http("GET", base + "/chat/completions", headers=AUTH)
        assert_error(status, headers, body, 405)
        assert headers["allow"] == "POST"
        status, headers, body = harness.http("POST", base + "/models", {}, headers=AUTH)
        assert_error(status, headers, body, 405)


def test_validation_400():
    with mock() as base:
        cases = [
            ("not json", None),
            ([1, 2], None),
            ({"messages": [{"role": "user", "content": "x"}]}, None),
            ({"model": "deepseek-chat"}, None),
            ({"model": "deepseek-chat", "messages": []}, None),
            ({"model": "deepseek-chat", "messages": "hi"}, None),
            (request(model="gpt-4"), "Model Not Exist"),
            (request(n=2), None),
            (request(max_tokens=0), "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"),
            (request(max_tokens=8193), "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"),
            (request(response_format={"type": "json_schema"}), None),
            (request("[[mock colour=red]]"), None),
            (request("[[mock times=1]]"), None),
        ]
        for body, message in cases:
            status, headers, data = chat(base, body)
            assert_error(status, headers, data, 400, message, "invalid_request_error")
        # The valid neighbours pass
        for body in (request(n=1), request(max_tokens=1), request(max_tokens=8192),
                     request(response_format={"type": "json_object"})):
            assert chat(base, body)[0] == 200, body


def test_non_streaming_shape_and_tokens():
    with mock() as base:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "你好, mock! [[mock tokens=5 cache=7]]"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "again"},
        ]
        # The directive must be in the last message to count; here it is not
        before = time.time()
        status, headers, body = chat(base, {"model": "deepseek-chat", "messages": messages})
        assert status == 200
        assert headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert list(doc) == ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]
        assert UUID4.match(doc["id"]), doc["id"]
        assert doc["object"] == "chat.completion"
        assert abs(doc["created"] - before) < 5
        assert doc["model"] == "deepseek-chat"
        assert re.match(r"^fp_[0-9a-f]+$", doc["system_fingerprint"])
        choice = doc["choices"][0]
        assert choice == {"index": 0, "message": {"role": "assistant", "content": words("tok", 16)},
                          "logprobs": None, "finish_reason": "stop"}
        prompt = prompt_tokens(messages)
        assert doc["usage"] == {"prompt_tokens": prompt, "completion_tokens": 16, "total_tokens": prompt + 16,
                                "prompt_tokens_details": {"cached_tokens": 0},
                                "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": prompt}

        messages.append({"role": "user", "content": "[[mock tokens=5 cache=7]] 你好"})
        doc = json.loads(chat(base, {"model": "deepseek-chat", "messages": messages})[2])
        prompt = prompt_tokens(messages)
        assert doc["choices"][0]["message"]["content"] == "tok1 tok2 tok3 tok4 tok5"
        usage = doc["usage"]
        assert usage["prompt_tokens"] == prompt and usage["completion_tokens"] == 5
        assert usage["total_tokens"] == prompt + 5
        assert usage["prompt_cache_hit_tokens"] == 7 and usage["prompt_tokens_details"]["cached_tokens"] == 7
        assert usage["prompt_cache_miss_tokens"] == prompt - 7

        # Cache hits never exceed the prompt; ids differ per answer
        doc2 = json.loads(chat(base, request("[[mock cache=100000]]"))[2])
        assert doc2["usage"]["prompt_cache_hit_tokens"] == doc2["usage"]["prompt_tokens"]
        assert doc2["usage"]["prompt_cache_miss_tokens"] == 0
        assert doc2["id"] != doc["id"]

        # The same directive by header, and the v1 alias
        status, _, body = harness.http("POST", base + "/v1/chat/completions", request("hi"),
                                       dict(AUTH, **{"X-Mock": "tokens=2"}))
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "tok1 tok2"


def test_streaming_shape():
    with mock() as base:
        body = request("Stream me [[mock tokens=4]]", stream=True)
        status, headers, data = chat(base, body)
        assert status == 200
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert data.endswith(b"data: [DONE]\n\n")
        assert all(block.startswith(b"data: ") for block in data.split(b"\n\n") if block)
        chunks = stream_chunks(data)
        assert len(chunks) == 1 + 4 + 1
        ids = {c["id"] for c in chunks}
        assert len(ids) == 1 and UUID4.match(ids.pop())
        for c in chunks:
            assert c["object"] == "chat.completion.chunk" and c["model"] == "deepseek-chat"
            assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        deltas = [c["choices"][0]["delta"] for c in chunks[1:5]]
        assert deltas == [{"content": "tok1"}, {"content": " tok2"}, {"content": " tok3"}, {"content": " tok4"}]
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:5])
        assert all("usage" not in c for c in chunks[:5])
        final = chunks[5]
        assert final["choices"][0]["delta"] == {"content": ""}
        assert final["choices"][0]["finish_reason"] == "stop"
        prompt = prompt_tokens(body["messages"])
        assert final["usage"]["prompt_tokens"] == prompt
        assert final["usage"]["completion_tokens"] == 4 and final["usage"]["total_tokens"] == prompt + 4

        # final mode puts usage on the final chunk even with include_usage
        data = chat(base, request("[[mock tokens=2]]", stream=True, stream_options={"include_usage": True}))[2]
        chunks = stream_chunks(data)
        assert len(chunks) == 4 and all(c["choices"] for c in chunks)
        assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_streaming_separate_usage():
    with mock(MOCK_USAGE_MODE="separate") as base:
        data = chat(base, request("[[mock tokens=3]]", stream=True, stream_options={"include_usage": True}))[2]
        chunks = stream_chunks(data)
        assert len(chunks) == 1 + 3 + 1 + 1
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 3

        # Without include_usage: no usage at all
        chunks = stream_chunks(chat(base, request("[[mock tokens=3]]", stream=True))[2])
        assert len(chunks) == 5 and all("usage" not in c for c in chunks)

        # usage=final overrides the mode per request
        chunks = stream_chunks(chat(base, request("[[mock tokens=3 usage=final]]", stream=True,
                                                  stream_options={"include_usage": True}))[2])
        assert len(chunks) == 5 and chunks[-1]["usage"]["completion_tokens"] == 3
    with mock() as base:
        chunks = stream_chunks(chat(base, request("[[mock tokens=1]]", stream=True,
                                                  stream_options={"include_usage": True}),
                                    {"X-Mock": "usage=separate"})[2])
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 1


def test_reasoner():
    with mock() as base:
        body = request("Think [[mock tokens=3 reasoning=2]]", model="deepseek-reasoner")
        doc = json.loads(chat(base, body)[2])
        assert doc["model"] == "deepseek-reasoner"
        message = doc["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "tok1 tok2 tok3", "reasoning_content": "think1 think2"}
        usage = doc["usage"]
        assert usage["completion_tokens"] == 5
        assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}

        default = json.loads(chat(base, request("x", model="deepseek-reasoner"))[2])
        assert default["usage"]["completion_tokens"] == 16 + 8
        assert default["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8

        chunks = stream_chunks(chat(base, dict(body, stream=True))[2])
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert deltas[0] == {"role": "assistant", "content": None, "reasoning_content": ""}
        assert deltas[1:3] == [{"content": None, "reasoning_content": "think1"},
                               {"content": None, "reasoning_content": " think2"}]
        assert "".join(d["content"] for d in deltas[3:6]) == "tok1 tok2 tok3"
        assert all(d["reasoning_content"] is None for d in deltas[3:])
        assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2

        # reasoning only applies to the reasoner
        doc = json.loads(chat(base, request("[[mock reasoning=5 tokens=1]]"))[2])
        assert "reasoning_content" not in doc["choices"][0]["message"]
        assert doc["usage"]["completion_tokens"] == 1 and "completion_tokens_details" not in doc["usage"]


def test_status_faults():
    with mock() as base:
        for code, message in ((402, "Insufficient Balance"), (429, "Rate Limit Reached"),
                              (500, "Server Error"), (503, "Server Overloaded")):
            status, headers, data = chat(base, request(f"[[mock status={code}]]"))
            assert_error(status, headers, data, code, message)
            assert "retry-after" not in headers
        status, headers, data = chat(base, request("hi", stream=True), {"X-Mock": "status=429 retry_after=7"})
        assert_error(status, headers, data, 429, "Rate Limit Reached")
        assert headers["retry-after"] == "7"
        status, headers, data = chat(base, request("[[mock status=502]]"))
        assert_error(status, headers, data, 502)


def test_times_and_id():
    with mock() as base:
        body = request("[[mock status=429 times=2 id=job-1 tokens=2]]")
        assert chat(base, body)[0] == 429
        assert chat(base, body)[0] == 429
        status, _, data = chat(base, body)
        assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "tok1 tok2"
        assert chat(base, body)[0] == 200
        # Another id has its own counter
        assert chat(base, request("[[mock status=500 times=1 id=job-2]]"))[0] == 500
        assert chat(base, request("[[mock status=500 times=1 id=job-2]]"))[0] == 200
        # reset forgets the counters
        assert harness.http("POST", base + "/mock/reset")[0] == 200
        assert chat(base, body)[0] == 429
        # times also gates the other faults: drop once, then a clean answer
        drop = request("[[mock drop_after=1 times=1 id=job-3]]", stream=True)
        try:
            chat(base, drop)
            raise AssertionError("first request should have been dropped")
        except http.client.IncompleteRead:
            pass
        stream_chunks(chat(base, drop)[2])


def test_first_byte_keepalives():
    with mock(MOCK_KEEPALIVE_MS=150) as base:
        start = time.monotonic()
        stream = harness.SSEStream(base + "/chat/completions",
                                   request("[[mock first_byte_ms=800 tokens=2]]", stream=True), AUTH)
        with stream:
            assert stream.status == 200
            assert time.monotonic() - start < 0.5, "headers must not wait for the first byte"
            comments = 0
            while True:
                kind, payload = stream.next_event()
                if kind == "data":
                    break
                assert (kind, payload) == ("comment", "keep-alive")
                comments += 1
            assert time.monotonic() - start >= 0.75
            assert 3 <= comments <= 6, comments
            assert json.loads(payload)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            rest = list(stream.events())
            assert rest[-1] == ("data", "[DONE]") and len(rest) == 2 + 1 + 1

        # keepalive_ms per request; non-streaming answers get blank lines, then JSON
        start = time.monotonic()
        status, headers, data = chat(base, request("[[mock first_byte_ms=500 keepalive_ms=100 tokens=2]]"))
        assert status == 200 and time.monotonic() - start >= 0.45
        assert headers["content-type"] == "application/json"
        assert data.startswith(b"\n") and 3 <= data.count(b"\n") <= 6, data[:20]
        assert json.loads(data)["choices"][0]["message"]["content"] == "tok1 tok2"


def test_hold_ms():
    with mock() as base:
        start = time.monotonic()
        try:
            chat(base, request("[[mock hold_ms=3000]]"), timeout=0.5)
            raise AssertionError("nothing may arrive while held")
        except (TimeoutError, socket.timeout):
            pass
        assert time.monotonic() - start < 1
        start = time.monotonic()
        status, _, data = chat(base, request("[[mock hold_ms=300 tokens=1]]"))
        assert status == 200 and time.monotonic() - start >= 0.29
        assert json.loads(data)["choices"][0]["message"]["content"] == "tok1"
        # hold also delays a status fault
        start = time.monotonic()
        assert chat(base, request("[[mock hold_ms=200 status=503]]"))[0] == 503
        assert time.monotonic() - start >= 0.19


def test_token_timing():
    with mock(MOCK_TOKEN_DELAY_MS=20) as base:
        start = time.monotonic()
        stream = harness.SSEStream(base + "/chat/completions", request("[[mock tokens=5]]", stream=True), AUTH)
        with stream:
            arrivals = []
            for kind, payload in stream.events():
                arrivals.append(time.monotonic() - start)
        assert len(arrivals) == 1 + 5 + 1 + 1
        assert arrivals[-1] >= 0.095, arrivals
        start = time.monotonic()
        status, _, _ = chat(base, request("[[mock tokens=4 token_ms=50]]"))
        assert status == 200 and time.monotonic() - start >= 0.19
        start = time.monotonic()
        stream_chunks(chat(base, request("[[mock tokens=50 token_ms=0]]", stream=True))[2])
        assert time.monotonic() - start < 0.5


def test_drop_after():
    with mock() as base:
        stream = harness.SSEStream(base + "/chat/completions",
                                   request("[[mock tokens=10 drop_after=3]]", stream=True), AUTH)
        got = []
        try:
            with stream:
                for kind, payload in stream.events():
                    got.append(json.loads(payload))
            raise AssertionError("stream should have been cut")
        except (http.client.IncompleteRead, ConnectionError):
            pass
        assert [c["choices"][0]["delta"].get("content") for c in got] == ["", "tok1", " tok2", " tok3"]

        # drop_after beyond the answer: every token, no final chunk
        stream = harness.SSEStream(base + "/chat/completions",
                                   request("[[mock tokens=2 drop_after=5]]", stream=True), AUTH)
        got = []
        try:
            with stream:
                for kind, payload in stream.events():
                    got.append(json.loads(payload))
            raise AssertionError("stream should have been cut")
        except (http.client.IncompleteRead, ConnectionError):
            pass
        assert len(got) == 3 and got[-1]["choices"][0]["finish_reason"] is None

        try:
            chat(base, request("[[mock drop_after=0]]"))
            raise AssertionError("body should have been cut")
        except (http.client.IncompleteRead, ConnectionError):
            pass
        s = wait_stats(base, lambda s: s["active"] == 0)
        assert s["aborted"] == 3 and s["completed"] == 0, s


def test_malformed():
    with mock() as base:
        status, _, data = chat(base, request("[[mock malformed=1]]"))
        assert status == 200 and data
        try:
            json.loads(data)
            raise AssertionError("body should not be JSON")
        except ValueError:
            pass
        events = harness.sse_events(chat(base, request("[[mock malformed=1 tokens=2]]", stream=True))[2])
        assert events[-1] == "[DONE]"
        bad = []
        for e in events[:-1]:
            try:
                json.loads(e)
            except ValueError:
                bad.append(e)
        assert len(bad) == 1 and len(events) == 1 + 1 + 2 + 1 + 1


def test_max_tokens_length():
    with mock() as base:
        doc = json.loads(chat(base, request("hi", max_tokens=5))[2])
        assert doc["choices"][0]["message"]["content"] == words("tok", 5)
        assert doc["choices"][0]["finish_reason"] == "length"
        assert doc["usage"]["completion_tokens"] == 5
        doc = json.loads(chat(base, request("[[mock tokens=3]]", max_tokens=3))[2])
        assert doc["choices"][0]["finish_reason"] == "stop"

        chunks = stream_chunks(chat(base, request("hi", max_tokens=2, stream=True))[2])
        assert len(chunks) == 1 + 2 + 1
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 2

        # Reasoning is spent first and counts against max_tokens
        doc = json.loads(chat(base, request("hi", model="deepseek-reasoner", max_tokens=10))[2])
        message = doc["choices"][0]["message"]
        assert message["reasoning_content"] == words("think", 8) and message["content"] == "tok1 tok2"
        assert doc["choices"][0]["finish_reason"] == "length"
        assert doc["usage"]["completion_tokens"] == 10


def wait_stats(base, predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        s = stats(base)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"stats never matched: {s}")
        time.sleep(0.02)


def test_stats_and_disconnect():
    with mock() as base:
        assert stats(base) == {"requests": 0, "active": 0, "completed": 0, "aborted": 0}
        assert harness.http("GET", base + "/models", headers=AUTH)[0] == 200
        assert chat(base, request("x"))[0] == 200
        s = wait_stats(base, lambda s: s["completed"] == 2)
        assert s == {"requests": 2, "active": 0, "completed": 2, "aborted": 0}, s

        # A client that goes away mid-stream: aborted, and nothing stays active
        stream = harness.SSEStream(base + "/chat/completions",
                                   request("[[mock tokens=1000 token_ms=50]]", stream=True), AUTH)
        for _ in range(3):
            assert stream.next_event()[0] == "data"
        assert stats(base)["active"] == 1
        stream.close()
        s = wait_stats(base, lambda s: s["active"] == 0)
        assert s["aborted"] == 1 and s["requests"] == 3, s

        # The same while still "queued" behind keep-alives
        stream = harness.SSEStream(base + "/chat/completions",
                                   request("[[mock first_byte_ms=60000 keepalive_ms=50]]", stream=True), AUTH)
        assert stream.next_event() == ("comment", "keep-alive")
        stream.close()
        s = wait_stats(base, lambda s: s["active"] == 0)
        assert s["aborted"] == 2, s

        assert harness.http("POST", base + "/mock/reset")[0] == 200
        assert stats(base) == {"requests": 0, "active": 0, "completed": 0, "aborted": 0}


def test_concurrent_streams():
    with mock(MOCK_THREADS=2) as base:
        results = []
        lock = threading.Lock()

        def one(i):
            try:
                data = chat(base, request(f"n{i} [[mock tokens=10 token_ms=20]]", stream=True), timeout=20)[2]
                ok = len(stream_chunks(data)) == 12
            except Exception as exc:  # reported through results
                ok = exc
            with lock:
                results.append(ok)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 100, [r for r in results if r is not True][:3]
        # 100 streams of 10 x 20 ms run side by side, not one after another
        assert time.monotonic() - start < 5
        s = wait_stats(base, lambda s: s["completed"] == 100)
        assert s["active"] == 0 and s["aborted"] == 0


def main(argv):
    names = argv[1:]
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    if names:
        tests = [(n, f) for n, f in tests if n in names]
    passed = failed = 0
    for name, func in tests:
        start = time.monotonic()
        try:
            func()
            passed += 1
            print(f"PASS {name} ({time.monotonic() - start:.2f}s)")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
