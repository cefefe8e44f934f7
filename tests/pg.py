"""A private, throwaway PostgreSQL 15 cluster for integration tests.

Python 3 standard library only.

    from pg import Postgres
    with Postgres() as db:                 # initdb + start + CREATE DATABASE gateway
        db.psql("CREATE TABLE t (x int)")
        env["DATABASE_URL"] = db.dsn       # host=127.0.0.1 port=N user=postgres dbname=gateway
        db.stop()                          # "fast" by default; "smart" / "immediate" too
        db.start()                         # same data directory, same port
        db.kill9()                         # SIGKILL the postmaster and its children (a crash)
        db.start()                         # crash recovery; committed rows are there
    # leaving the block destroys it: stopped and the directory removed

API of Postgres(dbname="gateway", env=None):  (env: added to the server's environment)
  start()            first call: initdb (trust auth, UTF8, --no-sync) into a fresh
                     directory under /tmp, pick a free port on 127.0.0.1, start, create
                     the database; later calls: start the same cluster again on the same
                     port (after stop() or kill9(): recovery runs). Returns self. No-op
                     when already running.
  stop(mode="fast")  smart | fast | immediate; waits for the postmaster to exit.
  kill9(children=True)
                     SIGKILL the postmaster (by pid) and, by default, every process it
                     forked (like a power loss, no shutdown checkpoint). With
                     children=False only the postmaster dies; start() then waits for the
                     orphaned backends to go away before the new postmaster can start.
  destroy()          stop (fast, SIGKILL if that hangs) and remove the directory.
  psql(sql, dbname=None) -> stdout
                     runs psql -XAtq -v ON_ERROR_STOP=1 with the SQL on stdin; raises
                     RuntimeError (with stderr) on failure. Rows come back one per line,
                     columns separated by "|".
  dsn, url           "host=127.0.0.1 port=N user=postgres dbname=gateway" /
                     "postgresql://postgres@127.0.0.1:N/gateway"
  dsn_for(dbname), url_for(dbname)
  port, host, user, dbname, dir, data_dir, socket_dir, log_path, pid (postmaster pid
  or None), running, log() (the server log text)

Settings: fsync=on, synchronous_commit=on and full_page_writes=on are kept (the
tests check durability through crashes); wal_level=minimal, no log_checkpoints, jit
off, max_connections=100, timezone UTC. The server is only reachable on
127.0.0.1:port and on a unix socket in socket_dir.

Users: PostgreSQL refuses to run as root. As root, the directory is chown'ed to the
`postgres` system user and initdb/postgres run through `runuser -u postgres --`
(fallback: `su postgres -s /bin/sh -c`); otherwise everything runs as the current
user. The database superuser is always called `postgres`. psql runs as the caller
(it connects over TCP with trust auth).

Speed (this machine): initdb about 1.0 s, start 0.1 s, CREATE DATABASE 0.3 s; stop,
restart and crash recovery about 0.2 s each. (Copying a per-process initdb template
was tried and dropped: file creation dominates here, so a copy costs as much as initdb.)
Clusters still running when the process exits are destroyed (atexit).

Environment: GW_PG_BIN (default /usr/lib/postgresql/15/bin), GW_PG_KEEP=1 keeps
destroyed directories (for post-mortems; the cluster is still stopped).
"""

import atexit
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# below the ephemeral range, so no client connection takes it first (harness.py)
from harness import free_port as _free_port

PG_BIN = os.environ.get("GW_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # the system user (when root) and the database superuser

TEST_CONF = """\
# written by tests/pg.py
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 100
# durability stays on: tests crash the server and expect committed rows back
fsync = on
synchronous_commit = on
full_page_writes = on
# speed for a throwaway cluster
wal_level = minimal
max_wal_senders = 0
archive_mode = off
max_wal_size = 1GB
checkpoint_timeout = 30min
shared_buffers = 128MB
huge_pages = off
jit = off
# logs go to stderr, which is the log file
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] '
log_checkpoints = off
lc_messages = 'C'
timezone = 'UTC'
log_timezone = 'UTC'
"""

_live = set()  # clusters with a directory, destroyed at exit if the caller did not


def _is_root():
    return os.geteuid() == 0


def _pg_ids():
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError(f"running as root but there is no '{PG_USER}' system user "
                           "(install the postgresql package)") from None
    return entry.pw_uid, entry.pw_gid


def _as_pg(argv):
    """argv run as the postgres user when we are root, unchanged otherwise."""
    if not _is_root():
        return list(argv)
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser") if os.access(p, os.X_OK)), None)
    if runuser:
        return [runuser, "-u", PG_USER, "--"] + list(argv)
    su = shutil.which("su") or "/bin/su"
    return [su, PG_USER, "-s", "/bin/sh", "-c", "exec " + shlex.join(argv)]


def _chown_pg(path):
    if _is_root():
        uid, gid = _pg_ids()
        os.chown(path, uid, gid)


def _bin(name):
    path = os.path.join(PG_BIN, name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} not found: install PostgreSQL 15 (Debian package postgresql) "
                           "or set GW_PG_BIN")
    return path


