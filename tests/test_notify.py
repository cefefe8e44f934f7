"""Alert notices (services/alerter/notifier.c) end to end, driven through bin/gw-notify.

Email goes to a real SMTP server (aiosmtpd, in a thread of this process) on a free
loopback port: plain, STARTTLS with a certificate made here by the openssl CLI,
AUTH PLAIN and LOGIN over STARTTLS, implicit TLS. Webhooks go to an http.server
receiver in a thread, which checks the bodies and signatures of every format.
"""

import base64
import contextlib
import email
import email.policy
import email.utils
import hashlib
import hmac
import http.server
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings

from harness import SANITIZER_MARKERS, free_port

# aiosmtpd's own log (a failed TLS handshake is a traceback) and its deprecation
# warnings are noise here: outcomes are asserted through the mailbox
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module="aiosmtpd")

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:
    # Debian's python3-aiosmtpd, when python3 is another interpreter (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

GW_NOTIFY = os.path.join(os.environ.get("GW_BIN_DIR", "bin"), "gw-notify")
TITLE_ZH = "[critical] 每日预算已用尽：密钥 web-team 已花费 100.02 元，上限 100.00 元"
TEXT = "Key web-team spent CNY 100.02 of its daily budget of CNY 100.00.\n.\n..a line of dots\n<b>not bold</b> & more\n"


# ---- helpers ----

def notify(env, *args, timeout=30):
    """Runs gw-notify with only the given GW_ALERT_* variables; returns (exit status, stdout, stderr)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GW_ALERT_")}
    full.update(env)
    proc = subprocess.run([GW_NOTIFY, *args], env=full, capture_output=True, text=True, timeout=timeout)
    for marker in SANITIZER_MARKERS:
        assert marker not in proc.stderr, f"sanitizer report in gw-notify:\n{proc.stderr}"
    return proc.returncode, proc.stdout, proc.stderr


class Mailbox:
    """The SMTP server's catch: envelopes, and the AUTH mechanisms used."""

    def __init__(self):
        self.messages = []
        self.mechanisms = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.ssl is not None))
        return "250 OK"


@contextlib.contextmanager
def smtp_server(box=None, **kwargs):
    """An aiosmtpd server on a free loopback port; yields (port, mailbox)."""
    box = box or Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller.port, box
    finally:
        controller.stop()


