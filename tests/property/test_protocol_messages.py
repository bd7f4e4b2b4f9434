"""Properties of the wire protocol: every message Struct round-trips through JSON, and any
generated WebSocket request decodes to its action or to a validation error naming the field."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.transports import envelopes, messages
from arrwdb.transports.envelopes import WS_ACTIONS, error_path, protocol_error, ws_request_decoder

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for the values of a msgspec type (honouring its constraints)."""
    if isinstance(t, mi.Metadata):
        return strategy(t.type)
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**63))
        high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**63 - 1)
        return st.integers(low, high)
    if isinstance(t, mi.FloatType):
        return FLOATS
    if isinstance(t, mi.StrType):
        low = t.min_length or 0
        high = 12 if t.max_length is None else min(12, t.max_length)
        return st.text(min_size=low, max_size=max(low, high))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.AnyType):
        return JSON
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        return st.lists(strategy(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy(t.key_type), strategy(t.value_type), max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy(x) for x in t.types])
    if isinstance(t, mi.StructType):
        fields: dict[str, st.SearchStrategy[Any]] = {}
        for f in t.fields:
            value = strategy(f.type)
            if not f.required and f.default is mi.NODEFAULT and f.default_factory is mi.NODEFAULT:
                value = st.just(msgspec.UNSET) | value  # an optional (UNSET) field
            fields[f.name] = value
        return st.builds(t.cls, **fields)
    raise NotImplementedError(t)


WIRE = messages.WIRE_TYPES + envelopes.WIRE_TYPES


@pytest.mark.parametrize("cls", WIRE, ids=lambda c: c.__name__)
@settings(max_examples=50)
@given(data=st.data())
def test_every_message_round_trips_through_json(cls: type[msgspec.Struct], data: Any) -> None:
    value = data.draw(strategy(mi.type_info(cls)))
    encoded = msgspec.json.encode(value)
    assert msgspec.json.decode(encoded, type=cls) == value
    json.loads(encoded)  # plain JSON, readable by any client


def test_every_struct_of_the_modules_is_covered() -> None:
    for module in (messages, envelopes):
        defined = {
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, msgspec.Struct)
            and v.__module__ == module.__name__
            and not v.__name__.startswith("_")
        }
        assert defined <= set(WIRE), defined - set(WIRE)


# -- requests -------------------------------------------------------------------------------

REQUEST_IDS = st.none() | st.text(max_size=10) | st.integers(-(2**31), 2**31)
DOC_ID = st.text(min_size=1, max_size=10)
VALID_DATA: dict[str, st.SearchStrategy[Any]] = {
    "search": st.fixed_dictionaries(
        {"query_text": st.text(max_size=10)},
        optional={"k": st.integers(1, 1000), "ef": st.integers(1, 10_000)},
    ),
    "add": st.fixed_dictionaries(
        {"title": st.text(max_size=10), "text": st.text(max_size=10)},
        optional={"metadata": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)},
    ),
    "delete": st.fixed_dictionaries({"document_id": DOC_ID}),
    "get": st.fixed_dictionaries(
        {"document_id": DOC_ID}, optional={"include_embedding": st.booleans()}
    ),
    "subscribe": st.fixed_dictionaries(
        {}, optional={"since": st.sampled_from(["1", "earliest", 7])}
    ),
    "unsubscribe": st.just({}),
}
#: (action, field) -> values of the wrong type or out of range for it
INVALID: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("search", "k"): st.integers(max_value=0)
    | st.integers(min_value=1001)
    | st.text()
    | st.lists(st.integers()),
    ("search", "query_text"): st.integers() | st.lists(st.text()) | st.booleans(),
    ("search", "query_vector"): st.text() | st.lists(st.text(), min_size=1),
    ("search", "ef"): st.integers(max_value=0) | st.text(),
    ("add", "title"): st.integers() | st.lists(st.integers()),
    ("add", "chunks"): st.text() | st.integers(),
    ("add", "metadata"): st.text() | st.lists(st.integers()),
    ("delete", "document_id"): st.integers() | st.none() | st.lists(st.text()),
    ("get", "document_id"): st.integers() | st.booleans(),
    ("get", "include_embedding"): st.text() | st.integers(),
    ("subscribe", "since"): st.lists(st.integers()) | st.dictionaries(st.text(), st.integers()),
    ("subscribe", "types"): st.text() | st.integers(),
}


@given(action=st.sampled_from(sorted(VALID_DATA)), rid=REQUEST_IDS, data=st.data())
def test_valid_requests_decode_to_their_action(action: str, rid: Any, data: Any) -> None:
    payload = data.draw(VALID_DATA[action])
    raw = json.dumps({"type": "request", "action": action, "request_id": rid, "data": payload})
    request = ws_request_decoder.decode(raw)
    assert type(request) is WS_ACTIONS[action]
    assert request.request_id == rid


@given(key=st.sampled_from(sorted(INVALID)), rid=st.text(max_size=8), data=st.data())
def test_invalid_requests_name_the_field(key: tuple[str, str], rid: str, data: Any) -> None:
    action, field = key
    payload = data.draw(VALID_DATA[action])
    payload[field] = data.draw(INVALID[key])
    raw = json.dumps({"type": "request", "action": action, "request_id": rid, "data": payload})
    with pytest.raises(msgspec.ValidationError) as caught:
        ws_request_decoder.decode(raw)
    path = error_path(caught.value)
    assert path is not None
    assert path == f"data.{field}" or path.startswith(f"data.{field}[")
    fault = protocol_error(raw, caught.value)
    code = "invalid_vector" if field == "query_vector" else "invalid_argument"  # as in process
    assert (fault.code, fault.request_id, fault.field) == (code, rid, path)


@given(action=st.text(max_size=12).filter(lambda a: a not in WS_ACTIONS), rid=st.text(max_size=8))
def test_unknown_actions_are_reported_as_such(action: str, rid: str) -> None:
    raw = json.dumps({"type": "request", "action": action, "request_id": rid, "data": {}})
    with pytest.raises(msgspec.ValidationError) as caught:
        ws_request_decoder.decode(raw)
    fault = protocol_error(raw, caught.value)
    assert (fault.code, fault.request_id) == ("unknown_action", rid)
    assert action in fault.message or repr(action) in fault.message
