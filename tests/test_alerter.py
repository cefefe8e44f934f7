"""The alerter (docs/alerter.md) against a real SMTP server on loopback.

Each test starts a KeyStack (tests/test_keys.py: private PostgreSQL, accounting,
mock upstream, dispatcher, two ingresses with keys) and one or two bin/alerter
processes evaluating every 200 ms, and an aiosmtpd server in this process that
keeps every message it receives. Traffic is real chat requests through the
gateway, so the spend the rules read is the stored usage.

Cost of one request used here (V3.2 CNY, prices/prices.csv): the mock counts the
prompt "spend" as 4 + ceil(5 / 4) = 6 cache-miss tokens and answers max_tokens = 16
output tokens: ONE below, 0.00006 CNY.
"""

import datetime
import email
import email.policy
import glob
import os
import sys
import tempfile
import threading
import time
import warnings

import harness
from test_gateway import BIN, kill9, wait_for
from test_keys import PRICES, KeyStack, decimal_of

warnings.filterwarnings("ignore", module="aiosmtpd")
try:
    from aiosmtpd.controller import Controller
except ImportError:
    # Debian's python3-aiosmtpd, when python3 is another interpreter (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    from aiosmtpd.controller import Controller

# One request "spend" with max_tokens 16: 6 cache-miss tokens x 2 CNY/M + 16 x 3 CNY/M.
ONE = 6 * 2_000_000 + 16 * 3_000_000  # pico-CNY


