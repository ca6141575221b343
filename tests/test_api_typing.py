"""mypy (pinned in requirements.txt) is clean on the public API modules listed in pyproject.toml [tool.mypy].

The cache lives in the system's temporary folder, so only the first run on a machine analyses torch's
types (tens of seconds); later runs take a second or two."""
from __future__ import annotations

import getpass
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_mypy_clean():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -r requirements.txt)")
    cache = Path(tempfile.gettempdir()) / f"disparse-mypy-cache-{getpass.getuser()}"
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-color-output"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in" in done.stdout
