"""Gateway keys, budgets and rate limits (docs/keys.md) across two ingress instances.

Each test starts its own KeyStack: a private PostgreSQL (tests/pg.py), two
accounting instances (usage + control endpoints on free ports), the mock upstream,
one dispatcher (spooling usage to accounting, pricing with prices/prices.csv) and
two ingresses with GW_AUTH=keys and a random GW_ADMIN_KEY. Clients talk HTTP to
the ingresses; what was stored is read from PostgreSQL with psql.

Prices: V3.2 CNY (prices/prices.csv), 0.2 / 2 / 3 CNY per 1M cache-hit / cache-miss /
output tokens, i.e. 200,000 / 2,000,000 / 3,000,000 pico-CNY per token.
"""

import hashlib
import http.client as httpclient
import json
import math
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import harness
from pg import Postgres
from test_gateway import BIN, Stack, chat, kill9, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRICES = os.path.join(ROOT, "prices", "prices.csv")
PICO = 10 ** 12
HIT_PICO, MISS_PICO, OUT_PICO = 200_000, 2_000_000, 3_000_000  # V3.2 CNY, per token
KEY_RE = re.compile(r"sk-gw-[0-9a-f]{64}")

INVALID_KEY = {"error": {"message": "Invalid API key. Check the key, or ask your gateway operator for a new one.",
                         "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
RESET_RE = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(s|ms)$")  # "1s", "6m0s", "20ms"


def estimate_tokens(*texts):
    """docs/keys.md: 0.3 token per ASCII character, 0.6 per other, plus 4 per message, rounded up."""
    tenths = 0
    for text in texts:
        tenths += sum(3 if ord(c) < 128 else 6 for c in text) + 40
    return -(-tenths // 10)


def mock_prompt_tokens(text):
    """tools/mock-upstream/README.md: 4 + ceil(bytes / 4) per message."""
    return 4 + -(-len(text.encode()) // 4)


def max_cost_pico(text, max_tokens):
    return estimate_tokens(text) * MISS_PICO + max_tokens * OUT_PICO


def decimal_of(pico):
    return Decimal(pico) / PICO


class KeyStack:
    """PostgreSQL + accounting x N + (mock, dispatcher, two ingresses with keys on)."""

    def __init__(self, accountings=2, acc_env=None, ingress_env=None, dispatcher_env=None, upstream_key=None,
                 pg_env=None):
        self.admin_key = "adm-" + secrets.token_hex(16)
        self.upstream_key = upstream_key or "sk-upstream-" + secrets.token_hex(12)
        self.tmp = tempfile.mkdtemp(prefix="gw-keys-")
        self.spool = os.path.join(self.tmp, "spool")
        self.db = None
        self.accountings = []
        self.stack = None
        try:
            self.db = Postgres(env=pg_env).start()
            self.usage_eps = [f"tcp://127.0.0.1:{harness.free_port()}" for _ in range(accountings)]
            self.control_eps = [f"tcp://127.0.0.1:{harness.free_port()}" for _ in range(accountings)]
            for usage_ep, control_ep in zip(self.usage_eps, self.control_eps):
                env = {"DATABASE_URL": self.db.dsn, "GW_ACCOUNTING_BIND": usage_ep, "GW_CONTROL_BIND": control_ep,
                       "GW_LOG_LEVEL": "info", "GW_PRICES": PRICES}
                env.update(acc_env or {})
                self.accountings.append(harness.start("accounting", [os.path.join(BIN, "accounting")], env))
            wait_for(lambda: self.sql("SELECT to_regclass('api_keys') IS NOT NULL") == "t", 20,
                     "accounting's migration (table api_keys)")
            self.ingress_env = {"GW_AUTH": "keys", "GW_CONTROL_ENDPOINTS": ",".join(self.control_eps),
                                "GW_ADMIN_KEY": self.admin_key}
            self.ingress_env.update(ingress_env or {})
            denv = {"GW_ACCOUNTING_ENDPOINTS": ",".join(self.usage_eps), "GW_SPOOL_DIR": self.spool,
                    "GW_PRICES": PRICES, "GW_USAGE_RESEND_MS": "300"}
            denv.update(dispatcher_env or {})
            self.stack = Stack(ingresses=2, ingress_env=self.ingress_env, dispatcher_env=denv,
                               mock_key=self.upstream_key)
        except BaseException:
            self.close(quiet=True)
            raise

    # ------------------------------------------------------------ plumbing

    @property
    def urls(self):
        return self.stack.ingress_urls

    @property
    def url(self):
        return self.stack.ingress_urls[0]

    @property
    def mock_url(self):
        return self.stack.mock_url

    def procs(self):
        return list(self.accountings) + (list(self.stack.procs) if self.stack else [])

    def sql(self, query):
        return self.db.psql(query).strip()

    def admin(self, method, path, body=None, key=None, url=None):
        headers = {"Authorization": f"Bearer {self.admin_key if key is None else key}"}
        st, hd, raw = harness.http(method, (url or self.url) + path, body, headers, timeout=20)
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = None
        return st, hd, raw, obj

    def create_key(self, name, **fields):
        st, _, raw, obj = self.admin("POST", "/admin/keys", dict(name=name, **fields))
        assert st == 201, (st, raw)
        assert KEY_RE.fullmatch(obj.get("key") or ""), obj
        return obj

    def revoke(self, key_id):
        st, _, raw, obj = self.admin("DELETE", f"/admin/keys/{key_id}")
        assert st == 200 and obj["revoked_at"], (st, raw)
        return obj

    def chat(self, key, content="Hello", url=None, **fields):
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return harness.http("POST", (url or self.url) + "/v1/chat/completions",
                            chat(content, **fields), headers, timeout=30)

    def key_usage(self, key_id):
        """(rows, sum cost_pico, sum tokens) of the key's stored usage events."""
        row = self.sql("SELECT count(*), coalesce(sum(cost_pico),0),"
                       " coalesce(sum(cache_hit_tokens + cache_miss_tokens + completion_tokens),0)"
                       f" FROM usage_events WHERE api_key_id = {int(key_id)}")
        return [int(x) for x in row.split("|")]

    def wait_usage(self, key_id, rows, timeout=30):
        wait_for(lambda: self.key_usage(key_id)[0] >= rows, timeout,
                 lambda: f"{rows} usage rows of key {key_id} (have {self.key_usage(key_id)[0]})")
        time.sleep(0.3)  # nothing more must come
        return self.key_usage(key_id)

    def all_table_text(self):
        """Every row of every table in the database, as JSON text, one per line."""
        tables = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
        return "\n".join(self.sql(f"SELECT row_to_json(t)::text FROM {t} t") for t in tables)

    def close(self, quiet=False):
        errors = []
        if self.stack:
            try:
                self.stack.__exit__(None, None, None)
            except AssertionError as e:
                errors.append(str(e))
        for proc in reversed(self.accountings):
            try:
                proc.stop()
            except AssertionError as e:
                errors.append(str(e))
        if self.db:
            self.db.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors and not quiet:
            raise AssertionError("\n".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(quiet=exc_type is not None)


def note(*args):
    """Measurements worth seeing when GW_TEST_VERBOSE is set."""
    if os.environ.get("GW_TEST_VERBOSE"):
        print("   ", *args, flush=True)


def error_of(raw):
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def run_parallel(fn, args, workers):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, args, timeout=120))


def check_429(hd, raw, code, lifetime=False):
    assert error_of(raw)["code"] == code, raw
    assert error_of(raw)["type"] == "rate_limit_error", raw
    if lifetime:
        assert "retry-after" not in hd, hd
        return
    assert re.fullmatch(r"\d+", hd.get("retry-after", "")), hd
    assert re.fullmatch(r"\d+", hd.get("retry-after-ms", "")), hd
    assert int(hd["retry-after"]) == math.ceil(int(hd["retry-after-ms"]) / 1000), hd


# ---------------------------------------------------------------- admin API


def test_admin_api_create_get_patch_revoke():
    with KeyStack(acc_env={"GW_KEY_DEFAULT_TPM": "200000"}) as ks:
        created = ks.create_key("web-team", models=["deepseek-chat"], rpm=100, budget_day="100",
                                concurrency="unlimited")
        key, kid = created["key"], created["id"]
        assert isinstance(kid, int) and created["object"] == "api_key" and created["name"] == "web-team"
        assert created["prefix"] == key[:10] and created["revoked_at"] is None and created["expires_at"] is None
        assert created["models"] == ["deepseek-chat"] and created["rpm"] == 100 and created["tpm"] is None
        assert created["concurrency"] == "unlimited" and Decimal(created["budget_day"]) == 100
        assert created["budget_week"] is None and created["currency"] == "CNY"
        eff = created["effective"]
        assert eff["rpm"] == 100 and eff["tpm"] == 200000 and eff["concurrency"] is None, eff
        assert Decimal(eff["budget_day"]) == 100 and eff["budget_month"] is None, eff
        assert {"day", "week", "month", "total"} <= set(created["spend"]), created
        # the key is shown once: never in a list or a get
        st, _, raw, listing = ks.admin("GET", "/admin/keys")
        assert st == 200 and listing["object"] == "list", raw
        assert key.encode() not in raw and key[6:].encode() not in raw
        assert [k["id"] for k in listing["data"]] == [kid] and "key" not in listing["data"][0]
        st, _, raw, got = ks.admin("GET", f"/admin/keys/{kid}", url=ks.urls[1])
        assert st == 200 and "key" not in got and key[6:].encode() not in raw, raw
        assert got["name"] == "web-team" and got["rpm"] == 100
        # the key works, for its model only
        st, hd, raw = ks.chat(key, url=ks.urls[1])
        assert st == 200, raw
        st, hd, raw = ks.chat(key, model="deepseek-reasoner")
        assert st == 403 and error_of(raw)["code"] == "model_not_allowed", (st, raw)
        # patch: given fields change, the others are kept
        st, _, raw, patched = ks.admin("PATCH", f"/admin/keys/{kid}", {"budget_month": "2000", "tpm": "unlimited"})
        assert st == 200, raw
        assert Decimal(patched["budget_month"]) == 2000 and patched["tpm"] == "unlimited"
        assert patched["rpm"] == 100 and patched["name"] == "web-team" and patched["models"] == ["deepseek-chat"]
        assert patched["effective"]["tpm"] is None and Decimal(patched["effective"]["budget_month"]) == 2000
        assert ks.admin("GET", f"/admin/keys/{kid}")[3]["tpm"] == "unlimited"
        # unknown ids
        for method, body in (("GET", None), ("PATCH", {"rpm": 5}), ("DELETE", None)):
            st, _, raw, obj = ks.admin(method, "/admin/keys/987654", body)
            assert st == 404 and error_of(raw)["code"] == "key_not_found", (method, st, raw)
        # bad fields: 400 naming the field
        for body, param in (({"name": "x", "colour": "red"}, "colour"), ({"name": "x", "rpm": -1}, "rpm"),
                            ({"name": "x", "budget_day": "abc"}, "budget_day"),
                            ({"name": "x", "budget_week": "0.1234567"}, "budget_week"),
                            ({"name": "x", "tpm": "lots"}, "tpm"),
                            ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
                            ({"name": "x", "expires_at": "2001-01-01"}, "expires_at"),
                            ({"rpm": 5}, "name"), ({"name": ""}, "name")):
            st, _, raw, obj = ks.admin("POST", "/admin/keys", body)
            assert st == 400 and error_of(raw)["param"] == param, (body, st, raw)
        st, _, raw, obj = ks.admin("PATCH", f"/admin/keys/{kid}", {"concurrency": -5})
        assert st == 400 and error_of(raw)["param"] == "concurrency", raw
        assert len(ks.admin("GET", "/admin/keys")[3]["data"]) == 1, "a refused create left a key"
        # wrong admin keys: the same 401 as any invalid key, on both ingresses
        for url in ks.urls:
            for wrong in ("adm-wrong", key, ks.admin_key + "x"):
                st, _, raw, obj = ks.admin("GET", "/admin/keys", key=wrong, url=url)
                assert st == 401 and obj == INVALID_KEY, (wrong, st, raw)
        st, _, raw = harness.http("GET", ks.url + "/admin/keys")
        assert st == 401 and error_of(raw)["code"] == "missing_api_key", raw
        # the admin key is not a chat key: chat traffic is always counted on a key
        st, _, raw = ks.chat(ks.admin_key)
        assert st == 403 and error_of(raw)["code"] == "admin_key_not_for_chat", raw
        # expiry as a date
        st, _, raw, dated = ks.admin("POST", "/admin/keys", {"name": "dated", "expires_at": "2099-01-01"})
        assert st == 201 and dated["expires_at"].startswith("2099-01-01"), raw
        # revoke: twice is fine, the key is refused afterwards and cannot come back
        revoked = ks.revoke(kid)
        again = ks.revoke(kid)
        assert again["revoked_at"] == revoked["revoked_at"], (revoked, again)
        st, _, raw = ks.chat(key)
        assert st == 401 and json.loads(raw) == INVALID_KEY, raw
        st, _, raw, obj = ks.admin("PATCH", f"/admin/keys/{kid}", {"revoked_at": None})
        assert st in (200, 400), (st, raw)
        assert ks.admin("GET", f"/admin/keys/{kid}")[3]["revoked_at"] == revoked["revoked_at"]
        st, _, raw = ks.chat(key, url=ks.urls[1])
        assert st == 401 and json.loads(raw) == INVALID_KEY, raw
        # PostgreSQL holds its hash and prefix, never the key
        text = ks.all_table_text()
        assert hashlib.sha256(key.encode()).hexdigest() in text
        assert key not in text and key[6:] not in text and key[10:40] not in text
        # without GW_ADMIN_KEY the admin API is off
        env = {k: v for k, v in ks.ingress_env.items() if k != "GW_ADMIN_KEY"}
        port = harness.free_port()
        ks.stack.add_ingress(env, port=port)
        st, _, raw = harness.http("GET", f"http://127.0.0.1:{port}/admin/keys", headers=bearer(ks.admin_key))
        assert st == 403 and error_of(raw)["code"] == "admin_disabled", (st, raw)


def test_gw_keys_cli():
    with KeyStack(accountings=1) as ks:
        env = dict(os.environ, GW_CONTROL_ENDPOINTS=ks.control_eps[0])
        tool = os.path.join(BIN, "gw-keys")
        assert os.access(tool, os.X_OK), f"{tool} missing"

        def run(*args):
            proc = subprocess.run([tool] + list(args), capture_output=True, text=True, timeout=30, env=env)
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
            return proc.stdout

        out = run("create", "--name", "cli-team", "--models", "deepseek-chat", "--rpm", "100", "--budget-day", "100")
        keys = KEY_RE.findall(out)
        assert len(set(keys)) == 1, out
        key = keys[0]
        assert json.loads(out)["key"] == key, out  # the create answer, as JSON
        listing = ks.admin("GET", "/admin/keys")[3]["data"]
        (obj,) = [k for k in listing if k["name"] == "cli-team"]
        kid = obj["id"]
        assert json.loads(out)["id"] == kid
        assert obj["rpm"] == 100 and Decimal(obj["budget_day"]) == 100 and obj["models"] == ["deepseek-chat"], obj
        assert obj["prefix"] == key[:10]
        assert ks.chat(key)[0] == 200
        out = run("list")
        assert "cli-team" in out and key[6:] not in out, out
        out = run("list", "--json")
        assert [k["name"] for k in json.loads(out)["data"]] == ["cli-team"] and key[6:] not in out, out
        out = run("show", str(kid))
        assert "cli-team" in out and key[6:] not in out, out
        run("update", str(kid), "--budget-month", "2000", "--tpm", "unlimited")
        obj = ks.admin("GET", f"/admin/keys/{kid}")[3]
        assert Decimal(obj["budget_month"]) == 2000 and obj["tpm"] == "unlimited" and obj["rpm"] == 100, obj
        run("revoke", str(kid))
        assert ks.admin("GET", f"/admin/keys/{kid}")[3]["revoked_at"]
        st, _, raw = ks.chat(key)  # a limited key: refused at once
        assert st == 401 and json.loads(raw) == INVALID_KEY, raw
        # an unknown id and an unreachable accounting fail with a non-zero exit
        proc = subprocess.run([tool, "show", "987654"], capture_output=True, text=True, timeout=30, env=env)
        assert proc.returncode == 1 and "key_not_found" in proc.stderr, (proc.returncode, proc.stdout, proc.stderr)
        dead = dict(env, GW_CONTROL_ENDPOINTS=f"tcp://127.0.0.1:{harness.free_port()}", GW_CONTROL_TIMEOUT_MS="500")
        started = time.monotonic()
        proc = subprocess.run([tool, "list"], capture_output=True, text=True, timeout=30, env=dead)
        assert proc.returncode == 2 and time.monotonic() - started < 5, (proc.returncode, proc.stderr)


# ---------------------------------------------------------------- authentication


def test_invalid_keys_identical_401_and_timing():
    with KeyStack() as ks:
        revoked = ks.create_key("to-revoke")
        expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
        expiring = ks.create_key("expiring", expires_at=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for url in ks.urls:
            assert ks.chat(revoked["key"], url=url)[0] == 200
            assert ks.chat(expiring["key"], url=url)[0] == 200
        ks.revoke(revoked["id"])
        unknown = "sk-gw-" + secrets.token_hex(32)
        # the revoked key leaves the caches within GW_KEY_CACHE_MS (5 s)
        deadline = time.monotonic() + 8
        for url in ks.urls:
            while ks.chat(revoked["key"], url=url)[0] != 401:
                assert time.monotonic() < deadline, "revoked key still accepted"
                time.sleep(0.1)
        while datetime.now(timezone.utc) < expiry + timedelta(milliseconds=300):
            time.sleep(0.1)
        answers = {}
        # twice: the first pass may meet keys the ingress has not cached yet; the answer
        # must not depend on the key's state, compared in the same cache state
        for rnd in (1, 2):
            for url in ks.urls:
                for name, key in (("unknown", unknown), ("revoked", revoked["key"]), ("expired", expiring["key"]),
                                  ("garbage", "hello"), ("sk-gw-short", "sk-gw-1234")):
                    st, hd, raw = ks.chat(key, url=url)
                    # (Connection: close may come with any early answer whose body was not read yet)
                    answers[(url, name)] = (st, {k: v for k, v in hd.items()
                                                 if k not in ("date", "x-request-id", "connection")}, raw)
        first = answers[(ks.url, "unknown")]
        assert first[0] == 401 and json.loads(first[2]) == INVALID_KEY, first
        for which, answer in answers.items():
            assert answer == first, (which, answer, first)
        # no key at all says so
        st, _, raw = ks.chat(None)
        assert st == 401 and error_of(raw)["code"] == "missing_api_key" and \
            error_of(raw)["type"] == "authentication_error", raw
        # timing: unknown vs revoked (both cached as invalid), interleaved, medians
        conns = {name: httpclient.HTTPConnection("127.0.0.1", int(ks.url.rsplit(":", 1)[1]), timeout=10)
                 for name in ("unknown", "revoked")}
        keys = {"unknown": unknown, "revoked": revoked["key"]}
        body = json.dumps(chat("timing")).encode()
        times = {"unknown": [], "revoked": []}
        try:
            for i in range(400):
                name = ("unknown", "revoked")[(i + i // 2) % 2]  # u r r u u r r ...
                conn = conns[name]
                for attempt in (1, 2):  # a connection the server closed meanwhile: once more on a new one
                    started = time.perf_counter()
                    try:
                        conn.request("POST", "/v1/chat/completions", body,
                                     {"Authorization": f"Bearer {keys[name]}", "Content-Type": "application/json"})
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (httpclient.HTTPException, ConnectionError):
                        conn.close()
                        if attempt == 2:
                            raise
                elapsed = time.perf_counter() - started
                assert resp.status == 401 and data == first[2], (name, resp.status, data)
                if i >= 20:  # warm-up
                    times[name].append(elapsed)
        finally:
            for conn in conns.values():
                conn.close()
        med_u, med_r = statistics.median(times["unknown"]), statistics.median(times["revoked"])
        note(f"401 medians: unknown {med_u * 1e6:.0f} us, revoked {med_r * 1e6:.0f} us")
        assert abs(med_u - med_r) < max(300e-6, 0.3 * min(med_u, med_r)), \
            f"median unknown {med_u * 1e6:.0f} us, revoked {med_r * 1e6:.0f} us"


def test_revocation_reaches_both_ingresses():
    with KeyStack() as ks:
        free = ks.create_key("no-limits")
        limited = ks.create_key("limited", rpm=1000)
        assert free["effective"]["rpm"] is None and free["effective"]["budget_day"] is None, free
        for url in ks.urls:
            for k in (free, limited):
                st, _, raw = ks.chat(k["key"], url=url)
                assert st == 200, raw
        # a key with a limit is admitted by accounting: refused at the first request after revoke
        ks.revoke(limited["id"])
        for url in ks.urls:
            st, _, raw = ks.chat(limited["key"], url=url)
            assert st == 401 and json.loads(raw) == INVALID_KEY, (url, st, raw)
        # a key without limits: at most GW_KEY_CACHE_MS (5 s) + 1 s on both
        ks.revoke(free["id"])
        revoked_at = time.monotonic()
        refused_after = {}
        for _ in range(80):
            for url in ks.urls:
                if url not in refused_after:
                    st, _, raw = ks.chat(free["key"], url=url)
                    if st == 401:
                        assert json.loads(raw) == INVALID_KEY, raw
                        refused_after[url] = time.monotonic() - revoked_at
                    else:
                        assert st == 200, (st, raw)
            if len(refused_after) == 2 or time.monotonic() - revoked_at > 6.0:
                break
            time.sleep(0.1)
        note(f"revoked key refused after {refused_after}")
        assert len(refused_after) == 2 and max(refused_after.values()) <= 6.0, refused_after


def test_accounting_down_fails_closed_for_limited_keys():
    # the cache outlasts the accountings' stop (several seconds under ASan)
    with KeyStack(ingress_env={"GW_CONTROL_TIMEOUT_MS": "1000", "GW_KEY_CACHE_MS": "60000"}) as ks:
        free = ks.create_key("free")
        limited = ks.create_key("limited", budget_day="10")
        assert ks.chat(free["key"])[0] == 200 and ks.chat(limited["key"])[0] == 200
        for proc in ks.accountings:
            proc.stop()
        st, _, raw = ks.chat(limited["key"])
        assert st == 503 and error_of(raw)["code"] == "accounting_unavailable", (st, raw)
        # an unlimited key known to the cache goes on (it needs no admission)
        st, _, raw = ks.chat(free["key"])
        assert st == 200, (st, raw)


# ---------------------------------------------------------------- limits


def test_budget_day_under_concurrency():
    content = "budget 00 00 [[mock tokens=16]]"
    max_tokens = 16
    one = max_cost_pico(content, max_tokens)
    budget_pico = 20 * one
    assert budget_pico % 10 ** 6 == 0
    with KeyStack() as ks:
        k = ks.create_key("budget", budget_day=f"{decimal_of(budget_pico):.6f}")
        results = []
        lock = threading.Lock()
        deadline = time.monotonic() + 60

        def client(i):
            url = ks.urls[i % 2]
            for n in range(12):
                if time.monotonic() > deadline:
                    return
                st, hd, raw = ks.chat(k["key"], f"budget {i:02d} {n:02d} [[mock tokens=16]]", url=url,
                                      max_tokens=max_tokens)
                with lock:
                    results.append((st, hd, raw))
                if st != 200:
                    return

        run_parallel(client, range(64), 64)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert ok, "nothing admitted"
        tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        for st, hd, raw in refused:
            assert st == 429, (st, raw)
            check_429(hd, raw, "budget_day")
            assert 0 < int(hd["retry-after"]) <= 86400
            message = error_of(raw)["message"]
            assert "CNY" in message and tomorrow in message, message
        rows, cost, _ = ks.wait_usage(k["id"], len(ok))
        note(f"budget: {len(ok)} admitted, {len(refused)} refused, spent {cost} of {budget_pico} pico (max {one} each)")
        assert rows == len(ok), (rows, len(ok))
        assert cost <= budget_pico + one, f"spent {cost} pico, budget {budget_pico}, one request {one}"
        # docs/keys.md: with max_tokens the maximum cost bounds every request: no overshoot at all
        assert cost <= budget_pico, f"spent {cost} > budget {budget_pico} although max_tokens applied"
        assert len(ok) >= 10, f"only {len(ok)} admitted for a budget of about 20 requests"
        # nothing left reserved, and the key's spend says the same
        wait_for(lambda: ks.sql(f"SELECT count(*) FROM reservations WHERE key_id = {k['id']}") == "0", 10,
                 "reservations to settle")
        spend = ks.admin("GET", f"/admin/keys/{k['id']}")[3]["spend"]
        assert Decimal(spend["day"]) == decimal_of(cost), (spend, cost)


def test_rpm_across_two_ingresses():
    with KeyStack() as ks:
        k = ks.create_key("rpm", rpm=60)

        def one(i):
            return ks.chat(k["key"], f"rpm {i}", url=ks.urls[i % 2])

        # the burst within one minute: the sliding window frees part of the
        # previous minute's count as the next one goes on, which a slow burst
        # across the boundary would see as room for more than 66
        into = time.time() % 60
        if into > 40:
            time.sleep(61 - into)
        results = run_parallel(one, range(150), 12)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        note(f"rpm: {len(ok)} admitted of 150")
        assert 60 <= len(ok) <= 66, f"{len(ok)} admitted of 150 at rpm=60"
        for st, hd, raw in ok:
            assert hd.get("x-ratelimit-limit-requests") == "60", hd
            assert 0 <= int(hd["x-ratelimit-remaining-requests"]) < 60, hd
            assert RESET_RE.match(hd["x-ratelimit-reset-requests"]), hd
            assert "x-ratelimit-limit-tokens" not in hd, hd  # the key has no tpm
        for st, hd, raw in refused:
            assert st == 429, (st, raw)
            check_429(hd, raw, "rate_limit_requests")
            assert 1 <= int(hd["retry-after"]) <= 60, hd
            # refused before any upstream call: it cost nothing, and says so
            assert hd.get("x-gateway-cost") == "0.00" and hd.get("x-gateway-currency") == "CNY", hd
            assert hd.get("x-ratelimit-limit-requests") == "60", hd
            assert hd.get("x-ratelimit-remaining-requests") == "0", hd
            assert RESET_RE.match(hd.get("x-ratelimit-reset-requests", "")), hd


def test_tpm_across_two_ingresses():
    tpm = 3000
    filler = "x" * 1000
    content = f"{filler} 00 [[mock tokens=20]]"
    real_tokens = mock_prompt_tokens(content) + 20
    assert estimate_tokens(content) >= real_tokens - 20  # our requests never beat the estimate
    with KeyStack() as ks:
        k = ks.create_key("tpm", tpm=tpm)

        def one(i):
            return ks.chat(k["key"], f"{filler} {i % 100:02d} [[mock tokens=20]]", url=ks.urls[i % 2], max_tokens=20)

        results = run_parallel(one, range(40), 8)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        for st, hd, raw in ok:
            assert hd.get("x-ratelimit-limit-tokens") == str(tpm), hd
            assert RESET_RE.match(hd.get("x-ratelimit-reset-tokens", "")), hd
        for st, hd, raw in refused:
            assert st == 429, (st, raw)
            check_429(hd, raw, "rate_limit_tokens")
        rows, _, tokens = ks.wait_usage(k["id"], len(ok))
        note(f"tpm: {len(ok)} admitted, {tokens} tokens (tpm {tpm}, {real_tokens} each)")
        assert rows == len(ok)
        assert tokens <= tpm * 1.05, f"{tokens} tokens admitted in a burst at tpm={tpm} ({len(ok)} requests)"
        assert len(ok) >= 5, f"only {len(ok)} admitted ({real_tokens} tokens each, tpm {tpm})"
        assert refused, "nothing refused"


def test_concurrency_limit():
    with KeyStack() as ks:
        k = ks.create_key("conc", concurrency=4)
        stop = threading.Event()
        peak = [0]

        def watch():
            for _ in range(3000):  # bounded: ~30 s at most
                if stop.is_set():
                    return
                try:
                    stats = json.loads(harness.http("GET", ks.mock_url + "/mock/stats", timeout=2)[2])
                    peak[0] = max(peak[0], stats["active"])
                except (OSError, httpclient.HTTPException):
                    pass
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        barrier = threading.Barrier(20, timeout=30)

        def one(i):
            barrier.wait()
            return ks.chat(k["key"], f"conc {i} [[mock hold_ms=800]]", url=ks.urls[i % 2])

        try:
            results = run_parallel(one, range(20), 20)
        finally:
            stop.set()
            watcher.join(40)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        note(f"concurrency: peak {peak[0]} at the mock, {len(ok)} admitted of 20")
        assert peak[0] <= 4, f"the mock saw {peak[0]} requests at once (concurrency 4)"
        assert 4 <= len(ok) < 20, f"{len(ok)} admitted"
        for st, hd, raw in refused:
            assert st == 429, (st, raw)
            check_429(hd, raw, "concurrency")
        # every slot is free again once the requests ended (RELEASE)
        for url in ks.urls:
            # the client has its answer a moment before the ingress's RELEASE is stored
            wait_for(lambda: ks.sql(f"SELECT count(*) FROM reservations WHERE key_id = {k['id']}"
                                    " AND released_at IS NULL") == "0", 10, "the slots released")
            results = run_parallel(lambda i: ks.chat(k["key"], f"after {i} [[mock hold_ms=200]]", url=url),
                                   range(4), 4)
            assert [r[0] for r in results] == [200] * 4, [(r[0], r[2]) for r in results]


def test_defaults_zero_lifetime_budget_and_output_cap():
    one_text = "cap 0 [[mock tokens=16]]"
    one = max_cost_pico(one_text, 16)
    with KeyStack(accountings=1, acc_env={"GW_KEY_DEFAULT_RPM": "5"}) as ks:
        # a null rpm takes the accounting default, "unlimited" does not
        dflt = ks.create_key("default-rpm")
        assert dflt["rpm"] is None and dflt["effective"]["rpm"] == 5, dflt
        got = [ks.chat(dflt["key"], f"d {i}", url=ks.urls[i % 2]) for i in range(7)]
        assert [r[0] for r in got] == [200] * 5 + [429] * 2, [(r[0], r[2]) for r in got]
        check_429(got[5][1], got[5][2], "rate_limit_requests")
        unl = ks.create_key("unlimited-rpm", rpm="unlimited")
        assert unl["rpm"] == "unlimited" and unl["effective"]["rpm"] is None, unl
        assert [ks.chat(unl["key"], f"u {i}")[0] for i in range(7)] == [200] * 7
        # 0 allows nothing
        zero = ks.create_key("zero", rpm=0)
        st, _, raw = ks.chat(zero["key"])
        assert st == 429 and error_of(raw)["code"] == "rate_limit_requests", (st, raw)
        zero_budget = ks.create_key("zero-budget", rpm="unlimited", budget_day="0")
        st, hd, raw = ks.chat(zero_budget["key"], max_tokens=1)
        assert st == 429 and error_of(raw)["code"] == "budget_day", (st, raw)
        # lifetime budget: two requests' maximum cost; the third is refused with no Retry-After
        total = ks.create_key("total", rpm="unlimited", budget_total=f"{decimal_of(2 * one):.6f}")
        got = [ks.chat(total["key"], f"cap {i} [[mock tokens=16]]", max_tokens=16) for i in range(3)]
        assert [r[0] for r in got] == [200, 200, 429], [(r[0], r[2]) for r in got]
        check_429(got[2][1], got[2][2], "budget_total", lifetime=True)
        # without max_tokens the output cap is the model's maximum output (8192 for
        # deepseek-chat): 8192 x 3 CNY/M = 0.024576 CNY alone exceeds a 0.02 budget
        cap = ks.create_key("cap", rpm="unlimited", budget_day="0.02")
        st, hd, raw = ks.chat(cap["key"], one_text)
        assert st == 429 and error_of(raw)["code"] == "budget_day", (st, raw)
        st, hd, raw = ks.chat(cap["key"], one_text, max_tokens=16)
        assert st == 200, (st, raw)
        # max_completion_tokens does not bound a DeepSeek answer, so it cannot lower the reservation
        st, hd, raw = ks.chat(cap["key"], one_text, max_completion_tokens=16)
        assert st == 429 and error_of(raw)["code"] == "budget_day", (st, raw)


def test_release_before_admission_reserves_nothing():
    """An ADMIT the ingress stopped waiting for is released at once; that RELEASE can
    reach PostgreSQL before the ADMIT (another thread or instance). The late ADMIT must
    then reserve nothing, or a concurrency slot and budget would be held for 15 min."""
    with KeyStack(accountings=1) as ks:
        k = ks.create_key("late", concurrency=1, budget_day="1")
        kid = k["id"]
        ks.sql("SELECT gw_release('late-req', false, 0, 0)")
        row = ks.sql(f"SELECT status, code FROM gw_admit('late-req', {kid}, 'ing-x', 1000, 10,"
                     " NULL, NULL, NULL, NULL, NULL, NULL, NULL, 900, 15, '{}')")
        assert row.split("|")[0] == "409" and row.split("|")[1] == "released", row
        assert ks.sql(f"SELECT count(*) FROM reservations WHERE key_id = {kid}") == "0"
        assert ks.sql("SELECT count(*) FROM key_requests") == "0", "a refused admission was counted"
        # the key's one slot is free, and a client that sends one request after the
        # other on one ingress is never refused for concurrency: the ingress tells
        # accounting which of the key's requests it ended, even before accounting
        # has stored their releases
        for i in range(12):
            st, _, raw = ks.chat(k["key"], f"one after another {i}", max_tokens=8)
            assert st == 200, (i, st, raw)


def test_dead_ingress_frees_its_concurrency_slots():
    with KeyStack(accountings=1, acc_env={"GW_INGRESS_ALIVE_TTL_S": "2"}) as ks:
        k = ks.create_key("conc-1", concurrency=1)
        outcome = {}

        def held():
            try:
                outcome["r"] = ks.chat(k["key"], "[[mock hold_ms=5000]]", url=ks.urls[1])
            except (OSError, httpclient.HTTPException) as e:
                outcome["r"] = e

        t = threading.Thread(target=held)
        t.start()
        wait_for(lambda: json.loads(harness.http("GET", ks.mock_url + "/mock/stats")[2])["active"] == 1, 10,
                 "the held request at the mock")
        st, _, raw = ks.chat(k["key"])
        assert st == 429 and error_of(raw)["code"] == "concurrency", (st, raw)
        kill9(ks.stack.ingresses[1])  # its RELEASE will never come
        killed = time.monotonic()
        for _ in range(100):
            st, _, raw = ks.chat(k["key"])
            if st == 200 or time.monotonic() - killed > 8:
                break
            assert st == 429 and error_of(raw)["code"] == "concurrency", (st, raw)
            time.sleep(0.2)
        freed = time.monotonic() - killed
        note(f"slot of the dead ingress freed after {freed:.1f} s (GW_INGRESS_ALIVE_TTL_S=2)")
        assert st == 200, f"slot still taken {freed:.1f} s after its ingress died"
        t.join(15)
        assert isinstance(outcome.get("r"), Exception), outcome  # its client lost the connection
        wait_for(lambda: json.loads(harness.http("GET", ks.mock_url + "/mock/stats")[2])["active"] == 0, 15,
                 "the held call to end")


# ---------------------------------------------------------------- usage, headers, secrets


def test_usage_isolation_between_keys():
    with KeyStack() as ks:
        a, b = ks.create_key("team-a"), ks.create_key("team-b")
        for i in range(2):
            assert ks.chat(a["key"], f"a {i}", url=ks.urls[i % 2])[0] == 200
        for i in range(3):
            assert ks.chat(b["key"], f"b {i}", url=ks.urls[i % 2])[0] == 200
        ks.wait_usage(a["id"], 2)
        ks.wait_usage(b["id"], 3)

        def usage(key, query=""):
            st, _, raw = harness.http("GET", ks.url + "/v1/usage?period=today" + query, headers=bearer(key))
            return st, raw

        for key, calls in ((a["key"], 2), (b["key"], 3)):
            st, raw = usage(key)
            assert st == 200 and json.loads(raw)["total"]["calls"] == calls, raw
        st, raw = usage(a["key"], f"&api_key_id={a['id']}")
        assert st == 200 and json.loads(raw)["total"]["calls"] == 2, raw
        st, raw = usage(a["key"], f"&api_key_id={b['id']}")
        assert st == 403 and error_of(raw)["code"] == "permission_denied", raw
        st, raw = usage(b["key"], f"&api_key_id={a['id']}&group_by=model")
        assert st == 403 and error_of(raw)["code"] == "permission_denied", raw
        st, raw = usage(ks.admin_key)
        assert st == 200 and json.loads(raw)["total"]["calls"] == 5, raw
        st, raw = usage(ks.admin_key, f"&api_key_id={b['id']}")
        assert st == 200 and json.loads(raw)["total"]["calls"] == 3, raw
        st, _, raw = harness.http("GET", ks.url + "/v1/usage")
        assert st == 401, raw
        st, _, raw = harness.http("GET", ks.url + "/v1/usage", headers=bearer("sk-gw-" + "0" * 64))
        assert st == 401 and json.loads(raw) == INVALID_KEY, raw


def raw_post(url, path, body, headers):
    """A raw HTTP/1.1 POST (Connection: close): (status, headers, body, trailers), chunked decoded by hand."""
    host, port = url.rsplit("/", 1)[1].split(":")
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "TE: trailers",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    reply = b""
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        for _ in range(100000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head_raw, _, rest = reply.partition(b"\r\n\r\n")
    lines = head_raw.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hd = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hd[k.strip().lower()] = v.strip()
    trailers = {}
    if hd.get("transfer-encoding", "").lower() != "chunked":
        return status, hd, rest, trailers
    out = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    for line in rest.decode().split("\r\n"):
        if not line:
            break
        k, _, v = line.partition(":")
        trailers[k.strip().lower()] = v.strip()
    return status, hd, out, trailers


def check_cost(header_value, pico):
    """The x-gateway-cost decimal equals pico / 10^12, up to the rounding of its last digit."""
    assert re.fullmatch(r"\d+\.\d+", header_value), header_value
    shown = Decimal(header_value)
    digits = len(header_value.split(".")[1])
    assert abs(shown - decimal_of(pico)) <= Decimal(5) / (10 ** (digits + 1)), (header_value, pico)


def test_cost_and_request_id_headers():
    with KeyStack() as ks:
        k = ks.create_key("headers", rpm=1000)
        checks = []
        for i, (model, directive) in enumerate((("deepseek-chat", "tokens=7"), ("deepseek-reasoner", "tokens=5 reasoning=3"),
                                                ("deepseek-chat", "tokens=9 cache=4"))):
            st, hd, raw = ks.chat(k["key"], f"cost {i} [[mock {directive}]]", url=ks.urls[i % 2], model=model)
            assert st == 200, raw
            assert re.fullmatch(r"[0-9a-f-]{36}", hd.get("x-request-id", "")), hd
            assert hd.get("x-gateway-currency") == "CNY", hd
            assert hd.get("x-ratelimit-limit-requests") == "1000", hd  # the key's rpm
            assert "x-ratelimit-limit-tokens" not in hd, hd
            u = json.loads(raw)["usage"]
            expected = (u["prompt_cache_hit_tokens"] * HIT_PICO + u["prompt_cache_miss_tokens"] * MISS_PICO
                        + u["completion_tokens"] * OUT_PICO)
            checks.append((hd["x-request-id"], hd.get("x-gateway-cost", ""), expected))
        # a stream: the cost as a last SSE comment and as HTTP trailers
        st, hd, body, trailers = raw_post(ks.urls[1], "/v1/chat/completions",
                                          chat("stream cost [[mock tokens=6]]", stream=True), bearer(k["key"]))
        assert st == 200 and re.fullmatch(r"[0-9a-f-]{36}", hd.get("x-request-id", "")), (st, hd)
        assert hd.get("x-ratelimit-limit-requests") == "1000", hd
        text = body.decode()
        events = harness.sse_events(body)
        assert events[-1] == "[DONE]", text[-300:]
        usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
        assert usage, text[-300:]
        u = usage[-1]
        expected = u["prompt_tokens"] * MISS_PICO + u["completion_tokens"] * OUT_PICO
        lines = [line for line in text.split("\n") if line.strip()]
        comments = [line for line in lines if line.startswith(": x-gateway-cost=")]
        assert len(comments) == 1, lines[-5:]
        after = lines[lines.index(comments[0]) + 1:]
        assert all(line == "data: [DONE]" for line in after), after  # nothing but [DONE] after it
        m = re.fullmatch(r": x-gateway-cost=(\d+\.\d+) CNY", comments[0])
        assert m, comments[0]
        checks.append((hd["x-request-id"], m.group(1), expected))
        assert trailers.get("x-gateway-currency") == "CNY" and trailers.get("x-gateway-cost") == m.group(1), trailers
        # each shown cost is what the mock's usage costs, and what PostgreSQL stored for that request
        for request_id, shown, expected in checks:
            wait_for(lambda: ks.sql(f"SELECT count(*) FROM usage_events WHERE request_id = '{request_id}'") != "0",
                     30, f"usage of {request_id}")
            stored = int(ks.sql(f"SELECT sum(cost_pico) FROM usage_events WHERE request_id = '{request_id}'"))
            assert stored == expected, (request_id, stored, expected)
            check_cost(shown, stored)


def test_upstream_key_never_leaks():
    tmp_logs = []
    with KeyStack(acc_env={"GW_LOG_LEVEL": "debug"}, ingress_env={"GW_LOG_LEVEL": "debug"},
                  dispatcher_env={"GW_LOG_LEVEL": "debug", "GW_RETRY_BASE_MS": "10"}) as ks:
        upstream = ks.upstream_key
        secret_tail = upstream[-16:]
        k = ks.create_key("leak", rpm=1000)
        seen = []
        for content, stream in (("hi", False), ("hi", True), ("[[mock status=401]]", False),
                                ("[[mock status=500]]", False), ("[[mock status=429]]", True),
                                ("[[mock malformed=1]]", False), ("[[mock drop_after=2]]", True),
                                ("[[mock status=400]]", True)):
            st, hd, raw = ks.chat(k["key"], content, stream=stream)
            seen.append(json.dumps(hd) + raw.decode("utf-8", "replace"))
        seen.append(json.dumps(ks.admin("GET", "/admin/keys")[:3], default=str))
        st, hd, raw = harness.http("GET", ks.url + "/v1/models", headers=bearer(k["key"]))
        seen.append(json.dumps(hd) + raw.decode("utf-8", "replace"))
        for text in seen:
            assert upstream not in text and secret_tail not in text, text[:500]
        ks.wait_usage(k["id"], 1)
        files = []
        for root, _, names in os.walk(ks.tmp):
            files += [os.path.join(root, n) for n in names]
        files.append(ks.stack.usage_path)
        for path in files:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    data = f.read()
                assert upstream.encode() not in data and secret_tail.encode() not in data, path
        db_text = ks.all_table_text()
        assert upstream not in db_text and secret_tail not in db_text
        procs = ks.procs()
    for proc in procs:  # every gateway service's whole log, after its clean stop
        if proc.name == "mock":
            continue
        log = proc.log()
        tmp_logs.append(proc.name)
        assert upstream not in log and secret_tail not in log, f"upstream key in the log of {proc.name}"
    assert {"ingress", "dispatcher", "accounting"} <= set(tmp_logs), tmp_logs
