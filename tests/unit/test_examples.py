"""The runnable examples in docs/examples run as written, each in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.parametrize("name", ["inprocess_sync.py", "inprocess_async.py"])
def test_example_runs_as_written(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("library.created" in line for line in lines)
    assert any("document.deleted" in line for line in lines)
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize("name", ["client_sync.py", "client_async.py"])
def test_client_example_runs_as_written(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("document.added" in line for line in lines)
    assert any("document.deleted" in line for line in lines)
