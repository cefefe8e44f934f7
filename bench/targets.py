"""The targets bench/gateway.py loads, all on 127.0.0.1 and all in front of one mock upstream.

    Mock(bin_dir, env)            bin/mock-upstream answering at once: the floor
    Nginx(mock, workers)          Debian's nginx as a plain reverse proxy to the mock
                                  (bench/peers/nginx.conf), foreground, private prefix
    Portkey(mock)                 @portkey-ai/gateway from npm (bench/peers/package.json,
                                  installed under bench/.peers/portkey), openai provider
                                  with x-portkey-custom-host pointing at the mock
    Gateway(mock, bin_dir, ...)   ours: private PostgreSQL (tests/pg.py), accounting,
                                  alerter, one ingress with GW_AUTH=keys and a gateway
                                  key without limits or budget, one dispatcher: on a
                                  thread of the ingress as make run starts it (local=True,
                                  GW_LOCAL_DISPATCHER=1), or a process of its own
                                  (local=False, "gateway (split)")
    CachedGateway(gateway)        the same running gateway, every request carrying
                                  X-Gateway-Cache: use, so that it is answered from the
                                  dispatcher's response cache (a hit) once warmed

Each has .name, .url (the base: requests go to url + "/v1/chat/completions"),
.headers (what a client sends besides Content-Type), .roots() (the pids whose process
trees make up the target, for procstat), .parts() (the same per component) and
.stop(). A Gateway also has .services() and .front() (its processes by service, see
there) and .label. ensure_nginx() and ensure_portkey() install what is missing.
"""

import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import harness  # noqa: E402
import procstat  # noqa: E402
from pg import Postgres  # noqa: E402

NGINX = "/usr/sbin/nginx"
PEERS_SRC = os.path.join(HERE, "peers")
PORTKEY_DIR = os.path.join(HERE, ".peers", "portkey")
PORTKEY_PKG = os.path.join(PORTKEY_DIR, "node_modules", "@portkey-ai", "gateway")
PRICES = os.path.join(ROOT, "prices", "prices.csv")


def say(*args):
    print("bench:", *args, flush=True)


# ------------------------------------------------------------------ installing peers

def ensure_nginx():
    """Debian's nginx-light when no nginx is installed (its service is not started here)."""
    if os.access(NGINX, os.X_OK):
        return
    say("installing nginx-light (Debian)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env, timeout=600)


def ensure_portkey():
    """npm ci of bench/peers into bench/.peers/portkey unless that exact install is there."""
    want = json.load(open(os.path.join(PEERS_SRC, "package.json")))["dependencies"]["@portkey-ai/gateway"]
    try:
        have = json.load(open(os.path.join(PORTKEY_PKG, "package.json")))["version"]
        same_lock = open(os.path.join(PEERS_SRC, "package-lock.json")).read() == \
            open(os.path.join(PORTKEY_DIR, "package-lock.json")).read()
    except OSError:
        have, same_lock = None, False
    if have == want and same_lock:
        return
    if not shutil.which("npm"):
        raise RuntimeError("npm is missing: run make deps (it installs nodejs and npm)")
    say(f"installing @portkey-ai/gateway {want} with npm into {os.path.relpath(PORTKEY_DIR, ROOT)}")
    os.makedirs(PORTKEY_DIR, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(PEERS_SRC, name), os.path.join(PORTKEY_DIR, name))
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=PORTKEY_DIR, check=True, timeout=600)


