"""Write ``tests/data/retrieval_topics/documents.jsonl``: the topics retrieval test's documents.

    python tests/data/make_retrieval_topics.py   # with the project's dev environment (.venv)

Each document is what a Python module says it is for: the first paragraph of its module
docstring (whitespace-normalised, cut at a word boundary past 500 characters), its id the dotted
module name (``json.decoder``, ``httpx._client`` would be private and is not taken). Unlike
``make_retrieval.py``'s function docstrings, the documents are distinct topics, as in a RAG
corpus, rather than near-neighbours (``math.dist`` beside ``math.hypot``).

Sources (read as test data, never imported: each file is parsed with ``ast`` and only its
module docstring is read): the standard library of the running CPython (PSF licence; the
checked-in file was written on CPython 3.11.7), the packages of the project's environment named
in ``PACKAGES`` (numpy, litestar, httpx, msgspec, hypothesis, rich, psycopg, uvicorn, mypy,
pygments, ...: BSD, MIT, Apache 2.0 or PSF licensed, at the versions of the project's dev
environment when the file was written), then those named in ``BASE_PACKAGES`` from the base
interpreter's own site-packages (scipy, sympy, networkx, IPython, docutils, jedi, ...: BSD,
MIT, Apache 2.0 or public domain). Left out: test modules (a path part ``test``/``tests``/
``testing``/``conftest`` or ``test_*``/``*_test``), private modules (a path part starting with
``_`` other than ``__init__``), vendored copies, openings shorter than 60 characters (the first
paragraph, with the next ones while it is shorter; titles such as the module's name or a
``~~~~`` underline, and short licence lines, do not count), and near-copies: a document sharing
more than half of its content words (Jaccard) with one already taken. Files are walked in sorted
order, so the same installed versions give the same file. The queries (``queries.json``) are
written by hand: plain-English paraphrases of what one module is for, each with its id.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "retrieval_topics" / "documents.jsonl"

#: installed top-level packages whose module docstrings are taken (after the standard library)
PACKAGES = sorted(
    """
    annotated_types anyio attr attrs certifi charset_normalizer click dependency_injector dotenv
    faker filelock flatbuffers fsspec graphql grimp h11 httpcore httpx huggingface_hub
    hypothesis hypothesis_graphql idna importlinter iniconfig jinja2 litestar markdown_it
    markupsafe mdurl msgspec multidict mypy mypyc numpy onnxruntime outcome packaging pathspec
    pip pluggy polyfactory prometheus_client psycopg psycopg_pool pydantic pygments
    pyrate_limiter pytest redis requests rich rich_click schemathesis selenium setuptools
    sniffio sortedcontainers tokenizers tqdm trio trio_websocket truststore typing_inspection
    urllib3 uvicorn websocket websockets werkzeug wsproto yaml
    """.split()  # noqa: SIM905
)
#: packages of the base interpreter's own site-packages (not the project's environment) taken
#: after those: well-documented libraries of distinct fields, to pass 1,000 documents
BASE_PACKAGES = sorted(
    """
    cryptography dateutil docutils flask IPython jedi jsonschema networkx prompt_toolkit scipy
    sympy
    """.split()  # noqa: SIM905
)
#: standard-library directories left out: the tests, third-party packages, vendored or
#: generated code, and the Windows- and IDE-specific parts
STDLIB_SKIP = frozenset(
    "site-packages test tests idlelib lib2to3 turtledemo ensurepip pydoc_data".split()  # noqa: SIM905
)
MIN_CHARS, MAX_CHARS = 60, 500
#: a document sharing more than this fraction of its content words with one already taken
#: (Jaccard) is a near-copy: left out
MAX_OVERLAP = 0.5
_WORDS = re.compile(r"[a-z0-9]+")
_COMMON = (
    "a an and are as at be by for from if in into is it its of on or that the this to with "
    "module modules package python"
)
_STOPWORDS = frozenset(_COMMON.split())
_TITLE = re.compile(r"^[\w.:\- ]*[~=\-]{3,}$|^[\w.]+$")
_RULE = re.compile(r"^[=~\-*#^]{4,}$")
_LICENCE = re.compile(r"copyright|license|licence|all rights reserved", re.IGNORECASE)


def module_name(root: Path, path: Path) -> str | None:
    """The dotted name of the module at ``path`` under ``root``, or None when it is left out."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts:
        return None
    for part in parts:
        if part.startswith("_") or part in ("test", "tests", "testing", "conftest", "vendor"):
            return None
        if part.startswith("test_") or part.endswith("_test") or part in STDLIB_SKIP:
            return None
        if not part.isidentifier():
            return None
    return ".".join(parts)


def paragraphs(doc: str, name: str) -> list[str]:
    """The paragraphs of ``doc``, whitespace-normalised, less titles (the module's name, an
    underline) and short licence lines."""
    out = []
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        text = " ".join(w for w in paragraph.split() if not _RULE.match(w))
        if not text or _TITLE.match(text) or text.lower().startswith(name.lower() + " ~"):
            continue
        if _LICENCE.search(text) and len(text) < 200:
            continue
        out.append(text)
    return out


def opening(doc: str, name: str) -> str | None:
    """The first paragraph of ``doc``, with the next ones while it is shorter than
    ``MIN_CHARS``, cut at a word boundary past ``MAX_CHARS``; None when there is none."""
    parts = paragraphs(doc, name)
    if not parts:
        return None
    text = parts.pop(0)
    while len(text) < MIN_CHARS and parts:
        text = f"{text} {parts.pop(0)}"
    if len(text) > MAX_CHARS:
        text = text[: text.rfind(" ", 0, MAX_CHARS)] + " ..."
    return text


def docstring(path: Path) -> str | None:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    return ast.get_docstring(tree)


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS)


def sources() -> list[tuple[Path, Path]]:
    """(root, file) for every candidate file: the standard library's, then each package's."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    files = [(stdlib, p) for p in sorted(stdlib.rglob("*.py"))]
    for package in PACKAGES:
        files += [(purelib, p) for p in sorted((purelib / package).rglob("*.py"))]
    base = stdlib / "site-packages"
    for package in BASE_PACKAGES:
        files += [(base, p) for p in sorted((base / package).rglob("*.py"))]
    return files


def main() -> int:
    documents: list[dict[str, str]] = []
    kept: list[frozenset[str]] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings of old escapes
        for root, path in sources():
            name = module_name(root, path)
            if name is None or name in seen:
                continue
            doc = docstring(path)
            text = opening(doc, name) if doc else None
            if text is None or len(text) < MIN_CHARS:
                continue
            words = content_words(text)
            if len(words) < 4 or any(
                len(words & other) > MAX_OVERLAP * len(words | other) for other in kept
            ):
                continue
            seen.add(name)
            kept.append(words)
            documents.append({"id": name, "text": text})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    print(f"{len(documents)} documents -> {OUT} (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
