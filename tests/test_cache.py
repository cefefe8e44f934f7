"""The response cache (issue 6, docs/cache.md), end to end on a real stack:
PostgreSQL, accounting, the mock upstream, a dispatcher and two ingresses with
keys on. What is checked is what a client and the operator see: which requests
reach the upstream, the bytes a hit answers with, its headers, and the usage
rows (one per request, a hit's marked cached and free, budgets and tpm
untouched by it)."""

import json
import os
import re
import time
from decimal import Decimal

import harness
from test_gateway import chat, wait_for
from test_keys import KeyStack, bearer, check_cost, error_of

CACHE = {"X-Gateway-Cache": "use"}


def mock_requests(ks):
    return json.loads(harness.http("GET", ks.mock_url + "/mock/stats")[2])["requests"]


def post(ks, key, body, headers=None, url=None, raw=None):
    """(status, headers, body bytes); raw sends that text as the body instead."""
    hd = dict(bearer(key))
    hd.update(headers or {})
    if raw is not None:
        hd["Content-Type"] = "application/json"
        return harness.http("POST", (url or ks.url) + "/v1/chat/completions", raw.encode(), hd, timeout=30)
    return harness.http("POST", (url or ks.url) + "/v1/chat/completions", body, hd, timeout=30)


def cost_comment(body):
    """The cost a stream closes with (its last ": x-gateway-cost=" comment)."""
    found = re.findall(rb": x-gateway-cost=([0-9.]+) ", body)
    assert found, body
    return Decimal(found[-1].decode())


def rows(ks, key_id):
    """The key's usage rows in order: (cached, cost_pico or None, tokens, streamed)."""
    out = ks.sql("SELECT cached, cost_pico, cache_hit_tokens + cache_miss_tokens + completion_tokens, streamed"
                 f" FROM usage_events WHERE api_key_id = {int(key_id)} ORDER BY started_at, event_id")
    result = []
    for line in out.splitlines():
        cached, cost, tokens, streamed = line.split("|")
        result.append((cached == "t", int(cost) if cost else None, int(tokens), streamed == "t"))
    return result


def wait_rows(ks, key_id, n):
    wait_for(lambda: len(rows(ks, key_id)) >= n, 30, lambda: f"{n} usage rows (have {rows(ks, key_id)})")
    time.sleep(0.3)
    got = rows(ks, key_id)
    assert len(got) == n, got
    return got


def test_cache_hit_is_the_same_answer_free_and_marked():
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("cache-a", budget_day="1.00")
        body = chat("What is 2+2?", temperature=0.7)
        before = mock_requests(ks)
        st, hd, first = post(ks, key["key"], body, CACHE)
        assert st == 200, first
        assert hd["x-gateway-cache"] == "miss", hd
        assert mock_requests(ks) == before + 1
        cost1 = hd["x-gateway-cost"]
        assert float(cost1) > 0

        # the same request written differently (key order, spacing) is a hit:
        # the very bytes of the first answer, at no cost, with no upstream call
        raw = ('{ "temperature": 0.7, "messages": [ {"content": "What is 2+2?", "role": "user"} ],'
               '  "model": "deepseek-chat" }')
        st, hd, second = post(ks, key["key"], None, CACHE, raw=raw)
        assert st == 200, second
        assert hd["x-gateway-cache"] == "hit", hd
        assert second == first
        check_cost(hd["x-gateway-cost"], 0)
        assert hd["x-request-id"]
        assert mock_requests(ks) == before + 1

        # the other ingress reaches the same dispatcher's cache
        st, hd, third = post(ks, key["key"], body, CACHE, url=ks.urls[1])
        assert st == 200 and hd["x-gateway-cache"] == "hit" and third == first, hd

        # a changed request is a miss; bypass and refresh go upstream
        st, hd, _ = post(ks, key["key"], chat("What is 2+3?", temperature=0.7), CACHE)
        assert st == 200 and hd["x-gateway-cache"] == "miss"
        st, hd, fresh = post(ks, key["key"], body, {"X-Gateway-Cache": "bypass"})
        assert st == 200 and hd["x-gateway-cache"] == "bypass" and fresh != first
        st, hd, refreshed = post(ks, key["key"], body, {"X-Gateway-Cache": "refresh"})
        assert st == 200 and hd["x-gateway-cache"] == "refresh" and refreshed != first
        assert mock_requests(ks) == before + 4
        # refresh replaced the entry: the next hit is the refreshed answer
        st, hd, again = post(ks, key["key"], body, CACHE)
        assert hd["x-gateway-cache"] == "hit" and again == refreshed
        # no header, no cache: the answer goes upstream and says nothing of a cache
        st, hd, _ = post(ks, key["key"], body)
        assert st == 200 and "x-gateway-cache" not in hd
        assert mock_requests(ks) == before + 5

        # one usage row per request; hits are marked, free and carry the
        # original call's tokens; the key's spend is the paid calls' only
        got = wait_rows(ks, key["id"], 8)
        cached = [r for r in got if r[0]]
        paid = [r for r in got if not r[0]]
        assert len(cached) == 3 and len(paid) == 5, got
        assert all(r[1] == 0 and r[2] == paid[0][2] for r in cached), got
        assert all(r[1] > 0 for r in paid), got
        spend = int(ks.sql(f"SELECT cost_pico FROM key_spend WHERE key_id = {key['id']} AND period = 'total'"))
        assert spend == sum(r[1] for r in paid)
        tokens = int(ks.sql(f"SELECT tokens FROM key_spend WHERE key_id = {key['id']} AND period = 'total'"))
        assert tokens == sum(r[2] for r in paid)
        # every reservation settled (hits included)
        wait_for(lambda: ks.sql(f"SELECT count(*) FROM reservations WHERE key_id = {key['id']}") == "0", 10,
                 "reservations settled")
        # the key's report: hits are requests, not calls, and their tokens bought nothing
        st, _, raw = harness.http("GET", ks.url + "/v1/usage?period=today", None, bearer(key["key"]))
        total = json.loads(raw)["total"]
        assert st == 200 and total["calls"] == 5 and total["requests"] == 8 and total["cached_requests"] == 3, raw
        assert total["prompt_tokens"] + total["completion_tokens"] == sum(r[2] for r in paid), raw
        assert int(total["cost_pico"]) == spend


