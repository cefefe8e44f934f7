"""Test harness: start the project's processes on loopback and talk to them as a client would.

Python 3 standard library only. Helpers:

- free_port(): a TCP port free on 127.0.0.1 right now, below the ephemeral
  range (no connection can take it before the server binds it).
- start(name, argv, env, ready_url=None, timeout=10): start a process with its
  stdout/stderr in a log file under a temporary directory; returns a Process
  whose .stop() sends SIGTERM, waits, and fails (AssertionError) on a non-zero
  exit or on sanitizer reports (AddressSanitizer, UBSan "runtime error:",
  LeakSanitizer, ThreadSanitizer) in the log. A clean stop removes the log
  directory (.log() still answers); a failed one keeps it and names it. A
  Process is also a context manager.
- http(method, url, body=None, headers=None, timeout=10) -> (status,
  headers with lower-case names, body bytes). A dict or list body is sent as
  JSON. Errors while reading the body (a dropped connection) propagate,
  typically as http.client.IncompleteRead.
- sse_events(body_bytes): the data payloads of a complete SSE body.
- SSEStream(url, body=None, headers=None): an incremental SSE reader over
  http.client, for tests that watch timing or disconnect mid-stream.
"""

import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer", "WARNING: ThreadSanitizer")


def _port_range():
    """Ports that no outgoing connection can take: below the kernel's ephemeral range.

    A port found with bind(0) comes from the ephemeral range, the same range
    connect() draws local ports from; between the check and the server's own
    bind, any connection the test makes (a readiness poll, a dispatcher joining,
    PostgreSQL's clients) can take it, and the server then fails with
    EADDRINUSE. A CI run lost an ingress that way. Ports below the range are
    never given to connections, so only a listener could hold one.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    top = min(low, 32768)
    return (10000, top) if top - 10000 >= 2000 else (top // 2, top)


_PORT_LOW, _PORT_HIGH = _port_range()
# Each runner walks the range from its own starting point and never hands a
# port out twice, so two free_port() calls before either server binds (a port
# kept for a server started later) cannot collide; a test runner and a bench
# started side by side start far apart.
_port_next = _PORT_LOW + (os.getpid() * 7919) % (_PORT_HIGH - _PORT_LOW)


def free_port():
    """Return a TCP port that is free on 127.0.0.1 now, outside the ephemeral range.

    Never the same port twice in one process (until the range wraps)."""
    global _port_next
    span = _PORT_HIGH - _PORT_LOW
    for _ in range(span):
        port = _port_next
        _port_next = _PORT_LOW + (_port_next + 1 - _PORT_LOW) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR as the servers set it: a port whose last listener left
            # connections in TIME_WAIT is free for them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {_PORT_LOW}-{_PORT_HIGH}")


class Process:
    """A started process; stop() ends it and reports anything suspicious."""

    def __init__(self, name, proc, log_path):
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self._stopped = False
        self._final_log = None

    def log(self):
        """The process's combined stdout/stderr so far (still available after a clean stop)."""
        if self._final_log is not None:
            return self._final_log
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _fail(self, reason):
        tail = "\n".join(self.log().splitlines()[-60:])
        raise AssertionError(f"{self.name}: {reason} (log {self.log_path}):\n{tail}")

    def stop(self, timeout=10):
        """SIGTERM, wait; fail on timeout, non-zero exit or sanitizer output."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._fail(f"did not stop within {timeout}s of SIGTERM")
        log = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in log:
                self._fail(f"sanitizer report ({marker!r})")
        if self.proc.returncode != 0:
            self._fail(f"exit status {self.proc.returncode}")
        # Clean runs leave nothing in the temporary directory; failed ones
        # keep their log where the failure message says
        self._final_log = log
        shutil.rmtree(os.path.dirname(self.log_path), ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A failing test already has its error; still stop the process, but
        # let a stop failure surface only when the test itself passed
        try:
            self.stop()
        except AssertionError:
            if exc_type is None:
                raise


def start(name, argv, env=None, ready_url=None, timeout=10):
    """Start argv with env added to the current environment; wait until ready_url answers."""
    log_dir = tempfile.mkdtemp(prefix=f"{name}-")
    log_path = os.path.join(log_dir, f"{name}.log")
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    handle = Process(name, proc, log_path)
    if ready_url:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                handle._stopped = True
                handle._fail(f"exited with status {proc.returncode} before becoming ready")
            try:
                http("GET", ready_url, timeout=1)
                break
            except (OSError, httpclient.HTTPException):
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    handle._stopped = True
                    handle._fail(f"not ready at {ready_url} within {timeout}s")
                time.sleep(0.02)
    return handle


def _connect(url, timeout):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported: {url}")
    conn = httpclient.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return conn, path


def _encode(body, headers):
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    return body, headers


def http(method, url, body=None, headers=None, timeout=10):
    """One request on a fresh connection: (status, {lower-case header: value}, body bytes)."""
    conn, path = _connect(url, timeout)
    body, headers = _encode(body, headers)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def sse_events(body_bytes):
    """The data payloads of an SSE body, in order; comments (": keep-alive") are skipped."""
    events = []
    data = []
    for line in body_bytes.decode("utf-8").split("\n"):
        line = line.rstrip("\r")
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
        elif line.startswith(":"):
            continue
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


class SSEStream:
    """Incremental SSE reader: opens the request, exposes status/headers, yields events as they arrive.

    next_event() returns ("data", payload) or ("comment", text), or None at the
    clean end of the body; a dropped connection raises (http.client.IncompleteRead
    or an OSError). close() closes the socket at once, as a client that gives up.
    """

    def __init__(self, url, body=None, headers=None, method="POST", timeout=10):
        self.conn, path = _connect(url, timeout)
        body, headers = _encode(body, headers)
        self.conn.request(method, path, body=body, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}

    def next_event(self):
        data = []
        while True:
            line = self.response.readline()
            if not line:
                if data:
                    return ("data", "\n".join(data))
                if self.response.chunked and self.response.chunk_left is not None:
                    # readline() hides a missing terminating chunk: make it visible
                    raise httpclient.IncompleteRead(b"")
                return None
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if data:
                    return ("data", "\n".join(data))
                continue
            if text.startswith(":"):
                if not data:
                    return ("comment", text[1:].strip())
                continue
            if text.startswith("data:"):
                value = text[5:]
                data.append(value[1:] if value.startswith(" ") else value)

    def events(self):
        """Generator over next_event() until the end of the body."""
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event

    def close(self):
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.response.close()
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
