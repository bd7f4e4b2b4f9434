"""Live queries at scale: what registered watches cost the writer, and how soon their events arrive.

    python bench/watch_bench.py                              # 10 / 1,000 / 10,000 watches (~4 min)
    python bench/watch_bench.py --watches 10,1000 --n 20000  # a quick look (~30 s)
    python bench/watch_bench.py --store disk                 # a durable store
    python bench/watch_bench.py --index flat                 # an exact (flat) library
    python bench/watch_bench.py --profile                    # + where the watch time goes

One library per configuration (no watches, then each count in ``--watches``, then each count in
``--mixed`` with ``--match-fraction`` match watches), all in one database, each preloaded with the
same ``--n`` random normal vectors (float32, fixed seed; batches of 10,000) before its watches are
registered with ``lib.watch(vector, k=10)`` (random normal queries). The measured ingest adds the
same ``--batches`` batches of ``--batch`` single-chunk documents (``lib.add_documents`` with
vectors) to every library, **interleaved**: ``--segment`` batches back to back into one library,
then the next, so that load from other work on the machine hits every configuration alike.

* **Throughput**: chunks per second from the median time of one ``add_documents`` call; the
  ratio is against the library without watches, in the same run.
* **Latency**: ``--listeners`` sampled watches of each configuration each have a listener thread
  reading ``w.events()``. For a (watch, write) pair the latency is from just before the
  ``add_documents`` call starts to the listener reading the first event the write caused for that
  watch (``time.perf_counter`` both; events are matched to writes by their ``event_id``, the
  position of the change). It includes the write's own work (the commit and the apply of its
  1,000 documents) since the watch events are built before the write returns; "after return" is
  the same reading minus the moment ``add_documents`` returned (negative: read before the writer
  got its answer).

Targets: 1,000 watches cost at most 10% of the ingest throughput (ratio >= 0.90), 10,000 at most
50% (ratio >= 0.50); p99 latency <= 100 ms at 1,000 watches. Prints a Markdown table and writes
JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arrwdb
from _common import F32, log, markdown_table, run_and_report

#: (watches, ratio at least, p99 ms at most) per configuration name
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "1,000 top-k": (0.90, 100.0),
    "10,000 top-k": (0.50, None),
}
EVENT_TYPES = ("watch.entered", "watch.left", "watch.match")
#: the engine's parts the profile times
AFTER = "after_batch: all the watch work of a write"
STEPS = "· the batch's steps"
VIEW = "· the batch's columns (labels)"
TOUCHED = "· touched watches: get_vectors, product, maxima, compare"
VECTORS = "· · get_vectors"
PRODUCT = "· · the product (BLAS)"
WALK = "· walks of the touched watches"
PUBLISH = "· their events handed to the feeds"
OTHER = "· the rest (bars, touched set, loops over the watches)"


@dataclass
class Config:
    name: str
    watches: int
    match: int  # how many of them are match watches
    lib: Any = None
    handles: list[Any] = field(default_factory=list)
    listeners: list[threading.Thread] = field(default_factory=list)
    #: (perf_counter when read, sampled watch number, change position) of every event read
    received: list[tuple[float, int, int]] = field(default_factory=list)
    #: (start, end, first position, last position) of every measured write
    writes: list[tuple[float, float, int, int]] = field(default_factory=list)
    register_s: float = 0.0


def _documents(vectors: F32, tag: str) -> list[dict[str, Any]]:
    return [{"title": tag, "chunks": [{"text": tag, "embedding": v}]} for v in vectors]


def _listen(handle: Any, number: int, sink: list[tuple[float, int, int]]) -> None:
    clock = time.perf_counter
    for event in handle.events():  # ends when the handle is closed (a stream.closed last)
        if event.type in EVENT_TYPES:
            sink.append((clock(), number, int(event.data["event_id"])))


def _prepare(
    db: arrwdb.Database,
    config: Config,
    args: argparse.Namespace,
    preload: F32,
    queries: F32,
    rng: np.random.Generator,
) -> None:
    lib = db.create_library(
        f"w{config.name}".replace(" ", "-").replace(",", ""),
        index=args.index,
        dimension=args.dim,
        embedder=None,
    )
    started = time.perf_counter()
    for s in range(0, len(preload), 10_000):
        lib.add_documents(_documents(preload[s : s + 10_000], "p"))
    loaded = time.perf_counter() - started
    config.lib = lib
    started = time.perf_counter()
    for i in range(config.watches):
        if i < config.match:
            config.handles.append(lib.watch(queries[i], k=None, threshold=args.threshold))
        else:
            config.handles.append(lib.watch(queries[i], k=args.k))
    config.register_s = time.perf_counter() - started
    sample = rng.choice(config.watches, size=min(args.listeners, config.watches), replace=False)
    for number in sorted(sample.tolist()):
        thread = threading.Thread(
            target=_listen,
            args=(config.handles[number], number, config.received),
            daemon=True,
        )
        thread.start()
        config.listeners.append(thread)
    log(
        f"{config.name}: {len(preload):,} loaded in {loaded:.1f} s, {config.watches:,} watches "
        f"registered in {config.register_s:.1f} s, {len(config.listeners)} listeners"
    )


def _write(db: arrwdb.Database, config: Config, vectors: F32) -> None:
    docs = _documents(vectors, "m")
    before = db.service.last_event_id
    started = time.perf_counter()
    config.lib.add_documents(docs)
    ended = time.perf_counter()
    last = db.service.written_position()
    assert last is not None
    config.writes.append((started, ended, before + 1, last))


def _latencies(config: Config) -> tuple[list[float], list[float]]:
    """Per (sampled watch, write): ms from the write's start, and from its return, to the first
    event of that write read by the watch's listener."""
    lasts = [w[3] for w in config.writes]
    first_read: dict[tuple[int, int], float] = {}
    for at, number, position in config.received:
        i = int(np.searchsorted(lasts, position))
        if i >= len(config.writes) or position < config.writes[i][2]:
            continue  # an event of an unmeasured write
        key = (number, i)
        first_read[key] = min(at, first_read.get(key, at))
    from_start = [1000 * (at - config.writes[i][0]) for (_, i), at in first_read.items()]
    from_end = [1000 * (at - config.writes[i][1]) for (_, i), at in first_read.items()]
    return from_start, from_end


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@contextlib.contextmanager
def _sections() -> Iterator[dict[str, float]]:
    """Time the engine's parts (wrapping them; perf_counter): where the watch time goes."""
    from arrwdb.adapters.index import exact, hnsw
    from arrwdb.domain import _watch_engine as engine

    spent: dict[str, float] = {}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def timed(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        patched.append((owner, name, original))
        setattr(owner, name, timed)

    wrap(engine.WatchBook, "after_batch", AFTER)
    wrap(engine, "_steps_by_library", STEPS)  # (the names before and after this bench's work)
    wrap(engine, "steps_by_library", STEPS)
    wrap(engine.BatchView, "__init__", VIEW)
    wrap(exact.ExactIndex, "get_vectors", VECTORS)
    wrap(hnsw.HnswIndex, "get_vectors", VECTORS)
    wrap(engine.LibraryWatches, "scores", PRODUCT)
    wrap(engine.LibraryWatches, "_scores", PRODUCT)
    wrap(engine.LibraryWatches, "touched", TOUCHED)
    wrap(engine.LiveWatch, "walk", WALK)
    wrap(engine.LiveWatch, "publish", PUBLISH)
    try:
        yield spent
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    preload = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    measured = rng.standard_normal((args.batches * args.batch, args.dim), dtype=np.float32)
    most = max([0, *args.watches, *args.mixed])
    queries = rng.standard_normal((max(1, most), args.dim), dtype=np.float32)
    configs = [Config("none", 0, 0)]
    configs += [Config(f"{w:,} top-k", w, 0) for w in args.watches]
    configs += [Config(f"{w:,} mixed", w, round(w * args.match_fraction)) for w in args.mixed]

    folder = None
    if args.store == "disk":
        folder = Path(tempfile.mkdtemp(prefix="arrwdb-watch-bench-"))
        db = arrwdb.open(str(folder / "data"))
    else:
        db = arrwdb.open()
    profile: dict[str, Any] = {}
    try:
        for config in configs:
            _prepare(db, config, args, preload, queries, rng)
        log(f"measuring: {args.batches} batches of {args.batch:,} per configuration")
        for round_, s in enumerate(range(0, args.batches, args.segment)):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                for b in range(s, min(s + args.segment, args.batches)):
                    _write(db, config, measured[b * args.batch : (b + 1) * args.batch])
                time.sleep(args.settle)  # the listeners catch up before the next library
        if args.profile:
            profile = _profile(db, max(configs, key=lambda c: c.watches), args, rng)
        for config in configs:
            for handle in config.handles:
                handle.close()
        for config in configs:
            for thread in config.listeners:
                thread.join(timeout=10)
    finally:
        db.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    base = float(np.median([e - s for s, e, _, _ in configs[0].writes]))
    results = []
    for config in configs:
        seconds = [e - s for s, e, _, _ in config.writes]
        median = float(np.median(seconds))
        from_start, from_end = _latencies(config)
        ratio_floor, p99_cap = TARGETS.get(config.name, (None, None))
        ratio = base / median
        p99 = _pct(from_start, 99)
        checks = []
        if ratio_floor is not None:
            checks.append(ratio >= ratio_floor)
        if p99_cap is not None:
            checks.append(p99 is not None and p99 <= p99_cap)
        results.append(
            {
                "config": config.name,
                "watches": config.watches,
                "match_watches": config.match,
                "register_ms_per_watch": 1000 * config.register_s / max(1, config.watches),
                "chunks_per_s": args.batch / median,
                "chunks_per_s_total": args.batch * len(seconds) / sum(seconds),
                "write_ms_median": 1000 * median,
                "write_ms_p90": 1000 * float(np.percentile(seconds, 90)),
                "ratio": ratio,
                "latency_samples": len(from_start),
                "p50_ms": _pct(from_start, 50),
                "p99_ms": p99,
                "p99_after_return_ms": _pct(from_end, 99),
                "target_ratio": ratio_floor,
                "target_p99_ms": p99_cap,
                "pass": None if not checks else all(checks),
            }
        )
    return {"args": vars(args), "results": results, "profile": profile}


def _profile(
    db: arrwdb.Database, config: Config, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    """Extra writes into the largest configuration with the engine's parts timed."""
    vectors = rng.standard_normal((args.profile_batches * args.batch, args.dim), dtype=np.float32)
    measured = list(config.writes)  # (the profiled writes are not part of the table)
    with _sections() as spent:
        started = time.perf_counter()
        for b in range(args.profile_batches):
            _write(db, config, vectors[b * args.batch : (b + 1) * args.batch])
        total = time.perf_counter() - started
    config.writes[:] = measured
    per_batch = {k: 1000 * v / args.profile_batches for k, v in spent.items()}
    parts = (
        [STEPS, VIEW, WALK, PUBLISH, TOUCHED]
        if TOUCHED in per_batch
        else [STEPS, VIEW, WALK, PUBLISH, VECTORS, PRODUCT]
    )
    per_batch[OTHER] = per_batch.get(AFTER, 0.0) - sum(per_batch.get(p, 0.0) for p in parts)
    order = [AFTER, STEPS, VIEW, TOUCHED, VECTORS, PRODUCT, WALK, PUBLISH, OTHER]
    per_batch = {k: per_batch[k] for k in order if k in per_batch}
    return {
        "config": config.name,
        "batches": args.profile_batches,
        "write_ms": 1000 * total / args.profile_batches,
        "ms_per_batch": per_batch,
    }


def report(result: dict[str, Any]) -> str:
    args = result["args"]
    rows = []
    for r in result["results"]:
        target = []
        if r["target_ratio"] is not None:
            target.append(f"ratio >= {r['target_ratio']:.2f}")
        if r["target_p99_ms"] is not None:
            target.append(f"p99 <= {r['target_p99_ms']:.0f} ms")
        rows.append(
            [
                r["config"],
                r["chunks_per_s"],
                r["ratio"],
                r["write_ms_median"],
                r["p50_ms"],
                r["p99_ms"],
                r["p99_after_return_ms"],
                r["latency_samples"],
                r["register_ms_per_watch"] if r["watches"] else None,
                ", ".join(target) or "-",
                "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"),
            ]
        )
    lines = [
        f"## Live queries: {args['n']:,} x {args['dim']} {args['index']} library, "
        f"store {args['store']}, {args['batches']} batches of {args['batch']:,} per configuration"
        f" (k = {args['k']}; mixed: {args['match_fraction']:.0%} match watches, threshold "
        f"{args['threshold']})",
        "",
        markdown_table(
            [
                "watches",
                "chunks/s",
                "ratio",
                "write ms (median)",
                "p50 ms",
                "p99 ms",
                "p99 ms after return",
                "samples",
                "register ms/watch",
                "target",
                "met",
            ],
            rows,
        ),
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "",
            f"Where the watch time goes ({profile['config']}, {profile['batches']} batches, "
            f"sections timed; a write took {profile['write_ms']:.1f} ms):",
            "",
            markdown_table(
                ["section", "ms per batch"],
                [[k, v] for k, v in profile["ms_per_batch"].items()],
            ),
        ]
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--watches", type=_counts, default=[10, 1_000, 10_000])
    parser.add_argument("--mixed", type=_counts, default=[1_000], help="counts to run mixed")
    parser.add_argument("--match-fraction", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=0.15, help="of the match watches")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n", type=int, default=100_000, help="chunks preloaded")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1_000, help="chunks per measured write")
    parser.add_argument("--batches", type=int, default=20, help="measured writes per config")
    parser.add_argument("--segment", type=int, default=5, help="writes in a row per library")
    parser.add_argument("--settle", type=float, default=0.2, help="s between segments")
    parser.add_argument("--listeners", type=int, default=200, help="sampled watches read")
    parser.add_argument("--store", choices=("memory", "disk"), default="memory")
    parser.add_argument(
        "--index", choices=("flat", "hnsw"), default="hnsw", help="hnsw: a library's default"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="time the engine's parts")
    parser.add_argument("--profile-batches", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="JSON folder (bench/results)")
    args = parser.parse_args()
    run_bench: Callable[[], dict[str, Any]] = lambda: run(args)  # noqa: E731
    return run_and_report("watch", run_bench, report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