def test_cache_stream_replays_the_stream():
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("cache-s")
        body = chat("Stream me", stream=True)
        before = mock_requests(ks)
        st, hd, first = post(ks, key["key"], body, CACHE)
        assert st == 200 and hd["x-gateway-cache"] == "miss", hd
        assert hd["content-type"].startswith("text/event-stream")
        st, hd, second = post(ks, key["key"], body, CACHE)
        assert st == 200 and hd["x-gateway-cache"] == "hit", hd
        assert hd["content-type"].startswith("text/event-stream")
        assert mock_requests(ks) == before + 1
        events1 = harness.sse_events(first)
        events2 = harness.sse_events(second)
        assert events1 == events2 and events2[-1] == "[DONE]", (events1, events2)
        # the hit closes with its own cost, zero
        assert cost_comment(second) == 0 and cost_comment(first) > 0, (first, second)
        # the same request not streamed is another entry
        st, hd, _ = post(ks, key["key"], chat("Stream me"), CACHE)
        assert st == 200 and hd["x-gateway-cache"] == "miss"
        got = wait_rows(ks, key["id"], 3)
        assert [(r[0], r[3]) for r in got] == [(False, True), (True, True), (False, False)], got


def test_cache_key_opt_in_covers_deterministic_requests_of_that_key_only():
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("cache-k", cache_ttl_s=60)
        assert key["cache_ttl_s"] == 60
        other = ks.create_key("cache-other")
        st, _, _, obj = ks.admin("GET", f"/admin/keys/{other['id']}")
        assert st == 200 and obj["cache_ttl_s"] == 0
        cold = chat("Deterministic?", temperature=0)
        warm = chat("Deterministic?")
        before = mock_requests(ks)
        hd = [post(ks, key["key"], cold)[1] for _ in range(3)]
        assert [h["x-gateway-cache"] for h in hd] == ["miss", "hit", "hit"], hd
        assert mock_requests(ks) == before + 1
        # DeepSeek's default temperature is 1: not cached unless asked
        hd = [post(ks, key["key"], warm)[1] for _ in range(2)]
        assert all("x-gateway-cache" not in h for h in hd), hd
        assert mock_requests(ks) == before + 3
        # the cache is per key: another key's identical request is its own miss
        st, h, _ = post(ks, other["key"], cold, CACHE)
        assert st == 200 and h["x-gateway-cache"] == "miss"
        # bypass still wins over the key's opt-in
        st, h, _ = post(ks, key["key"], cold, {"X-Gateway-Cache": "bypass"})
        assert st == 200 and h["x-gateway-cache"] == "bypass"
        assert mock_requests(ks) == before + 5
        # the key can be switched off; bad values are refused naming the field
        st, _, raw, obj = ks.admin("PATCH", f"/admin/keys/{key['id']}", {"cache_ttl_s": None})
        assert st == 200 and obj["cache_ttl_s"] == 0, raw
        for bad in (-1, "60", 1.5, 30 * 86400 + 1):
            st, _, raw, obj = ks.admin("PATCH", f"/admin/keys/{key['id']}", {"cache_ttl_s": bad})
            assert st == 400 and obj["error"]["param"] == "cache_ttl_s", (bad, raw)