def versions():
    """Versions of the peers and tools, for the machine description."""
    def out(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    v = {"nginx": out([NGINX, "-v"]).replace("nginx version: ", ""), "node": out(["node", "--version"]),
         "wrk": out(["wrk", "--version"]).split("\n")[0].split(" [")[0]}
    try:
        v["portkey"] = json.load(open(os.path.join(PORTKEY_PKG, "package.json")))["version"]
        v["hono_node_server"] = json.load(open(os.path.join(
            PORTKEY_DIR, "node_modules", "@hono", "node-server", "package.json")))["version"]
    except OSError:
        v["portkey"] = "?"
    v["postgres"] = out([os.path.join(os.environ.get("GW_PG_BIN", "/usr/lib/postgresql/15/bin"), "postgres"),
                         "--version"])
    return v


# ------------------------------------------------------------------ processes

class Peer:
    """A process of ours in a session of its own (a Ctrl-C reaches the script, which stops
    it by pid), its output in a log file; stop() ends its whole tree."""

    def __init__(self, name, argv, env=None, cwd=None, ready_url=None, timeout=30):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
        self.log_path = os.path.join(self.dir, f"{name}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=dict(os.environ, **(env or {})), cwd=cwd,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid = self.proc.pid
        if ready_url:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({self.proc.returncode}) before it was ready:\n{self.log()}")
                try:
                    harness.http("GET", ready_url, timeout=2)
                    break
                except (OSError, http.client.HTTPException):
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{name} not ready at {ready_url} within {timeout}s:\n{self.log()}")
                    time.sleep(0.05)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            family = procstat.tree([self.pid])
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in family:  # nginx workers of a killed master, if any
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ the targets

class Mock:
    name = "mock"

    def __init__(self, bin_dir, env=None):
        self.key = "sk-mock-" + secrets.token_hex(8)
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.proc = Peer("mock", [os.path.join(bin_dir, "mock-upstream")],
                         dict({"MOCK_PORT": str(self.port), "MOCK_API_KEY": self.key}, **(env or {})),
                         ready_url=self.url + "/mock/stats")

    def roots(self):
        return [self.proc.pid]

    def parts(self):
        return {"mock-upstream": [self.proc.pid]}

    def stop(self):
        self.proc.stop()


class Nginx:
    name = "nginx"

    def __init__(self, mock, workers="2"):
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = dict(mock.headers)
        self.prefix = tempfile.mkdtemp(prefix="bench-nginx-")
        with open(os.path.join(PEERS_SRC, "nginx.conf")) as f:
            conf = f.read()
        for field, value in (("@WORKERS@", str(workers)), ("@DIR@", self.prefix),
                             ("@MOCK_PORT@", str(mock.port)), ("@PORT@", str(self.port))):
            conf = conf.replace(field, value)
        conf_path = os.path.join(self.prefix, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        self.proc = Peer("nginx", [NGINX, "-p", self.prefix + "/", "-e", os.path.join(self.prefix, "error.log"),
                                   "-c", conf_path], ready_url=self.url + "/bench-health")

    def roots(self):
        return [self.proc.pid]

    def parts(self):
        return {"nginx master+workers": [self.proc.pid]}

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


class Portkey:
    name = "portkey"

    def __init__(self, mock):
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The gateway's documented way to reach any OpenAI-compatible server: the openai
        # provider with a custom host (127.0.0.1 is in its default TRUSTED_CUSTOM_HOSTS).
        self.headers = dict(mock.headers, **{"x-portkey-provider": "openai",
                                             "x-portkey-custom-host": mock.url + "/v1"})
        self.proc = Peer("portkey", ["node", "--import", os.path.join(PEERS_SRC, "loopback.mjs"),
                                     os.path.join(PORTKEY_PKG, "build", "start-server.js"), f"--port={self.port}",
                                     "--headless"],
                         {"NODE_ENV": "production"}, cwd=PORTKEY_DIR, ready_url=self.url + "/")

    def roots(self):
        return [self.proc.pid]

    def parts(self):
        return {"node": [self.proc.pid]}

    def stop(self):
        self.proc.stop()


class Gateway:
    """Ours, with usage accounting on, as make run starts it (defaults unless env says).

    local=True, make run's default (GW_LOCAL_DISPATCHER=1): the ingress runs its
    dispatcher on a thread, joined over inproc, and gets the dispatcher's environment
    too; three processes for the four services. local=False, the split layout
    (GW_LOCAL_DISPATCHER=0): a dispatcher process of its own, joined to the ingress's
    GW_JOBS_BIND over tcp on loopback; four processes. dispatcher_env goes to
    whichever process runs the dispatcher."""
    name = "gateway"
    label = "gateway"
    SPLIT_NAME = "gateway-split"
    SPLIT_LABEL = "gateway (split)"
    # The ingress's part in services() and parts() when its dispatcher runs inside it:
    # its figures are both services'.
    LOCAL_INGRESS = "ingress (with its dispatcher)"

    def __init__(self, mock, bin_dir, dispatcher_env=None, ingress_env=None, local=True):
        self.local = local
        if not local:
            self.name, self.label = self.SPLIT_NAME, self.SPLIT_LABEL
        self.admin_key = "adm-" + secrets.token_hex(16)
        self.tmp = tempfile.mkdtemp(prefix="bench-gw-")
        self.db = None
        self.procs = {}
        try:
            self.db = Postgres().start()
            usage_ep = f"tcp://127.0.0.1:{harness.free_port()}"
            control_ep = f"tcp://127.0.0.1:{harness.free_port()}"
            jobs_ep = f"tcp://127.0.0.1:{harness.free_port()}"
            self.port = harness.free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._start(bin_dir, "accounting", {"DATABASE_URL": self.db.dsn, "GW_ACCOUNTING_BIND": usage_ep,
                                                "GW_CONTROL_BIND": control_ep, "GW_PRICES": PRICES})
            self._wait(lambda: self.db.psql("SELECT to_regclass('api_keys') IS NOT NULL").strip() == "t",
                       "accounting's migration")
            self._start(bin_dir, "alerter", {"GW_CONTROL_ENDPOINTS": control_ep, "GW_ALERT_SPEND_LIMIT_DAY": "100",
                                             "GW_ALERT_SPEND_LIMIT_MONTH": "2000"})
            ingress = dict({"GW_HTTP_PORT": str(self.port), "GW_JOBS_BIND": jobs_ep, "GW_AUTH": "keys",
                            "GW_CONTROL_ENDPOINTS": control_ep, "GW_ADMIN_KEY": self.admin_key,
                            "GW_PRICES": PRICES}, **(ingress_env or {}))
            # The id make run gives its first dispatcher, in either layout.
            dispatcher = dict({"GW_ACCOUNTING_ENDPOINTS": usage_ep, "GW_SPOOL_DIR": os.path.join(self.tmp, "spool"),
                               "GW_PRICES": PRICES, "DEEPSEEK_API_KEY": mock.key,
                               "GW_PROVIDER_DEEPSEEK_BASE_URL": mock.url, "GW_DISPATCHER_ID": "dispatcher-1"},
                              **(dispatcher_env or {}))
            if local:
                # One process reads both environments: a variable both services read
                # (GW_PRICES, GW_CURRENCY, GW_HEARTBEAT_MS) can hold only one value.
                clash = sorted(k for k in ingress.keys() & dispatcher.keys() if ingress[k] != dispatcher[k])
                if clash:
                    raise ValueError(f"the local dispatcher shares the ingress's environment: {', '.join(clash)} "
                                     "differ between ingress_env and dispatcher_env")
                self._start(bin_dir, "ingress", dict(ingress, **dispatcher, GW_LOCAL_DISPATCHER="1"),
                            self.url + "/health")
            else:
                # Set, not left to the ingress's default, so that the layout does not
                # depend on what that default is.
                self._start(bin_dir, "ingress", dict(ingress, GW_LOCAL_DISPATCHER="0"), self.url + "/health")
                self._start(bin_dir, "dispatcher", dict(dispatcher, GW_INGRESS_ENDPOINTS=jobs_ep))
            self._wait(lambda: harness.http("GET", self.url + "/ready")[0] == 200, "ingress /ready")
            st, _, raw = harness.http("POST", self.url + "/admin/keys", {"name": "bench-unlimited"},
                                      {"Authorization": f"Bearer {self.admin_key}"}, timeout=20)
            if st != 201:
                raise RuntimeError(f"creating the gateway key: {st} {raw[:300]!r}")
            self.key = json.loads(raw)["key"]
            self.headers = {"Authorization": f"Bearer {self.key}"}
        except BaseException:
            self.stop()
            raise

    def _start(self, bin_dir, name, env, ready_url=None):
        # As make run and the container image start the services (docs/operations.md, "Memory").
        env = dict(env, GNUTLS_NO_IMPLICIT_INIT="1")
        self.procs[name] = harness.start(name, [os.path.join(bin_dir, name)], env, ready_url=ready_url, timeout=20)

    @staticmethod
    def _wait(predicate, what, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def pid(self, name):
        """The process that runs service name: in the local layout the dispatcher's is
        the ingress's (sum over services() rather than over names, or it counts twice)."""
        if name == "dispatcher" and self.local:
            name = "ingress"
        return self.procs[name].proc.pid

    def services(self):
        """{part: pid} of the services' processes, PostgreSQL aside: "ingress (with its
        dispatcher)", accounting and alerter in the local layout; ingress, dispatcher,
        accounting and alerter in the split one."""
        return {self.LOCAL_INGRESS if name == "ingress" and self.local else name: p.proc.pid
                for name, p in self.procs.items()}

    def front(self):
        """The pids that carry the requests and streams (ingress and dispatcher), each
        once: one in the local layout, two in the split one."""
        return list(dict.fromkeys([self.pid("ingress"), self.pid("dispatcher")]))

    def front_label(self):
        return self.LOCAL_INGRESS if self.local else "ingress + dispatcher"

    def roots(self):
        return [p.proc.pid for p in self.procs.values()] + [self.db.pid]

    def parts(self):
        parts = {part: [pid] for part, pid in self.services().items()}
        parts["postgres"] = [self.db.pid]
        return parts

    def usage_rows(self):
        return int(self.db.psql("SELECT count(*) FROM usage_events").strip())

    def cache_rows(self):
        """Usage rows marked as answered from the cache."""
        return int(self.db.psql("SELECT count(*) FROM usage_events WHERE cached").strip())

    def stop(self):
        """Stop in make run's order (in the local layout the ingress stops its dispatcher
        itself); a service that stops badly is reported, not fatal."""
        problems = []
        for name in ("ingress", "dispatcher", "alerter", "accounting"):
            proc = self.procs.get(name)
            if proc:
                try:
                    proc.stop(timeout=30)
                except AssertionError as e:
                    problems.append(str(e).split("\n")[0])
        if self.db:
            self.db.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)
        for p in problems:
            say("warning:", p)


class CachedGateway:
    """Our gateway answering from its response cache: the very stack of a Gateway (the
    same processes, key and port), its requests asking for the cache. Not a stack of its
    own: stop() leaves the gateway to its owner. Start the gateway with a cache TTL
    longer than the run (GW_CACHE_TTL_S of the ingress), so that no entry expires
    between two points."""
    name = "gateway-cache"
    label = "gateway (cache hit)"
    CACHE_HEADERS = {"X-Gateway-Cache": "use"}

    def __init__(self, gateway):
        self.gateway = gateway
        self.url = gateway.url
        self.headers = dict(gateway.headers, **self.CACHE_HEADERS)

    def roots(self):
        return self.gateway.roots()

    def parts(self):
        return self.gateway.parts()

    def usage_rows(self):
        return self.gateway.usage_rows()

    def stop(self):
        pass
