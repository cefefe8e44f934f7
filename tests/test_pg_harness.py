"""The private PostgreSQL cluster of tests/pg.py: start, restart, crash, destroy."""

import os
import subprocess
import time

from pg import Postgres, _bin


def _wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_pg_lifecycle():
    db = Postgres()
    try:
        db.start()
        assert db.running and db.pid
        assert db.dsn == f"host=127.0.0.1 port={db.port} user=postgres dbname=gateway"
        assert db.psql("SHOW fsync").strip() == "on"
        assert db.psql("SHOW synchronous_commit").strip() == "on"
        assert db.psql("SELECT current_database()").strip() == "gateway"
        db.psql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'one')")

        # clean stop, then start on the same directory and port
        port = db.port
        db.stop()
        assert not db.running and db.pid is None
        try:
            db.psql("SELECT 1")
            raise AssertionError("psql worked against a stopped server")
        except RuntimeError:
            pass
        db.start()
        assert db.port == port
        assert db.psql("SELECT id, note FROM t").strip() == "1|one"

        # crash with one committed and one open transaction: only the committed row survives
        db.psql("INSERT INTO t VALUES (2, 'two')")
        open_tx = subprocess.Popen([_bin("psql"), "-XAtq", "-d", db.dsn], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        try:
            open_tx.stdin.write("BEGIN; INSERT INTO t VALUES (3, 'never committed');\n")
            open_tx.stdin.flush()
            assert _wait_for(lambda: db.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'").strip() == "1")
            old_pid = db.pid
            db.kill9()
            assert not db.running
            db.start()
            assert db.pid != old_pid
        finally:
            open_tx.kill()
            open_tx.wait()
        assert db.psql("SELECT id FROM t ORDER BY id").split() == ["1", "2"]
        assert "database system was interrupted" in db.log() or "not properly shut down" in db.log()

        # only the postmaster killed: start() waits for the orphaned children
        db.psql("INSERT INTO t VALUES (4, 'four')")
        db.kill9(children=False)
        db.start()
        assert db.psql("SELECT count(*) FROM t").strip() == "3"

        # immediate shutdown also recovers
        db.stop("immediate")
        db.start()
        assert db.psql("SELECT count(*) FROM t").strip() == "3"

        path = db.dir
        assert os.path.isdir(path)
    finally:
        db.destroy()
    assert not os.path.exists(path)
    assert not db.running
    db.destroy()  # idempotent

    # context manager form
    with Postgres(dbname="other") as db2:
        assert db2.psql("SELECT current_database()").strip() == "other"
        path2 = db2.dir
    assert not os.path.exists(path2)