class Inbox:
    """An aiosmtpd handler that keeps every message."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def subjects(self):
        with self.lock:
            return [str(m["Subject"]) for m in self.messages]


def start_smtp(port=None):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port or harness.free_port())
    controller.start()
    return controller, inbox


def start_alerter(ks, smtp_port, extra=None):
    env = {"GW_CONTROL_ENDPOINTS": ",".join(ks.control_eps), "GW_ALERT_INTERVAL_MS": "200",
           "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "GW_ALERT_SMTP_TLS": "none",
           "GW_ALERT_EMAIL_TO": "ops@example.com,cfo@example.com", "GW_ALERT_EMAIL_FROM": "gateway@example.com",
           "GW_ALERT_RETRY_BASE_MS": "200", "GW_ALERT_RETRY_MAX_MS": "1000", "GW_LOG_LEVEL": "info",
           # the host rules only where a test asks for them: a busy test machine
           # would otherwise add CPU alerts to the emails the tests count
           "GW_ALERT_HOST_CPU": "100", "GW_ALERT_HOST_MEMORY": "100", "GW_ALERT_HOST_DISK": "100"}
    env.update(extra or {})
    return harness.start("alerter", [os.path.join(BIN, "alerter")], env)


def spend(ks, key, n):
    for i in range(n):
        st, _, raw = ks.chat(key, "spend", max_tokens=16)
        assert st == 200, (st, raw)


def wait_spent(ks, pico):
    wait_for(lambda: int(ks.sql("SELECT coalesce(sum(cost_pico), 0) FROM usage_events") or 0) >= pico, 15,
             f"{pico} pico-CNY of usage stored")


def settle(seconds=1.5):
    """Several evaluation cycles (200 ms each), for what must NOT happen."""
    time.sleep(seconds)


def test_daily_spend_80_then_100_percent_exactly_two_emails():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("spender")["key"]
        # the overall daily limit is 10 requests' cost: 8 requests cross 80%, 10 cross 100%
        limit = decimal_of(10 * ONE)
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_SPEND_LIMIT_DAY": f"{limit:.6f}"})
        try:
            spend(ks, key, 7)
            wait_spent(ks, 7 * ONE)
            settle()
            assert inbox.subjects() == [], inbox.subjects()
            spend(ks, key, 1)
            wait_spent(ks, 8 * ONE)
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the 80% email")
            settle()
            assert len(inbox.messages) == 1, inbox.subjects()
            first = inbox.messages[0]
            assert "80%" in str(first["Subject"]) and "[warning]" in str(first["Subject"]), first["Subject"]
            # the figures: 8 requests' cost of the 10 the limit allows, in CNY
            assert f"(CNY {decimal_of(8 * ONE).normalize()} of {limit.normalize()})" in str(first["Subject"]), \
                first["Subject"]
            assert sorted(a.strip() for a in str(first["To"]).split(",")) == ["cfo@example.com", "ops@example.com"]
            text = first.get_body(("plain",)).get_content()
            assert "all keys" in text and "CNY" in text, text
            assert first.get_body(("html",)) is not None
            spend(ks, key, 2)
            wait_spent(ks, 10 * ONE)
            wait_for(lambda: len(inbox.messages) >= 2, 10, "the 100% email")
            second = inbox.messages[1]
            assert "100%" in str(second["Subject"]) and "[critical]" in str(second["Subject"]), second["Subject"]
            # continued traffic: no more emails
            spend(ks, key, 5)
            wait_spent(ks, 15 * ONE)
            settle()
            assert len(inbox.messages) == 2, inbox.subjects()
            assert ks.sql("SELECT count(*) FROM alerts") == "2"
            # one channel (email): one delivery per alert, each sent
            assert ks.sql("SELECT count(*) FROM alert_deliveries WHERE status = 'sent'") == "2"
        finally:
            alerter.stop()
            controller.stop()


def test_alerter_killed_between_crossings_no_duplicate_no_miss():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("spender")["key"]
        env = {"GW_ALERT_SPEND_LIMIT_DAY": f"{decimal_of(10 * ONE):.6f}", "GW_ALERT_LEASE_MS": "600"}
        alerter = start_alerter(ks, controller.port, env)
        try:
            spend(ks, key, 8)
            wait_spent(ks, 8 * ONE)
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the 80% email")
            # killed between the crossings: once the first alert is delivered and
            # recorded as sent (a kill while the SMTP server is still answering is
            # the one window docs/alerter.md says may repeat a message)
            wait_for(lambda: ks.sql("SELECT count(*) FROM alert_deliveries WHERE status = 'sent'") == "1", 10,
                     "the 80% delivery recorded")
            kill9(alerter)
            # the 100% crossing happens while no alerter runs
            spend(ks, key, 3)
            wait_spent(ks, 11 * ONE)
            settle(0.5)
            assert len(inbox.messages) == 1
            alerter = start_alerter(ks, controller.port, env)
            wait_for(lambda: len(inbox.messages) >= 2, 10, "the 100% email after the restart")
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 2 and "80%" in subjects[0] and "100%" in subjects[1], subjects
        finally:
            alerter.stop()
            controller.stop()


def test_smtp_down_then_back_delivers_once():
    port = harness.free_port()
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("spender")["key"]
        alerter = start_alerter(ks, port, {"GW_ALERT_SPEND_LIMIT_DAY": f"{decimal_of(10 * ONE):.6f}"})
        controller = None
        try:
            spend(ks, key, 8)
            wait_spent(ks, 8 * ONE)
            # the alert fires while nothing listens: attempts fail and are retried
            wait_for(lambda: int(ks.sql("SELECT coalesce(max(attempts), 0) FROM alert_deliveries")) >= 2, 15,
                     "failed delivery attempts")
            assert ks.sql("SELECT status FROM alert_deliveries") == "pending"
            controller, inbox = start_smtp(port)
            wait_for(lambda: len(inbox.messages) >= 1, 15, "the email once SMTP is back")
            settle()
            assert len(inbox.messages) == 1, inbox.subjects()
            assert ks.sql("SELECT status FROM alert_deliveries") == "sent"
        finally:
            alerter.stop()
            if controller:
                controller.stop()


def test_error_rate_trips_once_and_needs_enough_calls():
    controller, inbox = start_smtp()
    # no retries: each failing request is one failed upstream call
    with KeyStack(accountings=1, dispatcher_env={"GW_RETRY_MAX": "0"}) as ks:
        key = ks.create_key("caller")["key"]
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_RESOLVED_NOTICE": "0"})
        try:
            # 1 failure in 3 requests: below the minimum number of calls, no alert
            for i in range(3):
                content = "fail [[mock status=500]]" if i == 0 else "fine"
                ks.chat(key, content, max_tokens=8)
            wait_for(lambda: ks.sql("SELECT count(*) FROM usage_events") == "3", 10, "3 calls stored")
            settle()
            assert inbox.subjects() == [], inbox.subjects()
            # 10% of 60 more calls fail: over 5% with enough calls, one alert
            for i in range(60):
                content = f"fail {i} [[mock status=500]]" if i % 10 == 0 else f"fine {i}"
                st, _, raw = ks.chat(key, content, max_tokens=8)
                assert st == (500 if i % 10 == 0 else 200), (i, st, raw)
            wait_for(lambda: ks.sql("SELECT count(*) FROM usage_events") == "63", 10, "63 calls stored")
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the error-rate email")
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 1 and "error rate" in subjects[0].lower(), subjects
            assert ks.sql("SELECT count(*) FROM alerts WHERE rule = 'error_rate'") == "1"
        finally:
            alerter.stop()
            controller.stop()


def test_two_alerters_one_sends():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1) as ks:
        key = ks.create_key("spender")["key"]
        # a lease of 5 s: at the default three intervals (600 ms) a cycle slowed by
        # a loaded machine lets the lease lapse, and the other takes the lead
        env = {"GW_ALERT_SPEND_LIMIT_DAY": f"{decimal_of(10 * ONE):.6f}", "GW_ALERT_LEASE_MS": "5000"}
        a = start_alerter(ks, controller.port, env)
        b = start_alerter(ks, controller.port, env)
        try:
            spend(ks, key, 10)
            wait_spent(ks, 10 * ONE)
            wait_for(lambda: len(inbox.messages) >= 2, 10, "the 80% and 100% emails")
            settle()
            assert len(inbox.messages) == 2, inbox.subjects()
            leading = [p for p in (a, b) if "leading" in p.log()]
            assert len(leading) == 1, "exactly one alerter leads"
        finally:
            a.stop()
            b.stop()
            controller.stop()


def test_key_budget_80_and_100_percent():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1) as ks:
        # a request's maximum cost equals its real cost here (the estimate of "spend"
        # is the mock's 6 prompt tokens, and max_tokens 16 is what it answers), so a
        # budget of 10 requests admits exactly 10
        k = ks.create_key("web-team", budget_day=f"{decimal_of(10 * ONE):.6f}")
        alerter = start_alerter(ks, controller.port)
        try:
            spend(ks, k["key"], 8)
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the key's 80% email")
            subject = str(inbox.messages[0]["Subject"])
            assert "Daily budget 80% used: key web-team" in subject, subject
            spend(ks, k["key"], 2)
            wait_for(lambda: len(inbox.messages) >= 2, 10, "the key's 100% email")
            st, _, raw = ks.chat(k["key"], "spend", max_tokens=16)
            assert st == 429, (st, raw)
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 2 and "100%" in subjects[1] and "web-team" in subjects[1], subjects
            assert ks.sql("SELECT string_agg(rule || ' ' || subject || ' ' || level, ',' ORDER BY id) FROM alerts") \
                == f"budget_day key:{k['id']} 80%,budget_day key:{k['id']} 100%"
        finally:
            alerter.stop()
            controller.stop()


def test_key_rate_near_its_limit_and_slow_first_bytes():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1) as ks:
        k = ks.create_key("busy", rpm=10)
        # no resolved notices: a minute boundary during the test slides the window down
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_LATENCY_P95_MS": "600",
                                                      "GW_ALERT_LATENCY_MIN_CALLS": "5",
                                                      "GW_ALERT_RESOLVED_NOTICE": "none"})
        try:
            # 8 requests in a minute of an rpm of 10: under 90%, nothing
            spend(ks, k["key"], 8)
            wait_spent(ks, 8 * ONE)
            settle()
            assert inbox.subjects() == [], inbox.subjects()
            # the 9th reaches 90% (a 10th if a minute boundary slid the window
            # meanwhile): one alert
            for extra in range(2):
                spend(ks, k["key"], 1)
                try:
                    wait_for(lambda: len(inbox.messages) >= 1, 3, "the rate alert")
                    break
                except AssertionError:
                    if extra == 1:
                        raise
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 1 and "Key busy" in subjects[0] and "of 10 requests per minute" in subjects[0], \
                subjects
            # answers that take 1 s to start: the p95 first-byte time crosses 600 ms
            # (with 5 to 10 calls the p95 is the slowest one, so the threshold
            # stays far above what a fast call takes on a loaded ASan run)
            slow = ks.create_key("slow")["key"]
            for i in range(6):
                st, _, raw = ks.chat(slow, f"slow {i} [[mock first_byte_ms=1000]]", max_tokens=8)
                assert st == 200, (st, raw)
            wait_for(lambda: any("first byte" in x for x in inbox.subjects()), 10, "the latency alert")
            settle()
            subjects = inbox.subjects()
            assert len([x for x in subjects if "first byte" in x]) == 1, subjects
            assert len([x for x in subjects if "requests per minute" in x]) == 1, subjects
            assert ks.sql("SELECT count(*) FROM alerts WHERE rule = 'latency_p95'") == "1"
        finally:
            alerter.stop()
            controller.stop()


def test_silent_dispatcher_and_host_disk():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1, dispatcher_env={"GW_STATUS_MS": "200"}, acc_env={"GW_STATUS_MS": "200"}) as ks:
        # any disk in use crosses a 0% threshold: one alert for this host, however
        # many instances report it; CPU and memory thresholds at 100% never fire
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_SILENT_S": "2", "GW_ALERT_HOST_DISK": "0",
                                                      "GW_ALERT_HOST_CPU": "100", "GW_ALERT_HOST_MEMORY": "100"})
        try:
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the host disk alert")
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 1 and "disk" in subjects[0], subjects
            assert ks.sql("SELECT count(*) FROM instances WHERE kind = 'dispatcher'") == "1"
            # the ingresses report their host too (one may be alone on a host),
            # under a stable name: host:port
            # (every 2 s: the dispatcher's 200 ms reports may raise the alert first)
            port = ks.url.rsplit(":", 1)[1]
            wait_for(lambda: ks.sql(f"SELECT count(*) FROM instances WHERE kind = 'ingress' AND host <> ''"
                                    f" AND instance LIKE '%:{port}' AND disk_permille > 0") == "1", 10,
                     "the first ingress's row, with its host and disk")
            wait_for(lambda: ks.sql("SELECT count(*) FROM instances WHERE kind = 'ingress'") == "2", 10,
                     "both ingresses' rows")
            # an ingress and a dispatcher stopped cleanly say so: gone, not silent
            live = "SELECT count(*) FROM instances WHERE left_at IS NULL AND kind = "
            ks.stack.ingresses[1].stop()
            wait_for(lambda: ks.sql(live + "'ingress'") == "1", 10, "the stopped ingress's row left")
            extra = ks.stack.add_dispatcher({"GW_ACCOUNTING_ENDPOINTS": ",".join(ks.usage_eps),
                                             "GW_SPOOL_DIR": os.path.join(ks.tmp, "spool-extra"),
                                             "GW_PRICES": PRICES, "GW_STATUS_MS": "200",
                                             "GW_DISPATCHER_ID": "d-extra"})
            wait_for(lambda: ks.sql(live + "'dispatcher'") == "2", 10, "the second dispatcher's row")
            extra.stop()
            wait_for(lambda: ks.sql(live + "'dispatcher'") == "1", 10, "the stopped dispatcher's row left")
            kill9(ks.stack.dispatchers[0])
            wait_for(lambda: len(inbox.messages) >= 2, 15, "the silent dispatcher alert")
            settle(7)  # past an ingress's silence threshold (3 reports of 2 s)
            subjects = inbox.subjects()
            assert len(subjects) == 2 and "dispatcher" in subjects[1] and "silent" in subjects[1], subjects
            assert "[critical]" in subjects[1], subjects
            assert ks.sql("SELECT alert->>'instance' FROM alerts WHERE rule = 'silent'") == \
                ks.sql("SELECT instance FROM instances WHERE kind = 'dispatcher' AND left_at IS NULL")
            # accounting stopped cleanly leaves too
            alerter.stop()
            ks.accountings[0].stop()
            assert ks.sql(live + "'accounting'") == "0"
        finally:
            alerter.stop()
            controller.stop()


def test_provider_balance_under_minimum():
    controller, inbox = start_smtp()
    # the mock's account holds CNY 110.00 (GET /user/balance); alert under 200
    with KeyStack(accountings=1, dispatcher_env={"GW_STATUS_MS": "200", "GW_BALANCE_POLL_MS": "200"},
                  acc_env={"GW_STATUS_MS": "200"}) as ks:
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_BALANCE_MIN": "200", "GW_ALERT_HOST_DISK": "100",
                                                      "GW_ALERT_HOST_CPU": "100", "GW_ALERT_HOST_MEMORY": "100"})
        try:
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the balance alert")
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 1 and "Provider deepseek balance CNY 110.00, under 200.00" in subjects[0], subjects
            # the key that read it is in no message and no table
            assert ks.upstream_key not in str(inbox.messages[0]) and ks.upstream_key not in ks.all_table_text()
        finally:
            alerter.stop()
            controller.stop()


def test_error_rate_resolves_with_a_notice_for_that_rule():
    controller, inbox = start_smtp()
    with KeyStack(accountings=1, dispatcher_env={"GW_RETRY_MAX": "0"}) as ks:
        key = ks.create_key("caller")["key"]
        # a 10 s window: the failures leave it soon after, and the episode resolves;
        # only error_rate sends a resolved notice
        alerter = start_alerter(ks, controller.port, {"GW_ALERT_ERROR_WINDOW_S": "10", "GW_ALERT_ERROR_MIN_CALLS": "5",
                                                      "GW_ALERT_RESOLVED_NOTICE": "latency_p95,error_rate"})
        try:
            for i in range(10):
                ks.chat(key, f"fail {i} [[mock status=500]]" if i % 2 == 0 else f"fine {i}", max_tokens=8)
            wait_for(lambda: len(inbox.messages) >= 1, 10, "the error-rate alert")
            wait_for(lambda: len(inbox.messages) >= 2, 25, "the resolved notice")
            settle()
            subjects = inbox.subjects()
            assert len(subjects) == 2 and "[critical]" in subjects[0] and "[resolved]" in subjects[1], subjects
            assert "error_rate" in subjects[1], subjects
            assert ks.sql("SELECT count(*) FROM alerts WHERE rule = 'error_rate' AND resolved_at IS NOT NULL") == "1"
        finally:
            alerter.stop()
            controller.stop()


def faked_clock(path):
    """Environment that runs a process on the clock in path (libfaketime): an
    offset in seconds from the real clock ("+0", "-300", "+86400"), read again
    on every call, so the test moves the clock by rewriting the file. Monotonic
    clocks stay real (timers, ZeroMQ and libcurl keep working across a jump)."""
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: make deps installs the faketime package"
    return {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": path, "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # under ASan, libfaketime comes first in the library list
            "ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")}


def set_clock(path, when):
    """Moves the faked clock so that it reads `when` (UTC datetime) now."""
    offset = round(when.timestamp() - time.time())
    with open(path + ".new", "w") as f:
        f.write(f"{offset:+d}\n")
    os.chmod(path + ".new", 0o644)  # PostgreSQL reads it as the postgres user
    os.replace(path + ".new", path)


def test_next_day_crossing_sends_again():
    """The period is part of an alert's identity: the next UTC day's crossings of
    the same daily limit send again, and a crossing in the last seconds of a day,
    while no alerter runs, is still sent once one starts in the next day.
    PostgreSQL (whose now() names the periods) and the dispatcher (whose call
    times file the spend under a day) run on a clock the test moves: noon of day
    1, noon of day 2, then 5 s before day 3. Each jump leaves every instance row
    old: none may be called silent for it."""
    fd, clock = tempfile.mkstemp(prefix="gw-clock-", dir="/tmp")
    os.close(fd)
    today = datetime.datetime.now(datetime.timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
    day = [today + datetime.timedelta(days=n) for n in range(3)]  # noon of day 1, 2 and 3
    names = [d.strftime("%Y-%m-%d") for d in day]
    set_clock(clock, day[0])
    faked = faked_clock(clock)
    controller, inbox = start_smtp()
    try:
        with KeyStack(accountings=1, pg_env=faked, acc_env={"GW_STATUS_MS": "200"},
                      dispatcher_env={**faked, "GW_STATUS_MS": "200"}) as ks:
            key = ks.create_key("spender")["key"]
            env = {"GW_ALERT_SPEND_LIMIT_DAY": f"{decimal_of(10 * ONE):.6f}", "GW_ALERT_SILENT_S": "2"}
            alerter = start_alerter(ks, controller.port, env)
            try:
                assert ks.sql("SELECT current_date") == names[0]
                # one crossing at a time: two claimed in one cycle are sent at
                # once, and the inbox would get them in either order
                spend(ks, key, 8)
                wait_spent(ks, 8 * ONE)
                wait_for(lambda: len(inbox.messages) >= 1, 10, "day 1: the 80% email")
                spend(ks, key, 2)
                wait_spent(ks, 10 * ONE)
                wait_for(lambda: len(inbox.messages) >= 2, 10, "day 1: the 100% email")
                settle()
                assert len(inbox.messages) == 2, inbox.subjects()

                # day 2: the spend starts at zero; 7 requests stay under 80%
                set_clock(clock, day[1])
                assert ks.sql("SELECT current_date") == names[1]
                spend(ks, key, 7)
                wait_spent(ks, 17 * ONE)
                settle(3)  # past the silence threshold, after the jump
                assert len(inbox.messages) == 2, inbox.subjects()
                spend(ks, key, 1)
                wait_for(lambda: len(inbox.messages) >= 3, 10, "day 2: the 80% email")
                # the figures are the day's own: 8 requests' cost, not 18
                assert f"(CNY {decimal_of(8 * ONE).normalize()} of" in inbox.subjects()[2], inbox.subjects()

                # the last seconds of day 2, with no alerter: 100% is crossed. The
                # alerter is killed once the 80% delivery is recorded (a kill while
                # the SMTP server is answering may repeat a message: docs/alerter.md)
                wait_for(lambda: ks.sql("SELECT count(*) FROM alert_deliveries WHERE status = 'sent'") == "3", 10,
                         "day 2's 80% delivery recorded")
                kill9(alerter)
                set_clock(clock, day[2] - datetime.timedelta(hours=12, seconds=12))
                spend(ks, key, 2)
                wait_spent(ks, 20 * ONE)
                wait_for(lambda: ks.sql("SELECT current_date") == names[2], 20, "midnight")
                assert len(inbox.messages) == 3, inbox.subjects()
                # day 3 has begun: the alerter that starts now still sends day 2's 100%
                alerter = start_alerter(ks, controller.port, env)
                wait_for(lambda: len(inbox.messages) >= 4, 10, "day 2's 100% email, sent on day 3")
                settle(3)
                subjects = inbox.subjects()
                assert len(subjects) == 4, subjects
                assert ["80%" in s for s in subjects] == [True, False, True, False], subjects
                assert all("100%" in s for s in (subjects[1], subjects[3])), subjects
                assert ks.sql("SELECT string_agg(rule || ' ' || period || ' ' || level, ',' ORDER BY id) FROM alerts") \
                    == f"spend_day {names[0]} 80%,spend_day {names[0]} 100%," \
                       f"spend_day {names[1]} 80%,spend_day {names[1]} 100%"
                # the stored calls are filed under the day they were made
                assert ks.sql("SELECT string_agg(d || ':' || n, ',' ORDER BY d) FROM (SELECT started_at::date AS d,"
                              " count(*) AS n FROM usage_events GROUP BY 1) t") == f"{names[0]}:10,{names[1]}:10"
            finally:
                alerter.stop()
    finally:
        controller.stop()
        os.unlink(clock)