def test_cache_ttl_errors_and_size_bounds():
    with KeyStack(accountings=1, dispatcher_env={"GW_CACHE_ENTRY_MAX_BYTES": "2048"}) as ks:
        key = ks.create_key("cache-t")
        before = mock_requests(ks)
        # a one-second entry is gone after its second
        body = chat("Short-lived")
        ttl = {"X-Gateway-Cache": "use", "X-Gateway-Cache-TTL": "1"}
        assert post(ks, key["key"], body, ttl)[1]["x-gateway-cache"] == "miss"
        assert post(ks, key["key"], body, ttl)[1]["x-gateway-cache"] == "hit"
        time.sleep(1.3)
        assert post(ks, key["key"], body, ttl)[1]["x-gateway-cache"] == "miss"
        # the TTL header alone opts in
        assert post(ks, key["key"], body, {"X-Gateway-Cache-TTL": "30"})[1]["x-gateway-cache"] == "hit"
        assert mock_requests(ks) == before + 2
        # failed answers are not kept
        failing = chat("[[mock status=500]] fail")
        for _ in range(2):
            st, hd, raw = post(ks, key["key"], failing, CACHE)
            assert st == 500 and hd["x-gateway-cache"] == "miss", (st, raw)
        # an answer larger than GW_CACHE_ENTRY_MAX_BYTES is not kept (streamed or not)
        for stream in (False, True):
            big = chat("[[mock tokens=600]] long", stream=stream)
            hd = [post(ks, key["key"], big, CACHE)[1] for _ in range(2)]
            assert [h["x-gateway-cache"] for h in hd] == ["miss", "miss"], hd
        # bad headers: a clear 400 naming the header, nothing sent upstream
        sent = mock_requests(ks)
        for headers, param in (({"X-Gateway-Cache": "always"}, "x-gateway-cache"),
                               ({"X-Gateway-Cache-TTL": "0"}, "x-gateway-cache-ttl"),
                               ({"X-Gateway-Cache-TTL": "ten"}, "x-gateway-cache-ttl"),
                               ({"X-Gateway-Cache": "use", "X-Gateway-Cache-TTL": "2592001"}, "x-gateway-cache-ttl")):
            st, hd, raw = post(ks, key["key"], body, headers)
            err = error_of(raw)
            assert st == 400 and err["param"] == param and err["type"] == "invalid_request_error", (headers, raw)
        assert mock_requests(ks) == sent


def test_cached_stream_to_a_slow_reader_goes_a_window_at_a_time():
    """A large cached stream replayed to a client that stops reading: the ingress
    holds a window of it, not the answer, and the whole answer still arrives."""
    import test_flow
    tokens = 40000  # about 5.6 MB of SSE
    asan = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
    with KeyStack(accountings=1, dispatcher_env={"GW_CACHE_ENTRY_MAX_BYTES": str(16 << 20)},
                  ingress_env={"GW_MEM_TRIM_MS": "0", "ASAN_OPTIONS": asan}) as ks:
        key = ks.create_key("cache-slow")
        body = json.dumps({"model": "deepseek-chat", "stream": True,
                           "messages": [{"role": "user", "content": f"[[mock tokens={tokens}]] long"}]})
        headers = dict(bearer(key["key"]), **CACHE)
        st, hd, first = harness.http("POST", ks.url + "/v1/chat/completions", json.loads(body), headers, timeout=60)
        assert st == 200 and hd["x-gateway-cache"] == "miss", hd
        before = mock_requests(ks)
        ingress = ks.stack.ingresses[0]
        base = test_flow.rss_kib(ingress)
        stream = test_flow.open_stream(ks.url, None, body=body, headers=headers)
        time.sleep(3)
        grown = test_flow.rss_kib(ingress) - base
        data = test_flow.read_all(stream)
        stream[0].close()
        print(f"  ingress +{grown} KiB while the client did not read a {len(first) >> 10} KiB cached stream")
        assert b"x-gateway-cache: hit" in data.split(b"\r\n\r\n", 1)[0].lower()
        assert harness.sse_events(test_flow.dechunk(data)) == harness.sse_events(first)
        assert mock_requests(ks) == before
        assert grown < 2048, grown
