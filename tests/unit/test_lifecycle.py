"""Lifecycles: what opens is closed by its owner, and a durable database left open is closed
cleanly when its program ends."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import arrwdb

PROGRAM = textwrap.dedent(
    """
    import sys
    import arrwdb

    db = arrwdb.open(sys.argv[1])
    lib = db.create_library("left-open", index="hnsw", dimension=3)
    lib.add_document(title="a", chunks=[{"text": "x", "embedding": [1.0, 0.0, 0.0]}])
    print(lib.id)
    """
)


def test_a_durable_database_left_open_is_closed_at_exit_with_its_index_saved(
    tmp_path: Path,
) -> None:
    """Before: leaving the program without ``db.close()`` printed a ``NameError: name 'open'``
    traceback at interpreter exit, and the saved index was lost (rebuilt on the next open)."""
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(data)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    library_id = done.stdout.strip()
    saves = [p.name for p in (data / "indexes" / library_id).iterdir()]
    assert saves == ["1"]  # complete (a failed save leaves a .tmp)
    with arrwdb.open(str(data)) as db:  # opens: the directory lock was released
        assert db.get_library("left-open").search([1.0, 0.0, 0.0], k=1)[0].text == "x"


def test_a_handle_keeps_its_database_open(tmp_path: Path) -> None:
    lib = arrwdb.open(str(tmp_path / "data")).create_library("kept", dimension=3)
    gc.collect()  # the database object itself is gone: the handle keeps it open
    lib.add_document(title="a", chunks=[{"text": "x", "embedding": [1.0, 0.0, 0.0]}])
    assert lib.document_count == 1


def test_closing_twice_is_harmless(tmp_path: Path) -> None:
    db = arrwdb.open(str(tmp_path / "data"))
    db.close()
    db.close()
    with arrwdb.open(str(tmp_path / "data")) as again:
        assert again.list_libraries() == []