def _env():
    # no PGHOST, PGOPTIONS, PGDATA... of the caller's: every setting here is explicit
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _base_tmp():
    # As root the directory must be reachable by the postgres user: /tmp (mode 1777)
    # always is, $TMPDIR may not be.
    return "/tmp" if _is_root() else tempfile.gettempdir()


def _procs_in(directory):
    """Live pids whose working directory is directory (every PostgreSQL server process
    chdirs to its data directory, so this finds a cluster's processes, orphans too)."""
    out = []
    target = os.path.realpath(directory)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/cwd") == target and not _gone(int(name)):
                out.append(int(name))
        except OSError:
            continue
    return out


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def _gone(pid):
    """True when pid no longer exists or is a zombie (it holds no resources then)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X")


class Postgres:
    def __init__(self, dbname="gateway", env=None):
        self.dbname = dbname
        self.extra_env = dict(env or {})  # added to the server's environment (e.g. libfaketime)
        self.host = "127.0.0.1"
        self.user = PG_USER
        self.port = None
        self.dir = None
        self._proc = None   # our child: postgres itself, or runuser/su around it
        self._pid = None    # the postmaster
        self._created = False

    # -- paths and addresses -------------------------------------------------
    @property
    def data_dir(self):
        return os.path.join(self.dir, "data") if self.dir else None

    @property
    def socket_dir(self):
        return os.path.join(self.dir, "run") if self.dir else None

    @property
    def log_path(self):
        return os.path.join(self.dir, "postgresql.log") if self.dir else None

    def dsn_for(self, dbname):
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def url_for(self, dbname):
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def dsn(self):
        return self.dsn_for(self.dbname)

    @property
    def url(self):
        return self.url_for(self.dbname)

    @property
    def pid(self):
        return self._pid if self.running else None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    # -- lifecycle -----------------------------------------------------------
    def _init(self):
        self.dir = tempfile.mkdtemp(prefix="gw-pg-", dir=_base_tmp())
        os.chmod(self.dir, 0o755)  # mkdtemp makes it 0700; the data directory itself stays 0700
        _chown_pg(self.dir)
        _live.add(self)
        os.mkdir(self.socket_dir, 0o755)
        _chown_pg(self.socket_dir)
        proc = subprocess.run(
            _as_pg([_bin("initdb"), "-D", self.data_dir, "-A", "trust", "-U", PG_USER, "-E", "UTF8",
                    "--locale=C", "--no-sync", "--no-instructions"]),
            cwd=self.dir, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as f:
            f.write("\ninclude 'gw-test.conf'\n")

    def _write_conf(self):
        path = os.path.join(self.data_dir, "gw-test.conf")
        with open(path, "w") as f:
            f.write(TEST_CONF.format(port=self.port, socket_dir=self.socket_dir.replace("'", "''")))
        _chown_pg(path)

    def _spawn(self, timeout):
        """Start the postmaster and wait until it accepts connections.

        Returns None on success, or the log text added by this attempt on failure."""
        log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            if _is_root():
                os.fchown(log.fileno(), *_pg_ids())
            self._proc = subprocess.Popen(
                _as_pg([_bin("postgres"), "-D", self.data_dir]),
                cwd=self.dir, env={**_env(), **self.extra_env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)  # a Ctrl-C at the terminal is for the test, not for it
        pidfile = os.path.join(self.data_dir, "postmaster.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with open(pidfile) as f:
                    lines = f.read().split("\n")
            except OSError:
                lines = []
            # line 1: pid, line 8: status ("ready" once it accepts connections). After
            # a SIGKILL the old file still says "ready": only trust our postmaster's.
            if len(lines) >= 8 and lines[7].strip() == "ready" and lines[0].strip().isdigit():
                pid = int(lines[0])
                if self._descends(pid):
                    self._pid = pid
                    return None
            time.sleep(0.01)
        if self._proc.poll() is None:  # did not become ready in time
            pid = self._read_pid()
            if pid:
                self._kill_tree(pid)
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        with open(self.log_path, "rb") as f:
            f.seek(log_start)
            return f.read().decode("utf-8", "replace") or "(no log output)"

    def _descends(self, pid):
        """pid is our child process or below it (runuser/su sit in between as root)."""
        for _ in range(4):
            if pid == self._proc.pid:
                return True
            pid = _ppid(pid)
            if not pid:
                return False
        return False

    def _read_pid(self):
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def start(self, timeout=60):
        if self.running:
            return self
        first = self.dir is None
        if first:
            self._init()
        attempts = 0
        deadline = time.monotonic() + timeout
        while True:
            attempts += 1
            if first and (self.port is None or attempts > 1):
                self.port = _free_port()
                self._write_conf()
            failure = self._spawn(max(1.0, deadline - time.monotonic()))
            if failure is None:
                break
            port_taken = "could not bind" in failure or "Address already in use" in failure
            # after kill9(children=False): orphaned backends still hold the old shared memory
            orphans = "is still in use" in failure or ("lock file" in failure and "already exists" in failure)
            if time.monotonic() < deadline and ((first and port_taken and attempts < 10) or orphans):
                time.sleep(0.05 if port_taken else 0.2)
                continue
            raise RuntimeError(f"postgres did not start (data {self.data_dir}, port {self.port}):\n"
                               + failure[-4000:])
        if not self._created:
            self.psql(f'CREATE DATABASE "{self.dbname}"', dbname="postgres")
            self._created = True
        return self

    def _kill_tree(self, pid):
        """SIGKILL the postmaster pid, then every process still running in the data
        directory (its children, including any forked at the last moment); wait until
        they are gone. (No SIGSTOP first: runuser would stop itself to mirror it.)"""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            victims = [p for p in _procs_in(self.data_dir) if p != pid] + ([] if _gone(pid) else [pid])
            if not victims:
                return
            for victim in victims:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"postgres processes in {self.data_dir} survived SIGKILL: {victims}")

    def stop(self, mode="fast", timeout=60):
        """Shut down (smart: wait for clients; fast: roll back and disconnect them;
        immediate: no checkpoint, recovery on the next start)."""
        if not self.running:
            self._proc = None
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        try:
            os.kill(self._pid, sig)
        except ProcessLookupError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise RuntimeError(f"postgres did not stop ({mode}) within {timeout} s; killed")
        self._proc = None

    def kill9(self, children=True):
        """SIGKILL the postmaster (and by default all its children): a crash."""
        if not self.running:
            return
        if children:
            self._kill_tree(self._pid)
        else:
            os.kill(self._pid, signal.SIGKILL)
        self._proc.wait(10)
        self._proc = None

    def destroy(self):
        if self.dir is None:
            return
        try:
            if self.running:
                try:
                    self.stop("fast", timeout=30)
                except Exception:
                    if self.running:
                        self.kill9()
        finally:
            if os.environ.get("GW_PG_KEEP") == "1":
                print(f"pg.py: kept {self.dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
            _live.discard(self)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc):
        self.destroy()

    # -- client --------------------------------------------------------------
    def psql(self, sql, dbname=None, timeout=60):
        """Run SQL (one or more statements, each in its own transaction unless the SQL
        says BEGIN/COMMIT) with psql; returns its stdout; RuntimeError on any error."""
        env = _env()
        env["PGCONNECT_TIMEOUT"] = "10"
        proc = subprocess.run(
            [_bin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(dbname or self.dbname), "-f", "-"],
            input=sql, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}\nSQL: {sql[:500]}")
        return proc.stdout


@atexit.register
def _destroy_all():
    for db in list(_live):
        db.destroy()


if __name__ == "__main__":
    t0 = time.monotonic()
    with Postgres() as db:
        t1 = time.monotonic()
        print(f"started in {t1 - t0:.2f} s: {db.dsn} (dir {db.dir}, postmaster {db.pid})")
        print(db.psql("SELECT version(); SHOW fsync; SHOW synchronous_commit; SHOW max_connections;"
                      " SHOW server_encoding; SELECT current_user").strip())
        db.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        t2 = time.monotonic()
        db.stop()
        db.start()
        print(f"stop + start: {time.monotonic() - t2:.2f} s")
        t3 = time.monotonic()
        db.kill9()
        db.start()
        print(f"kill9 + start (recovery): {time.monotonic() - t3:.2f} s")
        assert db.psql("SELECT sum(x) FROM t").strip() == "3"
        path = db.dir
    assert not os.path.exists(path)
    print(f"destroyed; total {time.monotonic() - t0:.2f} s")
