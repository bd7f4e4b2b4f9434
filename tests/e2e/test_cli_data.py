"""The data commands (``arrwdb ingest``, ``search``, ``tail``, ``libraries``) run as a shell user
runs them: a subprocess, against a real server (or a local store with ``--data-dir``)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from arrwdb.config import Settings
from arrwdb.server import BackgroundServer

TIMEOUT = 120


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without arrwDB's settings, and without whatever would make
    rich draw as on a terminal (unless a test asks for it)."""
    skipped = ("ARRWDB_", "FORCE_COLOR", "TTY_", "COLUMNS", "NO_COLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    return env | {"PYTHONIOENCODING": "utf-8"} | extra


def arrwdb(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrwdb", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env or environment(),
        timeout=TIMEOUT,
    )


def write_ndjson(path: Path, documents: list[Any]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    return path


def library_of(url: str, name: str) -> dict[str, Any]:
    libraries = httpx.get(f"{url}/v1/libraries").json()["libraries"]
    (library,) = [lib for lib in libraries if lib["name"] == name]
    return dict(library)


def titles_of(url: str, library_id: str) -> list[str]:
    page = httpx.get(f"{url}/v1/libraries/{library_id}/documents", params={"limit": 1000})
    return sorted(d["title"] for d in page.json()["documents"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Make = Callable[..., BackgroundServer]


# -- ingest ---------------------------------------------------------------------------------


def test_ingest_of_10000_documents_shows_a_progress_bar_and_a_summary(
    make_server: Make, tmp_path: Path
) -> None:
    server = make_server()
    words = ["vector", "search", "index", "chunk", "stream", "event", "server", "client"]
    words += ["library", "query"]
    docs = [
        {"title": f"doc {i}", "text": f"{words[i % 10]} {words[i // 10 % 10]} note {i}."}
        for i in range(10_000)
    ]
    source = write_ndjson(tmp_path / "docs.ndjson", docs)
    # TTY_COMPATIBLE / TTY_INTERACTIVE (rich's) draw the bar as on a terminal, into the pipe
    live = environment(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    started = time.monotonic()
    done = arrwdb(
        "ingest", str(source), "--library", "big", "--create", "--url", server.url, env=live
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    print(f"arrwdb ingest of 10,000 documents: {took:.1f} s")
    assert library_of(server.url, "big")["document_count"] == 10_000
    # the summary: counts, time, rate
    assert re.search(
        r"10000 received, 10000 added, 0 failed in [\d.]+ s \([\d,]+ docs/s\)", done.stdout
    ), done.stdout
    # the bar, redrawn as the answers came: its frames show counts on the way to the total
    counts = [int(n) for n in re.findall(r"(\d+)/10000", done.stderr)]
    assert counts[-1] == 10_000, done.stderr[-2000:]
    assert any(0 < n < 10_000 for n in counts), counts
    assert counts == sorted(counts)
    assert "━" in done.stderr
    assert "docs/s" in done.stderr


def test_a_bad_line_fails_alone_with_its_line_number(make_server: Make, tmp_path: Path) -> None:
    server = make_server()
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        '{"title": "one", "text": "the first good document"}\n'
        "{not json\n"
        "\n"
        '{"title": "empty", "text": ""}\n'
        "[1, 2]\n"
        '{"title": "two", "text": "the second good document"}\n',
        encoding="utf-8",
    )
    done = arrwdb("ingest", str(source), "-l", "mixed", "--create", "--url", server.url)
    assert done.returncode == 1, done.stderr
    assert "line 2: not JSON" in done.stderr
    assert "line 4: text is empty [invalid_argument]" in done.stderr
    assert "line 5: a document is a JSON object, not an array" in done.stderr
    assert "5 received, 2 added, 3 failed" in done.stdout
    assert "Traceback" not in done.stderr
    # not on a terminal, the bar is drawn once, when it is done: no redraws in a log
    assert done.stderr.count("5/5") == 1
    assert "\r" not in done.stderr
    library = library_of(server.url, "mixed")
    assert titles_of(server.url, library["id"]) == ["one", "two"]


def test_ingest_reads_standard_input(make_server: Make) -> None:
    server = make_server()
    lines = "".join(
        json.dumps({"title": f"piped {i}", "text": f"text number {i}"}) + "\n" for i in range(3)
    )
    done = arrwdb("ingest", "-", "-l", "piped", "--create", "--url", server.url, stdin=lines)
    assert done.returncode == 0, done.stderr
    assert "3 received, 3 added, 0 failed" in done.stdout
    assert "3/3" in done.stderr  # the total, known once all is read
    assert library_of(server.url, "piped")["document_count"] == 3


def test_ingest_reads_a_pipe_given_as_a_file(make_server: Make, tmp_path: Path) -> None:
    """As ``arrwdb ingest <(zcat dump.jsonl.gz)`` gives it: a file that can be read once."""
    server = make_server()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as pipe:
            for i in range(4):
                pipe.write(json.dumps({"title": f"fed {i}", "text": f"fed text {i}"}) + "\n")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    done = arrwdb("ingest", str(fifo), "-l", "fed", "--create", "--url", server.url)
    feeder.join(10)
    assert done.returncode == 0, done.stderr
    assert "4 received, 4 added, 0 failed" in done.stdout


def notes(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "alpha.md").write_text("# Alpha\n\nNotes on vectors and cosine.\n")
    (root / "sub" / "beta.txt").write_text("Graphs, nodes and their edges.\n")
    (root / ".git" / "config.txt").write_text("hidden: not a document\n")
    (root / "picture.png").write_bytes(b"\x89PNG not text")
    return root


def test_a_directory_of_text_files_becomes_documents(make_server: Make, tmp_path: Path) -> None:
    server = make_server()
    root = notes(tmp_path / "notes")
    done = arrwdb("ingest", str(root), "--library", "notes", "--create", "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert "2 received, 2 added, 0 failed" in done.stdout
    library = library_of(server.url, "notes")
    assert titles_of(server.url, library["id"]) == ["alpha.md", "sub/beta.txt"]
    page = httpx.get(f"{server.url}/v1/libraries/{library['id']}/documents").json()
    assert sorted(d["metadata"]["path"] for d in page["documents"]) == [
        "alpha.md",
        "sub/beta.txt",
    ]


def test_running_a_directory_again_with_upsert_updates_its_documents(
    make_server: Make, tmp_path: Path
) -> None:
    server = make_server()
    root = notes(tmp_path / "notes")
    args = ("ingest", str(root), "-l", "notes", "--create", "--upsert", "--url", server.url)
    first = arrwdb(*args)
    assert first.returncode == 0, first.stderr
    (root / "alpha.md").write_text("# Alpha\n\nRewritten: about hyperbolic geometry.\n")
    again = arrwdb(*args)
    assert again.returncode == 0, again.stderr
    library = library_of(server.url, "notes")
    assert library["document_count"] == 2
    hits = arrwdb(
        "search", "notes", "hyperbolic geometry", "-k", "1", "--json", "--url", server.url
    )
    assert json.loads(hits.stdout.splitlines()[0])["document_title"] == "alpha.md"


def test_a_missing_library_without_create_is_refused_with_a_hint(
    make_server: Make, tmp_path: Path
) -> None:
    server = make_server()
    source = write_ndjson(tmp_path / "one.ndjson", [{"title": "t", "text": "some text"}])
    done = arrwdb("ingest", str(source), "--library", "nowhere", "--url", server.url)
    assert done.returncode == 1
    assert done.stderr.startswith("arrwdb ingest: error: library 'nowhere' not found")
    assert "--create" in done.stderr
    searched = arrwdb("search", "nowhere", "text", "--url", server.url)
    assert searched.returncode == 1
    assert "library 'nowhere' not found" in searched.stderr
    assert "arrwdb libraries" in searched.stderr


def test_an_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    done = arrwdb("ingest", str(tmp_path / "absent.ndjson"), "-l", "x")
    assert done.returncode == 2
    assert "absent.ndjson: No such file or directory" in done.stderr


# -- connection errors ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["libraries"], ["search", "lib", "text"], ["tail"]])
def test_an_unreachable_server_is_exit_code_3_and_one_line(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = arrwdb(*command, "--url", url)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"arrwdb {command[0]}: error: arrwDB at {url} is unavailable")
    assert "is the server running?" in line


@pytest.mark.parametrize("url", ["localhost:8000", "http://", "ftp://host/"])
def test_a_url_that_is_not_a_servers_address_is_a_usage_error(url: str) -> None:
    done = arrwdb("libraries", "--url", url)
    assert done.returncode == 2
    assert f"--url {url!r} is not a server's address" in done.stderr


def test_the_url_comes_from_arrwdb_url(make_server: Make) -> None:
    server = make_server()
    httpx.post(f"{server.url}/v1/libraries", json={"name": "from-env"})
    done = arrwdb("libraries", "--json", env=environment(ARRWDB_URL=server.url))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["name"] for line in done.stdout.splitlines()] == ["from-env"]


def test_a_missing_or_refused_key_is_exit_code_4_naming_the_option(
    make_server: Make, tmp_path: Path
) -> None:
    server = make_server(api_key="the-admin-key")
    missing = arrwdb("libraries", "--url", server.url)
    assert missing.returncode == 4
    assert "needs an API key" in missing.stderr
    assert "--api-key" in missing.stderr
    wrong = arrwdb("libraries", "--url", server.url, "--api-key", "nope")
    assert wrong.returncode == 4
    assert "refused the API key of --api-key" in wrong.stderr
    from_env = arrwdb("libraries", "--url", server.url, env=environment(ARRWDB_API_KEY="nope"))
    assert from_env.returncode == 4
    assert "refused the API key of ARRWDB_API_KEY" in from_env.stderr
    key_file = tmp_path / "key"
    key_file.write_text("the-admin-key\n")
    good = arrwdb("libraries", "--url", server.url, "--api-key-file", str(key_file))
    assert good.returncode == 0, good.stderr
    both = arrwdb("libraries", "--url", server.url, "--api-key", "a", "--api-key-file", "b")
    assert both.returncode == 2


# -- search and libraries -------------------------------------------------------------------


@pytest.fixture
def papers(make_server: Make) -> BackgroundServer:
    server = make_server()
    lib = httpx.post(f"{server.url}/v1/libraries", json={"name": "papers"}).json()["id"]
    for title, text, year in [
        ("Attention", "Transformers use attention over sequences of tokens.", 2017),
        ("Graphs", "Graph neural networks pass messages between nodes.", 2019),
        ("Markup", "A [bold]text[/bold] with brackets shows as written.", 2020),
    ]:
        body = {"title": title, "text": text, "metadata": {"year": year}}
        assert httpx.post(f"{server.url}/v1/libraries/{lib}/documents", json=body).is_success
    return server


def test_search_prints_a_table_with_the_best_document_first(papers: BackgroundServer) -> None:
    done = arrwdb("search", "papers", "attention transformers", "-k", "2", "--url", papers.url)
    assert done.returncode == 0, done.stderr
    header, first, *rest = done.stdout.splitlines()
    assert header.split() == ["#", "score", "title", "text", "document"]
    assert first.split()[:3][0] == "1"
    assert first.split()[2] == "Attention"
    assert "Transformers use attention" in first
    assert len(rest) == 1
    markup = arrwdb("search", "papers", "brackets", "-k", "1", "--url", papers.url)
    assert "[bold]text[/bold]" in markup.stdout  # shown as written, not taken as markup


def test_search_json_gives_one_result_per_line(papers: BackgroundServer) -> None:
    done = arrwdb("search", "papers", "graph nodes", "--json", "--url", papers.url)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 3
    assert results[0]["rank"] == 1
    assert results[0]["document_title"] == "Graphs"
    assert {"score", "document_id", "chunk_id", "text", "metadata"} <= set(results[0])


def test_search_takes_a_metadata_filter(papers: BackgroundServer) -> None:
    year = json.dumps({"year": {"$gte": 2019}})
    args = ("search", "papers", "attention transformers", "--json", "--url", papers.url)
    done = arrwdb(*args, "--filter", year)
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(hit["document_title"] for hit in found) == ["Graphs", "Markup"]
    bad = arrwdb(*args, "--filter", "[1]")
    assert bad.returncode == 2
    assert "a filter is a JSON object" in bad.stderr


def test_libraries_lists_each_library(papers: BackgroundServer) -> None:
    table = arrwdb("libraries", "--url", papers.url)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "name",
        "id",
        "documents",
        "chunks",
        "dimension",
        "metric",
        "index",
        "embedder",
    ]
    assert row.split()[0] == "papers"
    assert row.split()[2] == "3"
    assert row.split()[5:] == ["cosine", "hnsw", "hashing"]
    listed = arrwdb("libraries", "--json", "--url", papers.url)
    (library,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert library["name"] == "papers"
    assert library["document_count"] == 3


# -- a local store --------------------------------------------------------------------------


def test_a_local_store_ingests_in_batches_and_searches(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    docs: list[Any] = [{"title": f"doc {i}", "text": f"plain note number {i}"} for i in range(600)]
    docs[300] = {"title": "bad", "text": "", "metadata": {}}  # fails alone, in its batch
    docs[450] = {"title": "needle", "text": "a unique haystack needle"}
    source = write_ndjson(tmp_path / "docs.ndjson", docs)
    missing = arrwdb("libraries", "--data-dir", store)
    assert missing.returncode == 2
    assert "no data directory" in missing.stderr
    done = arrwdb("ingest", str(source), "-l", "local", "--create", "--data-dir", store)
    assert done.returncode == 1, done.stderr
    assert "600 received, 599 added, 1 failed" in done.stdout
    assert "line 301: text is empty" in done.stderr
    found = arrwdb("search", "local", "haystack needle", "-k", "1", "--data-dir", store)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[1].split()[2] == "needle"
    listed = arrwdb("libraries", "--json", "--data-dir", store)
    assert json.loads(listed.stdout)["document_count"] == 599
    events = arrwdb("tail", "--since", "earliest", "--json", "--data-dir", store)
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert kinds == ["library.created"] + ["document.added"] * 599
    only = arrwdb("tail", "--since", "earliest", "--types", "library.created", "--data-dir", store)
    assert only.stdout.split()[:3] == ["1", "library.created", "local"]
    assert len(only.stdout.splitlines()) == 1
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("first version")
    upsert = ("ingest", str(notes), "-l", "local", "--upsert", "--data-dir", store)
    assert arrwdb(*upsert).returncode == 0
    (notes / "a.md").write_text("second version")
    again = arrwdb(*upsert)
    assert again.returncode == 0, again.stderr
    listed = arrwdb("libraries", "--json", "--data-dir", store)
    assert json.loads(listed.stdout)["document_count"] == 600  # replaced, not added


# -- tail -----------------------------------------------------------------------------------


class Lines:
    """The lines a process writes, read by a thread, taken with a bounded wait."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))

    def take(self, timeout: float = 20.0) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing printed within {timeout} s") from None

    def left(self) -> list[str]:
        out = []
        while not self._lines.empty():
            out.append(self._lines.get())
        return out


def start_tail(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "arrwdb", "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=environment(),
    )


def add(url: str, library_id: str, title: str) -> None:
    body = {"title": title, "text": f"the text of {title}"}
    response = httpx.post(f"{url}/v1/libraries/{library_id}/documents", json=body, timeout=10)
    assert response.status_code == 201, response.text


def test_tail_prints_events_live_and_resumes_after_a_server_restart(tmp_path: Path) -> None:
    settings = Settings(storage="disk", data_dir=str(tmp_path / "data"))
    server = BackgroundServer(settings, log_level="warning").start()
    port = server.port
    lib = httpx.post(f"{server.url}/v1/libraries", json={"name": "live"}).json()["id"]
    tail = start_tail("live", "--since", "earliest", "--json", "--url", server.url)
    out, err = Lines(tail.stdout), Lines(tail.stderr)
    events = []
    try:
        events.append(json.loads(out.take()))
        assert events[0]["type"] == "library.created"  # it is reading
        for n in range(3):
            add(server.url, lib, f"before {n}")
            events.append(json.loads(out.take()))  # printed as it happens, before the next
            assert events[-1]["data"]["title"] == f"before {n}"
        server.stop()
        server = BackgroundServer(settings, port=port, log_level="warning").start()
        for n in range(3):
            add(server.url, lib, f"after {n}")
        events += [json.loads(out.take()) for _ in range(3)]
        # and it told on stderr (lost, then reconnected; or both in one note, if it was quick)
        notes = [err.take()]
        while "resumed" not in notes[-1]:
            notes.append(err.take())
        assert "lost the connection" in notes[0]
        assert "reconnected to arrwDB at" in notes[-1]
        assert notes[-1].endswith("resumed after event 4")
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(timeout=20)
        server.stop()
    assert tail.returncode == 0  # Ctrl-C ends a tail
    assert out.left() == []
    # every event once, in order, across the restart
    assert [int(e["id"]) for e in events] == list(range(1, 8))
    assert [e["data"].get("title") for e in events[1:]] == [
        *(f"before {n}" for n in range(3)),
        *(f"after {n}" for n in range(3)),
    ]


def test_tail_of_every_library_prints_one_line_per_event(make_server: Make) -> None:
    server = make_server()
    tail = start_tail("--since", "earliest", "--url", server.url)
    out = Lines(tail.stdout)
    try:
        lib = httpx.post(f"{server.url}/v1/libraries", json={"name": "shelf"}).json()["id"]
        add(server.url, lib, "a title with spaces")
        created, added = out.take().split(), out.take()
        assert created[:3] == ["1", "library.created", "shelf"]
        assert "name=shelf" in created
        assert added.split()[:3] == ["2", "document.added", "shelf"]
        assert 'title="a title with spaces"' in added
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(timeout=20)
    assert tail.returncode == 0