@contextlib.contextmanager
def certificate():
    """A self-signed certificate for 127.0.0.1; yields (cert path, key path)."""
    tmp = tempfile.mkdtemp(prefix="notify-tls-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
        yield cert, key
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def server_tls(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def authenticator(box, user, password):
    def check(server, session, envelope, mechanism, auth_data):
        box.mechanisms.append(mechanism)
        good = auth_data.login == user.encode() and auth_data.password == password.encode()
        # handled=False: aiosmtpd then answers 535 itself (its default, True, answers nothing)
        return AuthResult(success=good, handled=False)
    return check


def parse(content):
    return email.message_from_bytes(content, policy=email.policy.default)


def check_message(content, notice_id, title, text, to):
    """The message as the alerter promises it (mail.h)."""
    assert b"\n" not in content.replace(b"\r\n", b""), "bare LF in the message"
    msg = parse(content)
    assert msg["Subject"] == title
    assert msg["Message-ID"] == f"<alert-{notice_id}@gateway>"
    assert msg["From"] == "Gateway Alerts <alerts@example.com>"
    assert [a.addr_spec for a in msg["To"].addresses] == to
    assert msg["MIME-Version"] == "1.0"
    assert abs(email.utils.parsedate_to_datetime(msg["Date"]).timestamp() - time.time()) < 120
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain.get_content_charset() == "utf-8" and html.get_content_charset() == "utf-8"
    assert plain.get_content().replace("\r\n", "\n") == text
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in html.get_content().replace("\r\n", "\n")
    assert "<pre" in html.get_content()
    return msg


# ---- email ----

def test_notify_email_plain_two_recipients():
    with smtp_server() as (port, box):
        status, out, err = notify({
            "GW_ALERT_EMAIL_TO": "ops@example.com, On Call <oncall@example.com>",
            "GW_ALERT_EMAIL_FROM": "Gateway Alerts <alerts@example.com>",
            "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "GW_ALERT_SMTP_TLS": "none",
        }, "--id", "budget-day-7", "--severity", "critical", "--title", TITLE_ZH, "--text", TEXT)
        assert status == 0 and out == "email: ok\n", (status, out, err)
    assert len(box.messages) == 1
    mail_from, rcpts, content, tls = box.messages[0]
    assert mail_from == "alerts@example.com" and not tls
    assert rcpts == ["ops@example.com", "oncall@example.com"]
    msg = check_message(content, "budget-day-7", TITLE_ZH, TEXT, ["ops@example.com", "oncall@example.com"])
    # Non-ASCII subject travels as RFC 2047 encoded-words, lines within 76
    raw_subject = content.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw_subject.startswith(b"=?UTF-8?B?")
    for line in content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert len(line) <= 78, line
    assert msg["X-Gateway-Severity"] == "critical"


def test_notify_email_starttls_auth_plain_and_login():
    with certificate() as (cert, key):
        for mechanism in ("PLAIN", "LOGIN"):
            other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
            box = Mailbox()
            with smtp_server(box, tls_context=server_tls(cert, key), require_starttls=True, auth_required=True,
                             auth_exclude_mechanism=[other],
                             authenticator=authenticator(box, "alerter", "s3cret pass")) as (port, _):
                env = {
                    "GW_ALERT_EMAIL_TO": "ops@example.com,second@example.com",
                    "GW_ALERT_EMAIL_FROM": "Gateway Alerts <alerts@example.com>",
                    "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{port}",
                    "GW_ALERT_SMTP_CA_FILE": cert,
                    "GW_ALERT_SMTP_USER": "alerter",
                    "GW_ALERT_SMTP_PASSWORD": "s3cret pass",
                }
                # GW_ALERT_SMTP_TLS unset: starttls, the default for smtp://
                status, out, err = notify(env, "--id", f"auth-{mechanism}", "--title", TITLE_ZH, "--text", TEXT)
                assert status == 0 and out == "email: ok\n", (mechanism, status, out, err)
                assert box.mechanisms == [mechanism]
                assert len(box.messages) == 1
                mail_from, rcpts, content, tls = box.messages[0]
                assert tls, "the message went before STARTTLS"
                assert rcpts == ["ops@example.com", "second@example.com"]
                check_message(content, f"auth-{mechanism}", TITLE_ZH, TEXT, ["ops@example.com", "second@example.com"])
                # A wrong password fails, and nothing is delivered
                status, out, err = notify({**env, "GW_ALERT_SMTP_PASSWORD": "wrong"}, "--id", "bad-pass")
                assert status == 1 and out.startswith("email: ") and "ok" not in out, (status, out, err)
                assert len(box.messages) == 1


def test_notify_email_starttls_required_and_verified():
    with certificate() as (cert, key):
        # A server without STARTTLS: refused, not sent in clear
        with smtp_server() as (port, box):
            status, out, err = notify({"GW_ALERT_EMAIL_TO": "ops@example.com",
                                       "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{port}"})
            assert status == 1 and out.startswith("email: ") and out != "email: ok\n", (status, out, err)
            assert box.messages == []
        # A self-signed server without GW_ALERT_SMTP_CA_FILE: the certificate does not verify
        with smtp_server(tls_context=server_tls(cert, key), require_starttls=True) as (port, box):
            status, out, err = notify({"GW_ALERT_EMAIL_TO": "ops@example.com",
                                       "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{port}"})
            assert status == 1 and ("SSL" in out or "certificate" in out), (status, out, err)
            assert box.messages == []


def test_notify_email_implicit_tls():
    with certificate() as (cert, key):
        with smtp_server(ssl_context=server_tls(cert, key)) as (port, box):
            status, out, err = notify({
                "GW_ALERT_EMAIL_TO": "ops@example.com",
                "GW_ALERT_EMAIL_FROM": "Gateway Alerts <alerts@example.com>",
                "GW_ALERT_SMTP_URL": f"smtps://127.0.0.1:{port}",
                "GW_ALERT_SMTP_CA_FILE": cert,
            }, "--id", "implicit", "--title", "[warning] plain ASCII title", "--text", TEXT)
            assert status == 0 and out == "email: ok\n", (status, out, err)
        assert len(box.messages) == 1
        msg = check_message(box.messages[0][2], "implicit", "[warning] plain ASCII title", TEXT, ["ops@example.com"])
        assert b"Subject: [warning] plain ASCII title\r\n" in box.messages[0][2]
        assert msg is not None


def test_notify_email_server_down():
    # Nothing listens: refused at once
    port = free_port()
    started = time.monotonic()
    status, out, err = notify({"GW_ALERT_EMAIL_TO": "ops@example.com", "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{port}",
                               "GW_ALERT_SMTP_TLS": "none", "GW_ALERT_SEND_TIMEOUT_MS": "3000"})
    assert status == 1 and out.startswith("email: ") and "onnect" in out, (status, out, err)
    assert time.monotonic() - started < 3
    # A server that accepts and never speaks: the send timeout ends it
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        status, out, err = notify({"GW_ALERT_EMAIL_TO": "ops@example.com",
                                   "GW_ALERT_SMTP_URL": f"smtp://127.0.0.1:{silent.getsockname()[1]}",
                                   "GW_ALERT_SMTP_TLS": "none", "GW_ALERT_SEND_TIMEOUT_MS": "1000"})
        elapsed = time.monotonic() - started
    assert status == 1 and "imeout" in out, (status, out, err)
    assert 0.9 < elapsed < 4, elapsed


# ---- webhooks ----

class Receiver:
    """Webhook receiver: records (path, query, headers, raw body) and answers per path."""

    def __init__(self):
        self.requests = []
        self.answers = {}  # path -> (status, body bytes)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                url = urllib.parse.urlsplit(self.path)
                receiver.requests.append((url.path, urllib.parse.parse_qs(url.query), dict(self.headers), body))
                status, answer = receiver.answers.get(url.path, (200, b'{"errcode":0,"errmsg":"ok"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def by_path(self, path):
        found = [r for r in self.requests if r[0] == path]
        assert len(found) == 1, (path, self.requests)
        return found[0]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def webhook_env(rx, hooks):
    """hooks: name -> (format, secret or None); each posts to /<name>."""
    env = {"GW_ALERT_WEBHOOKS": ",".join(hooks)}
    for name, (fmt, secret) in hooks.items():
        key = name.upper().replace("-", "_")
        env[f"GW_ALERT_WEBHOOK_{key}_URL"] = f"{rx.url}/{name}" + ("?access_token=tok" if fmt == "dingtalk" else "")
        env[f"GW_ALERT_WEBHOOK_{key}_FORMAT"] = fmt
        if secret:
            env[f"GW_ALERT_WEBHOOK_{key}_SECRET"] = secret
    return env


def test_notify_webhook_formats():
    title = "[critical] Budget <web-team> & co: 预算 100%"
    text = "Key web-team spent CNY 100.02 of 100.00.\nSecond line 第二行"
    hooks = {"gen": ("generic", "gen-secret"), "slack": ("slack", None), "lark": ("feishu", "lark-secret"),
             "ding": ("dingtalk", "SECding"), "we-com": ("wecom", None), "plain": ("generic", None)}
    with receiver() as rx:
        started = time.time()
        status, out, err = notify(webhook_env(rx, hooks), "--id", "a-42", "--severity", "critical",
                                  "--title", title, "--text", text)
        assert status == 0, (status, out, err)
        assert sorted(out.splitlines()) == sorted(f"webhook:{n}: ok" for n in hooks), out

        # generic: the notice's JSON whole, and a signature over the raw body
        _, _, headers, body = rx.by_path("/gen")
        got = json.loads(body)
        assert list(got) == ["alert", "title", "severity", "text"]
        assert got["title"] == title and got["severity"] == "critical" and got["text"] == text
        alert = got["alert"]
        assert alert["id"] == "a-42" and alert["severity"] == "critical" and alert["title"] == title
        assert alert["text"] == text and alert["test"] is True
        assert headers["Content-Type"].startswith("application/json")
        want = "sha256=" + hmac.new(b"gen-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Gateway-Signature"] == want
        _, _, headers, body = rx.by_path("/plain")
        assert "X-Gateway-Signature" not in headers and json.loads(body)["title"] == title

        # slack: one text, mrkdwn-escaped
        _, _, headers, body = rx.by_path("/slack")
        esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert json.loads(body) == {"text": esc(title) + "\n" + esc(text)}

        # feishu: timestamp (seconds) and sign = base64(HMAC(key=ts+"\n"+secret, ""))
        _, _, _, body = rx.by_path("/lark")
        got = json.loads(body)
        ts = got.pop("timestamp")
        sign = got.pop("sign")
        assert got == {"msg_type": "text", "content": {"text": title + "\n" + text}}
        assert isinstance(ts, str) and abs(int(ts) - started) < 60
        key = f"{ts}\n{'lark-secret'}".encode()
        assert sign == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()

        # dingtalk: markdown; timestamp (ms) and sign in the URL
        _, query, _, body = rx.by_path("/ding")
        assert json.loads(body) == {"msgtype": "markdown",
                                    "markdown": {"title": title, "text": "### " + title + "\n\n" + text}}
        assert query["access_token"] == ["tok"]
        ts = query["timestamp"][0]
        assert abs(int(ts) / 1000 - started) < 60
        mac = hmac.new(b"SECding", f"{ts}\nSECding".encode(), hashlib.sha256).digest()
        assert query["sign"] == [base64.b64encode(mac).decode()]

        # wecom: markdown content
        _, _, _, body = rx.by_path("/we-com")
        assert json.loads(body) == {"msgtype": "markdown", "markdown": {"content": "**" + title + "**\n" + text}}


def test_notify_webhook_wecom_truncated():
    text = "预算" * 1500 + "end"  # 9003 bytes
    with receiver() as rx:
        status, out, err = notify(webhook_env(rx, {"wc": ("wecom", None)}), "--title", "[warning] big", "--text", text)
        assert status == 0 and out == "webhook:wc: ok\n", (status, out, err)
        content = json.loads(rx.by_path("/wc")[3])["markdown"]["content"]
    raw = content.encode()
    assert 4090 <= len(raw) <= 4096, len(raw)
    assert content.endswith("…")
    assert ("**[warning] big**\n" + text).startswith(content[:-1])


def test_notify_webhook_failures():
    hooks = {"down": ("generic", None), "ding": ("dingtalk", "SECding"), "lark": ("feishu", None),
             "we": ("wecom", None), "fine": ("generic", None)}
    with receiver() as rx:
        rx.answers["/down"] = (500, b"internal trouble")
        rx.answers["/ding"] = (200, b'{"errcode":310000,"errmsg":"sign not match"}')
        rx.answers["/lark"] = (200, b'{"code":19021,"msg":"sign match fail"}')
        rx.answers["/we"] = (200, b'{"errcode":93000,"errmsg":"invalid webhook url"}')
        # A generic receiver is judged by its status alone
        rx.answers["/fine"] = (202, b'{"errcode":1}')
        status, out, err = notify(webhook_env(rx, hooks))
        assert status == 1, (status, out, err)
        lines = dict(line.split(": ", 1) for line in out.splitlines())
        assert lines["webhook:down"].startswith("HTTP 500") and "internal trouble" in lines["webhook:down"]
        assert "310000" in lines["webhook:ding"] and "sign not match" in lines["webhook:ding"]
        assert "19021" in lines["webhook:lark"]
        assert "93000" in lines["webhook:we"]
        assert lines["webhook:fine"] == "ok"
        # --channel sends on that one only
        before = len(rx.requests)
        status, out, err = notify(webhook_env(rx, hooks), "--channel", "fine")
        assert status == 0 and out == "webhook:fine: ok\n", (status, out, err)
        status, out, err = notify(webhook_env(rx, hooks), "--channel", "webhook:ding")
        assert status == 1 and out.startswith("webhook:ding: ") and "310000" in out, (status, out, err)
        assert len(rx.requests) == before + 2
    # Nobody listening
    status, out, err = notify({"GW_ALERT_WEBHOOKS": "gone",
                               "GW_ALERT_WEBHOOK_GONE_URL": f"http://127.0.0.1:{free_port()}/x"})
    assert status == 1 and out.startswith("webhook:gone: ") and "onnect" in out, (status, out, err)


def test_notify_usage_errors():
    status, out, err = notify({})
    assert status == 2 and "no alert channels" in err, (status, out, err)
    env = {"GW_ALERT_WEBHOOKS": "x", "GW_ALERT_WEBHOOK_X_URL": "http://127.0.0.1:9/"}
    status, out, err = notify(env, "--channel", "nope")
    assert status == 2 and "webhook:x" in err, (status, out, err)
    status, out, err = notify({**env, "GW_ALERT_WEBHOOK_X_FORMAT": "teams"})
    assert status == 2 and "FORMAT" in err, (status, out, err)
    status, out, err = notify(env, "--severity", "meh")
    assert status == 2, (status, out, err)
    status, out, err = notify(env, "--bogus")
    assert status == 2 and "usage" in err, (status, out, err)
