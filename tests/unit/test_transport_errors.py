"""The one error table of the transports (``arrwdb.transports.errors``)."""

from __future__ import annotations

import logging

import msgspec
import pytest

from arrwdb.domain.errors import (
    AlreadyExistsError,
    DimensionMismatchError,
    DocumentNotFoundError,
    InternalError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidVectorError,
    LibraryNotFoundError,
    SlowConsumerError,
    StorageError,
    ValidationError,
)
from arrwdb.transports.errors import (
    INTERNAL_MESSAGE,
    BadRequest,
    PayloadTooLarge,
    ShuttingDown,
    UnsupportedMediaType,
    classify,
)
from arrwdb.transports.messages import SearchIn, decode


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ValidationError("v"), 422, "validation_error"),
        (DimensionMismatchError(3, 2), 422, "dimension_mismatch"),
        (InvalidVectorError("nan"), 422, "invalid_vector"),
        (InvalidFilterError("op"), 422, "invalid_filter"),
        (InvalidArgumentError("k", field="k"), 422, "invalid_argument"),
        (LibraryNotFoundError("x"), 404, "not_found"),
        (DocumentNotFoundError("d", "x"), 404, "not_found"),
        (AlreadyExistsError("dup"), 409, "already_exists"),
        (StorageError("disk"), 503, "storage_error"),
        (SlowConsumerError("slow"), 503, "slow_consumer"),
        (BadRequest("b"), 400, "bad_request"),
        (PayloadTooLarge("big"), 413, "payload_too_large"),
        (UnsupportedMediaType("xml"), 415, "unsupported_media_type"),
        (ShuttingDown("bye"), 503, "shutting_down"),
    ],
)
def test_the_table(exc: Exception, status: int, code: str) -> None:
    fault = classify(exc)
    assert (fault.status, fault.code) == (status, code)
    assert fault.message == str(exc)
    problem = fault.problem()
    assert (problem.status, problem.code, problem.detail) == (status, code, str(exc))
    assert problem.type.endswith(code)
    assert problem.title


def test_domain_errors_carry_their_field() -> None:
    assert classify(InvalidArgumentError("k out of range", field="k")).field == "k"


def test_malformed_json_is_400_and_a_broken_rule_is_422() -> None:
    with pytest.raises(msgspec.DecodeError) as malformed:
        decode(SearchIn, b"[1, 2")  # msgspec meets the type error first; it is still malformed
    assert not isinstance(malformed.value, msgspec.ValidationError)
    assert classify(malformed.value).status == 400
    with pytest.raises(msgspec.ValidationError) as invalid:
        decode(SearchIn, b'{"k": 0}')
    fault = classify(invalid.value)
    assert (fault.status, fault.code, fault.field) == (422, "invalid_argument", "k")


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b'{"k": "ten"}', "invalid_argument", "k"),
        (b'{"k": 1001}', "invalid_argument", "k"),
        (b'{"ef": 2.5}', "invalid_argument", "ef"),
        (b'{"include_embedding": "yes"}', "invalid_argument", "include_embedding"),
        (b'{"query_vector": "abc"}', "invalid_vector", "query_vector"),
        (b'{"query_vector": [1, "a"]}', "invalid_vector", "query_vector[1]"),
        (b'{"filter": 5}', "invalid_filter", "filter"),
    ],
)
def test_a_value_the_wire_refuses_gets_the_domains_code(raw: bytes, code: str, field: str) -> None:
    """The code the domain gives the same mistake in process (``check_k("ten")`` is an
    ``invalid_argument``, a vector of strings an ``invalid_vector``, ...)."""
    with pytest.raises(msgspec.ValidationError) as invalid:
        decode(SearchIn, raw)
    fault = classify(invalid.value)
    assert (fault.status, fault.code, fault.field) == (422, code, field)
    assert fault.message == str(invalid.value)


@pytest.mark.parametrize("exc", [RuntimeError("secret: db password"), InternalError("secret")])
def test_unexpected_errors_are_opaque_and_logged(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="arrwdb.transports"):
        fault = classify(exc)
    assert (fault.status, fault.code, fault.message) == (500, "internal_error", INTERNAL_MESSAGE)
    assert "secret" not in fault.message
    assert caplog.records
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[1] is exc


def test_storage_errors_do_not_show_the_servers_paths() -> None:
    from arrwdb.domain.errors import StorageError
    from arrwdb.transports.errors import classify

    fault = classify(StorageError("could not write /var/lib/arrwdb/wal/00000001.wal: disk full"))
    assert fault.status == 503
    assert fault.message == "could not write 00000001.wal: disk full"
    assert "/var/lib" not in fault.problem().detail
