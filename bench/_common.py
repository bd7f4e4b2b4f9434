"""Shared helpers of the benchmarks: data, timing, machine facts, a Markdown table, JSON output.

Every benchmark measures arrwDB and its floor side by side, in the same process, on the same data,
so the ratios hold whatever the machine's absolute speed. Absolute figures are context only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

RESULTS_DIR = Path(__file__).resolve().parent / "results"

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    vectors: F32  # (n, dim), float32, C-contiguous
    queries: F32  # (n_queries, dim): fresh points of the same distribution, not in ``vectors``


def clustered(
    n: int,
    dim: int,
    n_queries: int,
    *,
    clusters: int = 100,
    intrinsic: int = 32,
    noise: float = 0.05,
    seed: int = 42,
) -> Dataset:
    """Synthetic embeddings: ``clusters`` centres, each point its centre plus a spread in an
    ``intrinsic``-dimensional subspace (as real embeddings have far fewer degrees of freedom
    than coordinates) plus a little isotropic noise. Same seed, same data."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((intrinsic, dim), dtype=np.float32) / np.sqrt(intrinsic)

    def draw(count: int) -> F32:
        which = rng.integers(0, clusters, size=count)
        spread = rng.standard_normal((count, intrinsic), dtype=np.float32) @ basis
        out = centres[which] + spread
        out += noise * rng.standard_normal((count, dim), dtype=np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)

    return Dataset(vectors=draw(n), queries=draw(n_queries))


def normalised(x: F32) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: F32 = (x / np.maximum(norms, np.float32(1e-30))).astype(np.float32)
    return out


def exact_top_k(vectors: F32, queries: F32, k: int, *, block: int = 256) -> I64:
    """Row indices of the exact ``k`` nearest by cosine (the ground truth), best first."""
    v = normalised(vectors)
    q = normalised(queries)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        scores = q[s : s + block] @ v.T
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: I64, truth: I64) -> float:
    """Mean fraction of the true ``k`` nearest among those found (``-1`` pads count as misses)."""
    k = int(truth.shape[1])
    hits = sum(
        len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return float(hits) / (k * len(truth))


# -- timing ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took, and what it returned."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(fns: Sequence[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """Run each of ``fns`` ``repeats`` times, interleaved (a, b, a, b, ...) so that a change in
    machine load hits every contender alike; keep each one's fastest time and its last result."""
    best: list[tuple[float, Any]] = [(float("inf"), None)] * len(fns)
    for r in range(max(1, repeats)):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            seconds, result = timed(fns[i])
            best[i] = (min(best[i][0], seconds), result)
    return best


# -- reporting -------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The facts that the absolute figures depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas: Any = None
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")  # optional
        blas = [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpoolctl.threadpool_info()
            if i.get("user_api") == "blas"
        ]
    except ImportError:
        try:
            config = np.show_config(mode="dicts")
            blas = config["Build Dependencies"]["blas"]["name"]
        except Exception:
            blas = "unknown"
    import hnswlib  # noqa: F401  (only to record that it is there)

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg_1min": os.getloadavg()[0],
        "platform": platform.platform(),
    }


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` (with the machine and the time) to ``bench/results/<name>-<ts>.json``
    and to ``<name>-latest.json`` beside it."""
    folder = out_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "benchmark": name,
        "when": stamp,
        "git": git_revision(),
        "argv": sys.argv[1:],
        "machine": machine(),
        **payload,
    }
    text = json.dumps(doc, indent=2, default=_jsonable)
    path = folder / f"{name}-{stamp}.json"
    path.write_text(text + "\n", encoding="utf-8")
    (folder / f"{name}-latest.json").write_text(text + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=42, help="data seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (best kept)")
    parser.add_argument("--out", type=Path, default=None, help="JSON folder (bench/results)")
    return parser


def warn_if_busy(limit: float = 0.5) -> float:
    """The 1-minute load average, with a warning when other work competes for the cores: the
    ratios are measured interleaved (best of the repeats) to resist it, but absolute figures
    and hnswlib's multi-threaded build times move with it."""
    load = os.getloadavg()[0]
    if load > limit:
        log(f"warning: load average {load:.2f} before the run: figures will be noisy")
    return load


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_and_report(
    name: str,
    run: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    out_dir: Path | None = None,
) -> int:
    """A benchmark's ``main``: warn on a busy machine, run it, print its Markdown report and
    write the JSON (with the report and the load average before and after)."""
    load = warn_if_busy()
    total, result = timed(run)
    result["loadavg_before"] = load
    result["loadavg_after"] = os.getloadavg()[0]
    result["seconds"] = total
    text = report(result)
    print(text)
    path = write_json(name, result | {"markdown": text}, out_dir)
    log(f"done in {total:.0f} s; JSON: {path}")
    return 0
