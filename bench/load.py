"""The load bench/gateway.py applies: wrk for throughput and latency, a sequential client
for the time to first byte of streams, and a client that holds thousands of streams.

    wrk(url, headers, body, connections, seconds, threads)
        one wrk run with bench/wrk-chat.lua: requests, errors, req/s, p50/p90/p99/max µs,
        and the fraction of the connections that were served (Little's law)
    ttfb(url, headers, body, n)
        n streamed requests one after another on one keep-alive connection (after one
        more that opens it); per request
        the µs from sending it to the first byte of the response body, and to its end
    hold_streams(url, headers, body, n, deadline_s, sample)
        opens n streamed requests at once (paced, one epoll loop, no thread per stream),
        reads them to the end, calls sample(open_streams) about twice a second, and
        says how many completed cleanly and how the others failed

Only http:// on loopback. Every loop is bounded by a count and by a deadline.
"""

import errno
import os
import re
import select
import socket
import subprocess
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_LUA = os.path.join(HERE, "wrk-chat.lua")
CHAT_PATH = "/v1/chat/completions"
RESULT_RE = re.compile(r"RESULT (.*)")


def wrk(url, headers, body, connections, seconds, threads=1, timeout_s=2):
    """A request unanswered after timeout_s counts as an error, but wrk checks only every
    2 s: in a short run a connection that waits throughout shows in served_fraction."""
    env = dict(os.environ, BENCH_BODY=body, BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in headers.items()))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout_s}s", "-s", WRK_LUA,
            url + CHAT_PATH]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    m = RESULT_RE.search(out.stdout)
    if not m:
        raise RuntimeError(f"wrk said: {out.stdout}{out.stderr}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    rps = r["requests"] / (r["duration_us"] / 1e6)
    # Little's law: the connections that were busy with a request on average. Well
    # below `connections`, some waited without an answer for much of the run.
    busy = rps * r["mean"] / 1e6
    return {"requests": r["requests"], "errors": r["errors"], "error_detail": {k: r[k] for k in (
        "status", "connect", "read", "write", "timeout") if r[k]}, "rps": rps,
        "p50_us": r["p50"], "p90_us": r["p90"], "p99_us": r["p99"], "max_us": r["max"], "mean_us": r["mean"],
        "served_fraction": round(busy / connections, 3), "seconds": r["duration_us"] / 1e6}


def _request(url, headers, body):
    parts = urllib.parse.urlsplit(url)
    body = body.encode()
    lines = [f"POST {CHAT_PATH} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return (parts.hostname, parts.port), ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Stream:
    """One streamed response read incrementally: status, then the SSE body until the
    terminating chunk after "data: [DONE]" (trailers allowed). Cheap per byte: only
    substring searches over the new data and a short tail of the old."""
    __slots__ = ("sock", "phase", "head", "tail", "status", "done", "finish", "error_event", "t_sent", "t_first",
                 "t_end")

    def __init__(self, sock):
        self.sock = sock
        self.phase = 0  # 0 connecting, 1 waiting for the headers, 2 in the body, 3 finished
        self.head = b""
        self.tail = b""
        self.status = 0
        self.done = self.finish = self.error_event = False
        self.t_sent = self.t_first = self.t_end = 0.0

    def feed(self, data, now):
        """Returns True when the response is complete."""
        if self.phase == 1:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return False
            first = self.head[:self.head.find(b"\r\n")].split()
            self.status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
            data = self.head[end + 4:]
            self.head = b""
            self.phase = 2
            if self.status != 200:
                return True
            if not data:
                return False
        if not self.t_first:
            self.t_first = now
        buf = self.tail + data
        if not self.finish and b'"finish_reason":"' in buf:  # "stop" or "length", not null
            self.finish = True
        if b'"error"' in buf:
            self.error_event = True
        if not self.done:
            i = buf.find(b"data: [DONE]")
            if i >= 0:
                self.done = True
                buf = buf[i:]
        if self.done:
            i = buf.find(b"\r\n0\r\n")
            if i >= 0 and buf.find(b"\r\n\r\n", i + 3) >= 0:
                self.phase = 3
                self.t_end = now
                return True
        self.tail = buf[-64:]
        return False


def ttfb(url, headers, body, n, timeout=10):
    """µs to the first body byte and to the end of each of n streamed requests, in order."""
    addr, request = _request(url, headers, body)
    first, total, errors = [], [], 0
    sock = None
    deadline = time.monotonic() + max(30, n * 0.5)
    for i in range(n + 1):  # the first opens the connection: not counted
        if time.monotonic() > deadline:
            break
        if sock is None:
            sock = socket.create_connection(addr, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = _Stream(sock)
        st.phase = 1
        t0 = time.perf_counter()
        try:
            sock.sendall(request)
            while True:
                data = sock.recv(65536)
                now = time.perf_counter()
                if not data:
                    raise ConnectionError("closed")
                if st.feed(data, now):
                    break
        except OSError:
            errors += 1
            sock.close()
            sock = None
            continue
        if st.status != 200 or not st.done:
            errors += 1
            sock.close()
            sock = None
            continue
        if i:
            first.append((st.t_first - t0) * 1e6)
            total.append((st.t_end - t0) * 1e6)
    if sock:
        sock.close()
    return {"first_byte_us": first, "total_us": total, "errors": errors}


def hold_streams(url, headers, body, n, deadline_s, sample=None, max_pending=1000, pace_s=0.25):
    """Holds n streams at once; see the module comment. sample(open_streams) may return
    anything; its results are returned in "samples" with the time and the open count."""
    addr, request = _request(url, headers, body)
    ep = select.epoll()
    conns = {}
    opened = completed = 0
    errors = {}
    samples = []
    max_open = 0
    counts = [0, 0, 0]  # streams connecting or waiting for headers (0, 1), in the body (2)

    def fail(st, why):
        errors[why] = errors.get(why, 0) + 1
        close(st)

    def close(st):
        counts[min(st.phase, 2)] -= 1
        st.phase = 3
        fd = st.sock.fileno()
        try:
            ep.unregister(fd)
        except OSError:
            pass
        st.sock.close()
        conns.pop(fd, None)

    t_start = time.monotonic()
    next_sample = t_start
    try:
        while time.monotonic() - t_start < deadline_s:
            while opened < n and counts[0] + counts[1] < max_pending:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                rc = s.connect_ex(addr)
                opened += 1
                st = _Stream(s)
                if rc not in (0, errno.EINPROGRESS):
                    errors["connect"] = errors.get("connect", 0) + 1
                    s.close()
                    continue
                conns[s.fileno()] = st
                counts[0] += 1
                ep.register(s.fileno(), select.EPOLLOUT)
            loop_start = time.monotonic()
            for fd, ev in ep.poll(0.05, 16384):
                st = conns.get(fd)
                if st is None:
                    continue
                now = time.monotonic()
                if st.phase == 0:
                    if st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        fail(st, "connect")
                        continue
                    try:
                        sent = st.sock.send(request)
                    except OSError:
                        fail(st, "send")
                        continue
                    if sent != len(request):
                        fail(st, "send")
                        continue
                    st.phase = 1
                    counts[0] -= 1
                    counts[1] += 1
                    st.t_sent = now
                    ep.modify(fd, select.EPOLLIN)
                    continue
                try:
                    data = st.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    fail(st, "reset")
                    continue
                if not data:
                    fail(st, "closed early" if st.phase == 2 else "closed before the headers")
                    continue
                was = st.phase
                finished = st.feed(data, now)
                if was == 1 and st.phase >= 2:
                    counts[1] -= 1
                    counts[2] += 1
                if finished:
                    if st.status != 200:
                        fail(st, f"status {st.status}")
                    elif st.error_event or not st.finish:
                        fail(st, "error event in the stream" if st.error_event else "no finish_reason")
                    else:
                        completed += 1
                        close(st)
            open_now = counts[2]
            max_open = max(max_open, open_now)
            now = time.monotonic()
            if sample and now >= next_sample:
                samples.append({"t": round(now - t_start, 2), "open": open_now, "value": sample(open_now)})
                next_sample = now + 0.5
            if opened >= n and not conns:
                break
            if opened >= n:
                # All requests are out: read less often, so each read takes several
                # chunks at once and this client stays cheap next to the servers.
                time.sleep(max(0.0, pace_s - (time.monotonic() - loop_start)))
    finally:
        left = len(conns)
        for st in list(conns.values()):
            close(st)
        ep.close()
    if left:
        errors["not finished by the deadline"] = left
    return {"streams": n, "completed": completed, "errors": errors, "max_open": max_open,
            "seconds": round(time.monotonic() - t_start, 1), "samples": samples}
