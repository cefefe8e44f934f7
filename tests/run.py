#!/usr/bin/env python3
"""Test runner: module selftests, then every test_* function of tests/test_*.py.

Usage: tests/run.py [--bin DIR] [-k SUBSTRING]
Prints one PASS/FAIL line per test and, last, "N passed, N failed"; exits 1 on
any failure. --bin picks the build to test (bin/ or bin-asan/).
"""

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="bin")
    parser.add_argument("-k", default="", help="only tests whose name contains this")
    args = parser.parse_args()
    bin_dir = os.path.abspath(os.path.join(ROOT, args.bin))
    os.environ["GW_BIN_DIR"] = bin_dir
    os.environ["MOCK_BIN"] = os.path.join(bin_dir, "mock-upstream")
    sys.path.insert(0, HERE)
    # Every file a test makes without naming a directory (stacks' usage logs,
    # processes' logs, kept after a kill) goes under one directory per run:
    # removed when everything passed, kept and named when something failed.
    run_tmp = tempfile.mkdtemp(prefix="gw-run-")
    tempfile.tempdir = run_tmp
    passed = failed = 0

    if not args.k or "selftest" in args.k:
        for cmd in ([os.path.join(bin_dir, "gw-selftest")], [os.path.join(bin_dir, "mock-upstream"), "--selftest"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            lines = re.findall(r"^(PASS|FAIL) selftest (\S+)$", proc.stdout, re.M)
            for verdict, name in lines:
                print(f"{verdict} selftest {name}", flush=True)
                passed += verdict == "PASS"
                failed += verdict == "FAIL"
            if not lines:
                ok = proc.returncode == 0
                print(f"{'PASS' if ok else 'FAIL'} selftest {os.path.basename(cmd[0])}", flush=True)
                passed += ok
                failed += not ok
            if proc.returncode and not any(v == "FAIL" for v, _ in lines):
                failed += 1
                print(f"FAIL {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    for path in sorted(glob.glob(os.path.join(HERE, "test_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for fname in sorted(n for n in dir(module) if n.startswith("test_")):
            full = f"{name}.{fname}"
            if args.k and args.k not in full:
                continue
            started = time.monotonic()
            try:
                getattr(module, fname)()
                passed += 1
                print(f"PASS {full} ({time.monotonic() - started:.1f}s)", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {full} ({time.monotonic() - started:.1f}s)\n{traceback.format_exc()}", flush=True)

    if failed:
        print(f"this run's files and logs are kept in {run_tmp}")
    else:
        shutil.rmtree(run_tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
