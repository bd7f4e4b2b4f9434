"""Write ``tests/data/retrieval/documents.jsonl``: the documents of the retrieval test.

    python tests/data/make_retrieval.py        # on CPython 3.11, as the checked-in file was

Each document is the first paragraph of the docstring of a public function or class of a
standard-library module (its id: the qualified name, e.g. ``math.isqrt``), kept when it says
something (40 to 400 characters, not just a signature) and is not a near-copy of one already
taken (more than half of its content words shared). Modules and members are walked in sorted
order, so the same Python gives the same file. The queries (``queries.json``) are written by
hand: plain-English paraphrases of what one document says, each with that document's id.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "retrieval" / "documents.jsonl"

MODULES = sorted(
    """
    abc argparse array ast asyncio atexit base64 bdb binascii bisect builtins bz2 calendar cmath
    cmd code codecs codeop collections colorsys compileall concurrent.futures configparser
    contextlib copy copyreg cProfile csv ctypes dataclasses datetime decimal difflib dis
    email.utils enum faulthandler fcntl filecmp fileinput fnmatch fractions ftplib functools gc
    getpass gettext glob graphlib grp gzip hashlib heapq hmac html http.client http.cookies
    imaplib importlib importlib.util inspect io ipaddress itertools json keyword linecache
    locale logging lzma mailbox marshal math mimetypes mmap modulefinder multiprocessing netrc
    numbers operator os os.path pathlib pdb pickle pkgutil platform plistlib poplib pprint
    pstats pty pwd py_compile queue quopri random re reprlib resource runpy sched secrets
    select selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat
    statistics string struct subprocess symtable sys sysconfig tabnanny tarfile tempfile
    termios textwrap threading time timeit token tokenize trace traceback tracemalloc tty
    types typing unicodedata urllib.parse urllib.request uuid warnings wave weakref webbrowser
    xml.dom.minidom xml.etree.ElementTree xml.sax zipapp zipfile zlib zoneinfo
    """.split()  # noqa: SIM905
)
MIN_CHARS, MAX_CHARS = 40, 400
#: a document sharing more than this fraction of its content words with one already taken
#: (Jaccard) is a near-copy (``sha256``/``sha512``, ``sin``/``cos``): left out
MAX_OVERLAP = 0.5
#: where a module's functions are defined, when not in a module of its own name
ALIASES = {"os": ("posix",), "os.path": ("posixpath", "genericpath")}
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")
_WORDS = re.compile(r"[a-z0-9]+")
_COMMON = (
    "a an and are as at be by for from if in into is it its of on or that the this to with "
    "return returns true false none given object"
)
_STOPWORDS = frozenset(_COMMON.split())


def first_paragraph(doc: str) -> str | None:
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        text = " ".join(paragraph.split())
        if text and not _SIGNATURE.match(text):
            return text
    return None


def own(value: object, module_name: str) -> bool:
    """Whether ``value`` is defined by the module (or its C half, e.g. ``_socket``), not
    re-exported from elsewhere (``typing.Text`` is ``str``)."""
    owner = getattr(value, "__module__", None)
    if owner is None:
        return True
    owner = str(owner)
    top = module_name.split(".")[0]
    return owner.lstrip("_").split(".")[0] in (top, top.lstrip("_")) or owner in ALIASES.get(
        module_name, ()
    )


def members(module: object, module_name: str) -> list[tuple[str, object]]:
    """The module's public functions and classes (not their methods: a method's docstring
    often makes sense only beside its class's), by name."""
    return [
        (f"{module_name}.{name}", value)
        for name, value in sorted(vars(module).items())
        if not name.startswith("_")
        and own(value, module_name)
        and (inspect.isclass(value) or inspect.isroutine(value))
    ]


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS)


def main() -> int:
    documents: list[dict[str, str]] = []
    kept: list[frozenset[str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for qualname, value in members(module, module_name):
                doc = inspect.getdoc(value)
                text = first_paragraph(doc) if doc else None
                if text is None or not MIN_CHARS <= len(text) <= MAX_CHARS:
                    continue
                words = content_words(text)
                if not words or any(
                    len(words & other) > MAX_OVERLAP * len(words | other) for other in kept
                ):
                    continue
                kept.append(words)
                documents.append({"id": qualname, "text": text})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    print(f"{len(documents)} documents -> {OUT} (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
