"""Side by side with peers: arrwDB, raw hnswlib, Chroma (embedded) and LanceDB (with an HNSW
index) on the same data, one system after another, each in its own virtual environment.

    python bench/peers_bench.py                          # 50k x 384 clustered, every system
    python bench/peers_bench.py --quick                  # 5k vectors: a quick look
    python bench/peers_bench.py --systems arrwdb,chroma  # some of them
    python bench/peers_bench.py --setup-only             # make (or check) the venvs and stop

Each system gets a virtual environment of its own under ``bench/.peers-venvs/`` (git-ignored),
made with ``python3 -m venv`` + pip on first use and reused afterwards (remade when its pinned
requirements change): arrwDB (this checkout, editable) with hnswlib 0.8.0; hnswlib 0.8.0 alone;
``chromadb==1.5.9``; ``lancedb==0.40.0``; each with the parent's numpy. hnswlib is built from
source once into a wheel in the same folder. A system whose venv cannot be made is reported as
"unavailable" with pip's reason.

Data: ``--n`` clustered synthetic vectors (``_common.clustered``), ``--queries`` fresh queries,
metadata ``tag = i % 4``, saved to ``.npy`` files that a worker (``bench/_peers_worker.py``,
run by each venv's Python as a subprocess, never two at once) loads. The worker prints one JSON
line; only the arrwDB worker imports arrwdb. Measured per system:

* ingest vectors/s: ``--n`` vectors with their tag, in batches of 1,000, up to a searchable
  index (LanceDB's ``create_index`` and a first query included);
* QPS: one query per call, k=10, over all queries (best of ``--repeats``); recall@10 against
  the exact cosine top 10 (numpy);
* filtered QPS and recall@10 with ``tag == 1`` (25% of the rows), against the exact top 10 of
  the allowed rows; raw hnswlib filters with a Python callable ``lambda label: tag[label] == 1``;
* peak RSS MB of the worker process (``VmHWM``, the loaded data included, alike for all).

HNSW M=16, ef_construction=200, ef=64 (cosine) wherever the system takes them: arrwDB
``index_params``; hnswlib ``init_index``/``set_ef``; Chroma's collection ``configuration``
(``max_neighbors``, ``ef_construction``, ``ef_search``); LanceDB ``IVF_HNSW_FLAT``
(``lancedb.index.HnswFlat``) with one IVF partition (a single HNSW graph over the raw vectors),
``m``, ``ef_construction``, and ``ef`` at query time, filters as ``where(..., prefilter=True)``.

Targets (ratios within one run): arrwDB / Chroma ingest >= 1.8, QPS >= 5, filtered QPS >= 30;
arrwDB filtered QPS / raw hnswlib with the callable >= 2.0; peak RSS arrwDB / raw hnswlib <= 1.3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    F32,
    I64,
    base_parser,
    clustered,
    exact_top_k,
    log,
    markdown_table,
    normalised,
    recall_at_k,
    run_and_report,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".peers-venvs"
WORKER = BENCH / "_peers_worker.py"
HNSWLIB = "hnswlib==0.8.0"

SYSTEMS = ("arrwdb", "hnswlib", "chroma", "lancedb")
NAMES = {
    "arrwdb": "arrwDB",
    "hnswlib": "raw hnswlib",
    "chroma": "Chroma 1.5.9",
    "lancedb": "LanceDB 0.40.0",
}


def requirements(system: str) -> list[str]:
    """What each venv holds, pinned (numpy: the parent's release, so that all share it)."""
    numpy = f"numpy=={np.__version__}"
    return {
        "arrwdb": [numpy, HNSWLIB, "-e", str(ROOT)],
        "hnswlib": [numpy, HNSWLIB],
        "chroma": [numpy, "chromadb==1.5.9"],
        "lancedb": [numpy, "lancedb==0.40.0"],
    }[system]


def _pip_reason(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or [f"exit code {proc.returncode}"])[-1][:200]


def hnswlib_wheels() -> Path:
    """A folder with hnswlib 0.8.0 built once from source (it ships no wheels), for every venv."""
    wheels = CACHE / "wheels"
    if not list(wheels.glob("hnswlib-0.8.0-*.whl")):
        log(f"building {HNSWLIB} from source into {wheels} (~30 s)")
        wheels.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["python3", "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), HNSWLIB],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{HNSWLIB}: {_pip_reason(proc)}")
    return wheels


def venv_python(system: str) -> Path:
    """The Python of ``system``'s venv, made (or remade) when its requirements are not the ones
    it was made with. Raises ``RuntimeError`` with pip's reason when it cannot be made."""
    folder = CACHE / system
    python = folder / "bin" / "python"
    wanted = json.dumps(requirements(system))
    stamp = folder / "requirements.json"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    if folder.exists():
        shutil.rmtree(folder)
    log(f"{NAMES[system]}: making its venv in {folder}")
    proc = subprocess.run(
        ["python3", "-m", "venv", str(folder)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"venv: {_pip_reason(proc)}")
    extra: list[str] = []
    if any(r.startswith("hnswlib") for r in requirements(system)) or system == "arrwdb":
        extra = ["--find-links", str(hnswlib_wheels())]
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *extra, *requirements(system)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(_pip_reason(proc))
    stamp.write_text(wanted, encoding="utf-8")
    return python


def exact_filtered(vectors: F32, queries: F32, allowed: I64, k: int) -> I64:
    v = normalised(vectors[allowed])
    scores = normalised(queries) @ v.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    out: I64 = allowed[np.take_along_axis(top, order, axis=1)]
    return out


def run_worker(python: Path, system: str, data: Path, args: Any) -> dict[str, Any]:
    params = {
        "k": args.k,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "ef": args.ef,
        "batch": 1000,
        "repeats": args.repeats,
    }
    env = os.environ | {"ANONYMIZED_TELEMETRY": "False", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)  # each venv runs its own packages only
    proc = subprocess.run(
        [str(python), str(WORKER), system, str(data), json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=data,
        timeout=args.timeout,
    )
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        raise RuntimeError(f"worker exit {proc.returncode}: {tail[0][:200]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(args: Any) -> dict[str, Any]:
    if args.quick:
        args.n = 5000
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))} (of {SYSTEMS})")
    k = args.k

    pythons: dict[str, Path | str] = {}
    for system in systems:
        try:
            pythons[system] = venv_python(system)
        except (RuntimeError, OSError) as e:
            pythons[system] = f"unavailable: {e}"
            log(f"{NAMES[system]}: {pythons[system]}")
    if args.setup_only:
        return {"args": vars(args), "setup": {s: str(p) for s, p in pythons.items()}}

    log(f"data: {args.n:,} x {args.dim} clustered, {args.queries} queries")
    ds = clustered(args.n, args.dim, args.queries, seed=args.seed)
    tags = (np.arange(args.n) % 4).astype(np.int64)
    allowed = np.flatnonzero(tags == 1).astype(np.int64)
    truth = exact_top_k(ds.vectors, ds.queries, k)
    truth_filtered = exact_filtered(ds.vectors, ds.queries, allowed, k)

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
        data = Path(tmp)
        np.save(data / "vectors.npy", ds.vectors)
        np.save(data / "queries.npy", ds.queries)
        np.save(data / "tags.npy", tags)
        for system in systems:  # one after another: never two systems on the cores at once
            python = pythons[system]
            if isinstance(python, str):
                rows[system] = {"unavailable": python}
                continue
            log(f"{NAMES[system]}: ingest {args.n:,}, {args.queries} queries x {args.repeats}")
            try:
                r = run_worker(python, system, data, args)
            except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as e:
                rows[system] = {"unavailable": f"failed: {e}"}
                log(f"{NAMES[system]}: {rows[system]['unavailable']}")
                continue
            found = np.asarray(r.pop("found"), dtype=np.int64)
            found_filtered = np.asarray(r.pop("found_filtered"), dtype=np.int64)
            r["ingest_vps"] = args.n / r["ingest_s"]
            r["qps"] = args.queries / r["search_s"]
            r["filtered_qps"] = args.queries / r["filtered_s"]
            r["recall"] = recall_at_k(found, truth)
            r["filtered_recall"] = recall_at_k(found_filtered, truth_filtered)
            allowed_set = set(allowed.tolist())
            r["filtered_leaks"] = int(sum(int(i) not in allowed_set for i in found_filtered.flat))
            rows[system] = r
            log(
                f"{NAMES[system]}: {r['ingest_vps']:,.0f} vec/s, {r['qps']:,.0f} QPS "
                f"(recall {r['recall']:.3f}), filtered {r['filtered_qps']:,.0f} QPS "
                f"(recall {r['filtered_recall']:.3f}), {r['peak_rss_mb']:,.0f} MB"
            )

    def ratio(a: str, b: str, key: str) -> float | None:
        ra, rb = rows.get(a, {}), rows.get(b, {})
        if key not in ra or key not in rb:
            return None
        return float(ra[key]) / float(rb[key])

    checks = [
        ("arrwDB / Chroma ingest vec/s", ratio("arrwdb", "chroma", "ingest_vps"), ">=", 1.8),
        ("arrwDB / Chroma QPS", ratio("arrwdb", "chroma", "qps"), ">=", 5.0),
        ("arrwDB / Chroma filtered QPS", ratio("arrwdb", "chroma", "filtered_qps"), ">=", 30.0),
        (
            "arrwDB / raw hnswlib (callable) filtered QPS",
            ratio("arrwdb", "hnswlib", "filtered_qps"),
            ">=",
            2.0,
        ),
        ("arrwDB / raw hnswlib peak RSS", ratio("arrwdb", "hnswlib", "peak_rss_mb"), "<=", 1.3),
    ]
    results = []
    for measure, value, op, target in checks:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        results.append({"measure": measure, "ratio": value, "target": f"{op} {target}", "met": met})
    return {"args": vars(args), "systems": rows, "checks": results}


def report(result: dict[str, Any]) -> str:
    a = result["args"]
    if "setup" in result:
        return "\n".join(f"{NAMES[s]}: {p}" for s, p in result["setup"].items())
    table = []
    for system, r in result["systems"].items():
        if "unavailable" in r:
            table.append([NAMES[system], r["unavailable"], "-", "-", "-", "-", "-"])
            continue
        table.append(
            [
                NAMES[system],
                r["ingest_vps"],
                r["qps"],
                r["recall"],
                r["filtered_qps"],
                r["filtered_recall"],
                round(r["peak_rss_mb"]),
            ]
        )
    checks = [
        [
            c["measure"],
            "-" if c["ratio"] is None else f"{c['ratio']:.2f}",
            c["target"],
            "-" if c["met"] is None else ("met" if c["met"] else "**not met**"),
        ]
        for c in result["checks"]
    ]
    notes = [
        f"- {NAMES[s]}: {r['notes']}"
        for s, r in result["systems"].items()
        if r.get("notes") and "unavailable" not in r
    ]
    lines = [
        f"## Side by side with peers: {a['n']:,} x {a['dim']} clustered, {a['queries']:,} "
        f"queries, k={a['k']}, HNSW M={a['m']}, ef_construction={a['ef_construction']}, "
        f"ef={a['ef']}, filter tag == 1 (25%)",
        "",
        markdown_table(
            [
                "system",
                "ingest vec/s",
                "QPS",
                "recall",
                "filtered QPS",
                "filtered recall",
                "peak RSS MB",
            ],
            table,
        ),
        "",
        markdown_table(["measure", "ratio", "target", "met"], checks),
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main() -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="n=5000")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma list")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per system")
    parser.add_argument("--setup-only", action="store_true", help="make the venvs and stop")
    args = parser.parse_args()
    return run_and_report("peers", lambda: run(args), report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
