"""The official openai Node SDK (tests/sdk, installed by `make deps`) against a real stack."""

import os
import subprocess

from test_gateway import Stack

SDK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")


def test_openai_node_sdk():
    assert os.path.isdir(os.path.join(SDK_DIR, "node_modules", "openai")), \
        "tests/sdk/node_modules missing: run `make deps`"
    with Stack() as s:
        proc = subprocess.run(["node", os.path.join(SDK_DIR, "check.mjs"), s.url + "/v1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert '"ok":true' in proc.stdout
