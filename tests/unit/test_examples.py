"""The runnable examples in docs/examples run as written, each in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def run(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an example against this checkout's ``src`` (whatever the installed arrwdb is)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.mark.parametrize("name", ["inprocess_sync.py", "inprocess_async.py"])
def test_example_runs_as_written(name: str, tmp_path: Path) -> None:
    proc = run(name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("library.created" in line for line in lines)
    assert any("document.deleted" in line for line in lines)
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize("name", ["client_sync.py", "client_async.py"])
def test_client_example_runs_as_written(name: str, tmp_path: Path) -> None:
    proc = run(name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("document.added" in line for line in lines)
    assert any("document.deleted" in line for line in lines)


def test_the_data_calls_example_runs_as_written(tmp_path: Path) -> None:
    proc = run("data_calls.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "['n3', 'n1'] None"
    assert "3 1" in lines
    assert "{'seen': True}" in lines
    assert lines[-2:] == ["7 document.deleted n3", "8 document.deleted n1"]


def test_the_embedders_example_runs_as_written(tmp_path: Path) -> None:
    proc = run("embedders.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "lexical (hashing, 384-d): markets",
        "mine (topics, 4-d): markets",
        "vectors: given",
    ]


def test_the_watches_example_runs_as_written(tmp_path: Path) -> None:
    proc = run("watches.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ready ['east', 'north-east'] at change 5",
        "6.0 left north-east rank 1 (outranked)",
        "6.1 entered east-2 rank 0",
        "both caused by change 6",
        "7.0 match sky score 0.995",
        "8.0 left east rank 1 (deleted)",
        "8.1 entered north-east rank 1",
        "resumed after 5: ['6.0', '6.1', '8.0', '8.1']",
        "closed: watch_deleted",
        "the client saw the same events",
        "async: watch.ready watch.entered",
    ]
