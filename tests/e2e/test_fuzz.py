"""Fuzzing: schemathesis against the OpenAPI document (0 server errors, 0 answers outside the
documented schemas), with and without an admin key, and 10,000 generated WebSocket messages
(0 closes, 0 server errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from conftest import ErrorLog, create_library, start_server

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("admin_key", [None, "fuzz-admin-key"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    admin_key: str | None, error_log: ErrorLog, tmp_path: Path
) -> None:
    assert SCHEMATHESIS, "schemathesis is in the dev extra"
    live = start_server(rate_limit=0, api_key=admin_key)
    try:
        headers = [] if admin_key is None else ["-H", f"Authorization: Bearer {admin_key}"]
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{live.url}/schema/openapi.json",
                *headers,
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "25",
                "--seed",
                "20261202",
                "--exclude-path-regex",
                ".*/events$",  # endless streams
                "--phases",
                "examples,coverage,fuzzing",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # its cache goes there
        )
    finally:
        live.stop()
    tail = run.stdout[-4000:]
    assert run.returncode == 0, tail
    assert "Tested:" in tail  # it ran the operations
    assert not error_log.records, [r.getMessage() for r in error_log.records]


# -- WebSocket ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_actions = st.sampled_from(["search", "add", "delete", "get", "subscribe", "unsubscribe", "x", ""])
_data = st.one_of(
    _json,
    st.fixed_dictionaries(
        {},
        optional={
            "query_text": st.text(max_size=30),
            "query_vector": st.lists(st.floats(width=32), max_size=5),
            "k": st.integers(-5, 2000),
            "filter": _json,
            "document_id": st.text(max_size=10),
            "title": _json,
            "text": st.text(max_size=50),
            "chunks": st.lists(
                st.fixed_dictionaries(
                    {"text": st.text(max_size=10)},
                    optional={"embedding": st.lists(st.floats(width=32), max_size=5)},
                ),
                max_size=3,
            ),
            "metadata": _json,
            "since": _json,
            "types": _json,
        },
    ),
)
_requests = st.fixed_dictionaries(
    {"type": st.sampled_from(["request", "request", "other"]), "action": _actions},
    optional={"request_id": _json, "data": _data, "idempotency_key": _json},
)
_messages = st.one_of(
    _requests.map(json.dumps),
    _json.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


#: messages per hypothesis example, and examples: 10,000 messages in all
BATCH, EXAMPLES = 100, 100


def test_ten_thousand_fuzzed_websocket_messages_never_close_the_socket(
    error_log: ErrorLog,
) -> None:
    """Batches of generated messages on one socket, each followed by a ping (a request whose
    id no generated message can have). Every message is answered once, in whatever order the
    answers come (requests are served concurrently): the answers of a batch are counted, not
    matched by position. None is an internal error, no server error is logged, the socket
    stays open, and the messages sent are counted (hypothesis may drop examples)."""
    live = start_server(rate_limit=0)
    try:
        with httpx.Client(base_url=live.url) as http:
            library = create_library(http, dimension=4)
        url = f"{live.ws_url}/v1/libraries/{library['id']}/ws"
        with connect(url, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "system"
            sent = answered = 0

            def exchange(messages: list[str]) -> list[dict[str, Any]]:
                """Send ``messages`` and a ping; the answers to all of them (events skipped)."""
                ping = uuid.uuid4().hex  # 32 characters: no generated id is that long
                for message in messages:
                    ws.send(message)
                ws.send(json.dumps({"type": "request", "action": "get", "request_id": ping}))
                answers = []
                while len(answers) < len(messages) + 1:
                    message = json.loads(ws.recv(timeout=30))
                    if message.get("type") == "response":
                        answers.append(message)
                assert [a.get("request_id") for a in answers].count(ping) == 1, "one answer each"
                return answers

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(batch=st.lists(_messages, min_size=BATCH, max_size=BATCH))
            def fuzz(batch: list[str]) -> None:
                nonlocal sent, answered
                sent += len(batch)
                answers = exchange(batch)
                answered += len(answers) - 1
                errors = [a for a in answers if a.get("code") == "internal_error"]
                assert not errors, errors
                assert ws.close_code is None
                assert not error_log.records, [r.getMessage() for r in error_log.records]

            fuzz()
            assert len(exchange([])) == 1  # the next answer is the ping's: none left over
            assert answered == sent  # one answer per message
            assert ws.close_code is None
    finally:
        live.stop()
    print(f"{sent} fuzzed WebSocket messages, {answered} answers")
    assert sent >= BATCH * EXAMPLES == 10_000
    assert not error_log.records, [r.getMessage() for r in error_log.records]
