"""Write ``tests/data/retrieval_questions/queries.json``: search-box questions over the topics set.

    python tests/data/make_retrieval_questions.py   # checks the questions, then writes them

The documents are those of the topics set, ``tests/data/retrieval_topics/documents.jsonl``
(1,267 module docstrings of distinct topics; see ``make_retrieval_topics.py``), used as they
are. What differs is the questions: the topics set's questions avoid their document's key words
on purpose; these are phrased as a user would type them into the search box of a RAG product: a
natural question or request about what the document is for, in one's own words, keeping a word
or two of the document where a user would (a library's name, ``AIFF``, ``gitignore``, ``SQL``),
but never copying a run of four or more consecutive words of it.

How the targets were chosen (fixed before any question was written, so as not to pick the easy
ones): the documents are cut, in file order, into bands of 14 (positions 0-13, 14-27, ...; 91
bands), and each band gives one target: its first document whose text says in plain words what
the module does or is for. A document is passed over only when its text gives no such purpose:
a sample session or a ``testsetup`` directive alone, a deprecation notice, or a module that
exists only for backward compatibility (``SKIPPED`` lists the six passed over, with the
reason). Terse, internal or specialised documents (``mypy.refinfo``, ``mypyc.transform.spill``,
``sympy.polys.appellseqs``) are kept: a corpus of a RAG product has them too.

The 91 questions were written, with their targets chosen, before any measurement, and are not
reworded since. This script checks that each target is where the rule puts it and that no
question copies four consecutive words of its document, then writes ``queries.json`` (a list of
``{"query", "id"}``, as the other sets have).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCUMENTS = HERE / "retrieval_topics" / "documents.jsonl"
OUT = HERE / "retrieval_questions" / "queries.json"
BAND = 14
#: the longest run of consecutive words a question may share with its document
MAX_RUN = 3

#: documents passed over as their band's first, and why: their text gives no purpose
SKIPPED = {
    "http.cookies": "a sample session only",
    "flatbuffers.compat": "exists only for backward compatibility",
    "packaging.specifiers": "a testsetup directive only",
    "packaging.version": "a testsetup directive only",
    "pygments.lexers.agile": "exists only for backward compatibility (re-exports)",
    "sympy.core.compatibility": "a deprecation notice",
}

#: (target id, the question), one a band, in band order
QUESTIONS: list[tuple[str, str]] = [
    ("aifc", "how do I read an AIFF audio file in Python"),
    ("cgitb", "nicer, more detailed tracebacks when a Python script crashes"),
    ("crypt", "hash a password with the Unix crypt function"),
    (
        "distutils.command.bdist_dumb",
        "build a plain archive distribution of my package that users just unpack",
    ),
    (
        "distutils.dep_util",
        "check whether a target file is older than its source files so it needs rebuilding",
    ),
    (
        "distutils.versionpredicate",
        "parse a requirement like 'pkg (>=1.0, <2.0)' and test whether a version satisfies it",
    ),
    ("encodings.cp720", "decode bytes in the cp720 code page"),
    ("filecmp", "compare two folders and tell which files differ"),
    ("http.server", "run a simple web server that serves the files of a directory"),
    ("logging", "write log messages with levels like warning and error from my program"),
    ("pickle", "save a Python object to a file and load it back later"),
    ("reprlib", "print a shortened repr of a huge list so the output isn't enormous"),
    ("sqlite3", "use an embedded SQL database file from Python without a server"),
    ("tkinter.filedialog", "show an open file or save file dialog window in a Tk GUI"),
    (
        "urllib.response",
        "what object does urllib return for a fetched URL, with its headers and final address",
    ),
    ("xml.dom.domreg", "how to register and look up a DOM implementation by name"),
    ("zipimport", "import Python code directly from a .zip file"),
    (
        "flatbuffers.flexbuffers",
        "encode data as FlexBuffers, the schema-less variant of flatbuffers",
    ),
    (
        "graphql.utilities.replace_variables",
        "substitute the values of GraphQL query variables into an AST value",
    ),
    ("huggingface_hub.utils.sha", "compute the sha256 checksum of some bytes in huggingface_hub"),
    (
        "hypothesis.internal.conjecture.shrinking.common",
        "shared helpers hypothesis uses when shrinking a failing example",
    ),
    ("jinja2.loaders", "load Jinja templates from a folder, a package or a dictionary"),
    (
        "markdown_it.presets.zero",
        "markdown-it configuration with every rule turned off so I can enable only bold and italic",
    ),
    ("mypy.checker", "the part of mypy that infers and checks the types of a program"),
    ("mypy.lookup", "in mypy, find the definition node for a fully qualified name"),
    ("mypy.refinfo", "get per-line information about which names a line refers to, from mypy"),
    (
        "mypy.server.trigger",
        "mypy daemon triggers that decide what to recheck when a dependency changes",
    ),
    ("mypy.typestate", "where mypy keeps global caches about classes, like subtype results"),
    (
        "mypyc.irbuild.context",
        "mypyc helpers that track information about the function currently being compiled",
    ),
    ("mypyc.primitives.bytearray_ops", "how mypyc compiles operations on bytearray objects"),
    ("mypyc.transform.spill", "mypyc: save values that must survive across a yield in a generator"),
    (
        "numpy.distutils.system_info",
        "find where BLAS, LAPACK or ATLAS libraries are installed on the system when building "
        "numpy",
    ),
    (
        "numpy.linalg",
        "solve a system of linear equations or compute eigenvalues of a matrix with numpy",
    ),
    ("numpy.version", "check which numpy version is installed, with the git revision"),
    ("pathspec", "match file paths against .gitignore patterns"),
    ("psycopg.abc", "psycopg abstract protocols that its different implementations share"),
    ("pydantic.experimental", "try out pydantic features that are not stable yet"),
    ("pygments.lexers.archetype", "syntax highlighting for openEHR archetype files (ADL, ODIN)"),
    (
        "pygments.lexers.sql",
        "highlight SQL queries and database console sessions, e.g. PostgreSQL or MySQL",
    ),
    ("pygments.styles.dracula", "dracula color theme for pygments code highlighting"),
    ("pygments.styles.rainbow_dash", "a vivid, colourful code highlighting style"),
    (
        "redis.himport",
        "register the field names of a redis hash once per connection and then send only the "
        "values",
    ),
    ("requests.status_codes", "look up HTTP status codes by name, like requests.codes.ok for 200"),
    (
        "schemathesis.engine.summary",
        "how schemathesis computes the totals shown in the summary at the end of a run",
    ),
    (
        "schemathesis.specs.openapi.stateful.inference",
        "automatically discover links between API operations from Location headers in responses",
    ),
    ("setuptools.command.dist_info", "produce the .dist-info metadata folder for a package"),
    ("tokenizers", "fast library to split text into tokens for machine learning models"),
    (
        "typing_inspection.introspection",
        "inspect a type annotation at runtime, e.g. unwrap Annotated or Optional",
    ),
    (
        "werkzeug.middleware.proxy_fix",
        "my Flask app behind nginx sees the wrong client IP and scheme; use the X-Forwarded "
        "headers",
    ),
    ("IPython.core.async_helpers", "IPython support code for running async code at the prompt"),
    (
        "IPython.core.formatters",
        "how IPython decides how to display an object as text, HTML or an image",
    ),
    ("IPython.core.page", "show long output one screen at a time in IPython, like less"),
    ("IPython.lib.editorhooks", "make IPython's %edit open my favourite editor like vim or emacs"),
    (
        "IPython.terminal.shortcuts.auto_match",
        "IPython shortcut that automatically inserts the closing bracket or quote as I type",
    ),
    ("IPython.utils.text", "IPython helper functions for manipulating strings"),
    ("docutils.languages", "docutils translations for other languages"),
    (
        "docutils.statemachine",
        "a state machine that processes text line by line using regex patterns",
    ),
    ("docutils.writers.html5_polyglot", "convert reStructuredText to an HTML5 page"),
    ("jedi.api.strings", "autocompleting dictionary keys inside a string with jedi"),
    (
        "jedi.inference.gradual.typing",
        "how jedi understands typing constructs such as List, Union and TypeVar",
    ),
    ("jsonschema.benchmarks.const_vs_enum", "is const or enum faster in JSON Schema validation"),
    (
        "networkx.algorithms.approximation.treewidth",
        "approximate the treewidth of a graph with networkx",
    ),
    ("networkx.algorithms.clique", "find the largest complete subgraph in a network"),
    (
        "networkx.algorithms.dag",
        "topological sort and longest path in a directed graph with no cycles",
    ),
    (
        "networkx.algorithms.minors",
        "contract edges or merge nodes of a graph to form a quotient graph",
    ),
    ("networkx.algorithms.tree.coding", "turn a labelled tree into a Prüfer sequence and back"),
    ("networkx.drawing.nx_pydot", "save a networkx graph as a Graphviz .dot file"),
    ("networkx.generators.small", "famous small graphs such as the Petersen graph"),
    ("networkx.readwrite.json_graph", "serialize a networkx graph to JSON for a D3 visualisation"),
    (
        "prompt_toolkit.contrib.regular_languages.compiler",
        "prompt_toolkit: describe the input with a regular expression to get completion and "
        "highlighting per variable",
    ),
    (
        "prompt_toolkit.key_binding.bindings.auto_suggest",
        "accept fish shell style suggestions with a key in prompt_toolkit",
    ),
    ("prompt_toolkit.lexers", "colour the text the user types in a prompt_toolkit input"),
    ("prompt_toolkit.widgets", "ready-made buttons, text areas and dialogs for a terminal UI"),
    ("scipy.linalg", "matrix decompositions like LU, QR and SVD in scipy"),
    (
        "scipy.spatial.transform",
        "rotations in 3D with quaternions, Euler angles and rotation matrices",
    ),
    (
        "sympy.assumptions.handlers.calculus",
        "ask sympy whether an expression is finite or infinitesimal",
    ),
    ("sympy.categories", "category theory objects and morphisms in sympy"),
    ("sympy.core.containers", "sympy's Tuple and Dict types that hold other sympy objects"),
    (
        "sympy.discrete",
        "operations on discrete sequences in sympy, like convolution and transforms",
    ),
    (
        "sympy.geometry.util",
        "find the convex hull or closest pair of points with sympy geometry",
    ),
    (
        "sympy.logic.algorithms.lra_theory",
        "SAT modulo theories solver for linear inequalities in sympy",
    ),
    (
        "sympy.physics.continuum_mechanics.cable",
        "solve for the tension and shape of a hanging cable under loads",
    ),
    (
        "sympy.physics.quantum.kind",
        "tell whether a quantum expression is an operator, a bra or a ket",
    ),
    ("sympy.physics.units.prefixes", "kilo, mega, kibi: SI and binary unit prefixes in sympy"),
    ("sympy.polys.appellseqs", "generate Bernoulli or Euler polynomials as Appell sequences"),
    (
        "sympy.polys.matrices.exceptions",
        "errors raised by sympy's DomainMatrix, like a non-square matrix",
    ),
    (
        "sympy.polys.specialpolys",
        "sympy: make test polynomials such as Swinnerton-Dyer or cyclotomic ones for benchmarks",
    ),
    ("sympy.printing.str", "how sympy turns an expression into a readable string"),
    ("sympy.solvers.ode.lie_group", "solve a first-order ODE using Lie group symmetries in sympy"),
    (
        "sympy.stats.rv",
        "define random variables and compute probability, expectation and density symbolically",
    ),
    ("sympy.utilities.enumerative", "enumerate the partitions of a multiset"),
]

_WORDS = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def runs(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def check(documents: list[dict[str, str]]) -> list[str]:
    """What is wrong with ``QUESTIONS``, as sentences (none: all is as the docstring says)."""
    problems = []
    position = {d["id"]: i for i, d in enumerate(documents)}
    bands = -(-len(documents) // BAND)
    if len(QUESTIONS) != bands:
        problems.append(f"{len(QUESTIONS)} questions for {bands} bands")
    for band, (target, query) in enumerate(QUESTIONS):
        if target not in position:
            problems.append(f"{target}: not a document")
            continue
        at = position[target]
        if at // BAND != band:
            problems.append(f"{target}: at {at}, not in band {band}")
        passed_over = [d["id"] for d in documents[band * BAND : at]]
        if any(p not in SKIPPED for p in passed_over):
            problems.append(f"{target}: passes over {passed_over}, not all in SKIPPED")
        copied = runs(query, MAX_RUN + 1) & runs(documents[at]["text"], MAX_RUN + 1)
        if copied:
            problems.append(f"{target}: copies {sorted(' '.join(c) for c in copied)}")
    return problems


def main() -> int:
    with DOCUMENTS.open(encoding="utf-8") as f:
        documents = [json.loads(line) for line in f]
    problems = check(documents)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"query": q, "id": t}, ensure_ascii=False) for t, q in QUESTIONS]
    OUT.write_text("[\n  " + ",\n  ".join(lines) + "\n]\n", encoding="utf-8")
    print(f"{len(QUESTIONS)} questions -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
