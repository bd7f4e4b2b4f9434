"""The minilm model for the tests: skips the tests that need it when the ``embed`` extra is
not installed (or fails them, when ``ARRWDB_REQUIRE_SERVICES=1``, as on CI)."""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'arrwdb[embed]')"
    from arrwdb.adapters.embedders.minilm import model_files
    from arrwdb.domain.errors import InvalidArgumentError

    try:
        model_files()
    except InvalidArgumentError as exc:
        return str(exc)
    return None


def require() -> None:
    """Skip (or fail, where services are required) unless the minilm embedder can run."""
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("ARRWDB_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
