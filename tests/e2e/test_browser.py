"""The seed's JavaScript client, unchanged but for a real library id and our port, in a real
headless Chromium (skipped where Chromium is not installed: ``apt-get install chromium``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from arrwdb.server import BackgroundServer
from conftest import create_library

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "websocket" / "seed_client.js"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_seed_javascript_example_runs_in_a_browser(make_server: Any, tmp_path: Path) -> None:
    """The protocol's JavaScript example, unchanged, from a page opened as a file: such pages
    send ``Origin: null``, which the server takes only when told to (``cors_origins``)."""
    assert CHROMIUM is not None
    server: BackgroundServer = make_server(cors_origins=("null",))
    with httpx.Client(base_url=server.url) as http:
        lib = create_library(http)["id"]
        http.post(f"/v1/libraries/{lib}/documents", json={"title": "AI", "text": "AI is here."})
        script = EXAMPLE.read_text().replace("{id}", lib)
        script = script.replace("localhost:8000", f"127.0.0.1:{server.port}")
        page = tmp_path / "page.html"
        page.write_text(f"<!doctype html><html><body><script>\n{script}\n</script></body></html>")
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--enable-logging=stderr",
                "--v=0",
                page.as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        console: list[str] = []
        try:
            assert browser.stderr is not None
            deadline = time.monotonic() + 30
            for line in browser.stderr:
                if ":CONSOLE" not in line:
                    assert time.monotonic() < deadline, "no console output from the page"
                    continue
                console.append(line)
                if '"Response: ' in line:  # the search was answered: now make a change
                    body = {"title": "Test Document", "text": "x"}
                    http.post(f"/v1/libraries/{lib}/documents", json=body)
                if '"Event: document.added' in line:
                    break
        finally:
            browser.kill()
            browser.wait()
    assert any('"Response: [object Object]"' in line for line in console), console
    assert any('"Event: document.added [object Object]"' in line for line in console), console
