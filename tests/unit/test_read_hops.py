"""The dispatcher's shared read hops: batched reads answer exactly as single ones, errors
stay with their own request, and cancelled callers leave no trace."""

from functools import partial

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import arrwdb
from arrwdb.domain.access import ANYONE
from arrwdb.domain.errors import ArrwdbError
from arrwdb.transports.dispatch import ACTIONS, Dispatcher, WriteGate
from arrwdb.transports.messages import SearchIn


def _db(index="hnsw"):
    db = arrwdb.open()
    lib = db.create_library("x", dimension=8, index=index)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((200, 8)).astype(np.float32)
    lib.add_documents(
        [{"title": f"d{i}", "chunks": [{"text": str(i), "embedding": v[i]}]} for i in range(200)]
    )
    return db, lib, rng


@pytest.mark.parametrize("index", ["hnsw", "flat"])
def test_concurrent_reads_match_single(index):
    db, lib, rng = _db(index)
    service = db.service
    d = Dispatcher(lambda: service, WriteGate())
    qs = rng.standard_normal((100, 8)).astype(np.float32)
    reqs = []
    for i, q in enumerate(qs):
        if i % 7 == 3:
            reqs.append(SearchIn(query_vector=[1.0] * 3, k=5))  # dimension mismatch
        elif i % 11 == 5:
            reqs.append(SearchIn(query_vector=q.tolist(), k=5, filter={"x": {"$near": 1}}))
        else:
            reqs.append(SearchIn(query_vector=q.tolist(), k=5 + i % 3))
    expected = []
    for r in reqs:
        try:
            expected.append(
                (
                    "ok",
                    [
                        (h.chunk_id, h.score)
                        for h in ACTIONS["search"].perform(service, lib.id, r, ANYONE).results
                    ],
                )
            )
        except ArrwdbError as e:
            expected.append(("err", e.code, e.message))
    got = [None] * len(reqs)

    async def one(i):
        try:
            out = await d.execute("search", lib.id, reqs[i], caller=ANYONE)
            got[i] = ("ok", [(h.chunk_id, h.score) for h in out.results])
        except ArrwdbError as e:
            got[i] = ("err", e.code, e.message)

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(len(reqs)):
                tg.start_soon(one, i)
                if i % 10 == 0:
                    tg.start_soon(partial(d.execute, "get_library", lib.id, caller=ANYONE))
                    tg.start_soon(partial(d.execute, "ready", None, caller=ANYONE))

    anyio.run(main)
    assert got == expected
    assert d._reads == {}


def test_cancelled_waiters_leave_no_trace():
    db, lib, rng = _db()
    service = db.service
    d = Dispatcher(lambda: service, WriteGate())
    q = SearchIn(query_vector=rng.standard_normal(8).tolist(), k=3)
    results = []

    async def main():
        async with anyio.create_task_group() as tg:
            scopes = []
            for _i in range(50):
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def run(scope=scope):
                    with scope:
                        results.append(await d.execute("search", lib.id, q, caller=ANYONE))

                tg.start_soon(run)
            await anyio.lowlevel.checkpoint()
            for s in scopes[::3]:
                s.cancel()
        # and the dispatcher still works
        out = await d.execute("search", lib.id, q, caller=ANYONE)
        assert len(out.results) == 3

    anyio.run(main)
    assert 30 <= len(results) <= 50
    assert d._reads == {}


def test_unknown_library():
    db, _lib, _rng = _db()
    d = Dispatcher(lambda: db.service, WriteGate())
    q = SearchIn(query_vector=[0.1] * 8, k=3)

    async def main():
        outs = []

        async def one():
            try:
                await d.execute("search", "nope", q, caller=ANYONE)
            except ArrwdbError as e:
                outs.append(e.code)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        assert outs == ["not_found"] * 10

    anyio.run(main)


@pytest.mark.parametrize("index", ["hnsw", "flat"])
def test_clean_batch_uses_search_many(index, monkeypatch):
    db, lib, rng = _db(index)
    service = db.service
    calls = []
    orig = service.search_many

    def spy(lib_id, queries):
        calls.append(len(queries))
        return orig(lib_id, queries)

    monkeypatch.setattr(service, "search_many", spy)
    d = Dispatcher(lambda: service, WriteGate())
    qs = rng.standard_normal((60, 8)).astype(np.float32)
    reqs = [
        SearchIn(query_vector=q.tolist(), k=4, include_embedding=(i % 5 == 0))
        for i, q in enumerate(qs)
    ]
    expected = [ACTIONS["search"].perform(service, lib.id, r, ANYONE) for r in reqs]
    calls.clear()
    got = [None] * len(reqs)

    async def one(i):
        got[i] = await d.execute("search", lib.id, reqs[i], caller=ANYONE)

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(len(reqs)):
                tg.start_soon(one, i)

    anyio.run(main)

    def strip(o):
        return [
            (h.chunk_id, h.score, h.embedding, h.text, h.metadata, h.position, h.document_title)
            for h in o.results
        ]

    assert [strip(g) for g in got] == [strip(e) for e in expected]
    if index == "hnsw":
        assert max(calls, default=0) > 1, calls  # some searches went together
    else:
        assert max(calls, default=0) <= 1


def test_cancelled_leader_hands_its_batch_on(monkeypatch):
    import time as _time

    from arrwdb.transports import _read_hops as dmod

    db, lib, rng = _db()
    service = db.service
    orig_many, orig_one = service.search_many, service.search

    def slow_many(*a, **k):
        _time.sleep(0.1)
        return orig_many(*a, **k)

    def slow_one(*a, **k):
        _time.sleep(0.1)
        return orig_one(*a, **k)

    monkeypatch.setattr(service, "search_many", slow_many)
    monkeypatch.setattr(service, "search", slow_one)
    d = Dispatcher(lambda: service, WriteGate())
    q = SearchIn(query_vector=rng.standard_normal(8).tolist(), k=3)
    scopes = {}
    outcomes = {}
    orig_release = dmod.ReadHops._release

    def release(self):
        queue = list(self._queue)
        orig_release(self)
        if queue and queue[0].request is scopes["B"][1]:
            scopes["B"][0].cancel()  # B was just made the leader: cancel it before its hop

    monkeypatch.setattr(dmod.ReadHops, "_release", release)

    async def run(name, req):
        scope = anyio.CancelScope()
        scopes[name] = (scope, req)
        with scope:
            outcomes[name] = await d.execute("search", lib.id, req, caller=ANYONE)
        if scope.cancelled_caught:
            outcomes[name] = "cancelled"

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "A", SearchIn(query_vector=q.query_vector, k=3))
            await anyio.sleep(0.02)
            for name in "BCD":
                tg.start_soon(run, name, SearchIn(query_vector=q.query_vector, k=3))

    anyio.run(main)
    assert outcomes["B"] == "cancelled"
    for name in "ACD":
        assert len(outcomes[name].results) == 3, outcomes
    assert d._reads == {}
