"""Settings: every knob of arrwDB, from code or from ``ARRWDB_*`` environment variables.

``Settings.from_env(**overrides)`` reads ``ARRWDB_<FIELD>`` (upper case) for every field below
and then applies keyword overrides. Lists are comma-separated. See ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

ALL_TRANSPORTS = ("rest", "ndjson", "sse", "websocket")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
ENV_PREFIX = "ARRWDB_"


@dataclass(frozen=True, slots=True)
class Settings:
    # storage
    storage: Literal["memory", "disk", "postgres"] = "memory"
    data_dir: str | None = None
    fsync: Literal["always", "interval", "never"] = "always"
    postgres_url: str | None = None
    postgres_schema: str = "arrwdb"
    postgres_notify: bool = True
    postgres_poll_interval: float = 0.5
    postgres_lock_timeout: float = 10.0
    max_lag: int = 10_000
    index_save_interval: float = 300.0
    backup_dir: str | None = None
    # event stream
    bus: Literal["inprocess"] = "inprocess"
    history_size: int = 10_000
    history_max_age: float | None = None
    subscriber_buffer: int | None = None
    # watches: seconds a REST watch lives without a listener on any server
    watch_ttl: float = 3600.0
    # text: the embedder of a library created without naming one (``hashing``, ``minilm``,
    # an entry point's or one given to ``arrwdb.open(embedders=...)``)
    default_embedder: str = "hashing"
    #: the older name of ``default_embedder`` (``ARRWDB_EMBEDDER``), taken when that one is left
    #: at its default; read as ``None`` once applied
    embedder: str | None = None
    chunk_size: int = 1_000
    chunk_overlap: int = 100
    # server
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    transports: tuple[str, ...] = ALL_TRANSPORTS
    cors_origins: tuple[str, ...] = ()
    # security: the admin key (never shown in a repr or a log)
    api_key: str | None = field(default=None, repr=False)
    allow_anonymous: bool = False
    allowed_hosts: tuple[str, ...] = ()
    # limits per client (API key, or address when the server is open); 0: none
    rate_limit: float = 5_000.0
    rate_burst: float | None = None
    max_streams_per_client: int = 1_000
    max_connections: int = 8_192
    header_timeout: float = 10.0
    # limits of what is stored
    max_metadata_bytes: int = 64 * 1024
    max_text_bytes: int = 4 * 1024 * 1024
    max_dimension: int = 16_384
    max_libraries: int = 10_000
    max_backups: int = 100
    max_watches_per_library: int = 10_000
    max_watches_per_key: int = 1_000
    # observability: /metrics on a port of its own (no key asked there) instead of the API's
    metrics_port: int | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_ws_message_bytes: int = 16 * 1024 * 1024
    ws_send_queue: int = 1_024
    ws_send_buffer_bytes: int = 8 * 1024 * 1024
    ws_max_inflight: int = 32
    ws_inflight_bytes: int = 16 * 1024 * 1024
    ws_send_timeout: float = 10.0
    sse_keepalive: float = 15.0
    sse_send_timeout: float = 10.0
    ndjson_batch: int = 256
    ndjson_send_timeout: float = 30.0
    consistency_timeout: float = 5.0
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.embedder is not None:
            if self.default_embedder not in ("hashing", self.embedder):
                raise ValueError(
                    f"embedder {self.embedder!r} (the older name of default_embedder) and "
                    f"default_embedder {self.default_embedder!r} differ: give one"
                )
            object.__setattr__(self, "default_embedder", self.embedder)
            object.__setattr__(self, "embedder", None)
        if not self.default_embedder:
            raise ValueError("default_embedder must be an embedder's name")
        unknown = set(self.transports) - set(ALL_TRANSPORTS)
        if unknown:
            raise ValueError(
                f"unknown transport(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(ALL_TRANSPORTS)}"
            )
        if self.subscriber_buffer is not None and self.subscriber_buffer < 1:
            raise ValueError("subscriber_buffer must be >= 1 (or unset)")
        for name in (
            "history_size",
            "chunk_size",
            "ws_send_queue",
            "ws_max_inflight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.storage == "disk" and not self.data_dir:
            raise ValueError("storage 'disk' needs data_dir")
        if self.storage == "postgres" and not self.postgres_url:
            raise ValueError("storage 'postgres' needs postgres_url (ARRWDB_POSTGRES_URL)")
        if not _SCHEMA_NAME.fullmatch(self.postgres_schema):
            raise ValueError(
                f"postgres_schema {self.postgres_schema[:80]!r}: 1 to 48 letters, digits or "
                "underscores, not starting with a digit"
            )
        if self.postgres_poll_interval <= 0:
            raise ValueError("postgres_poll_interval must be > 0")
        if not self.watch_ttl > 0:
            raise ValueError("watch_ttl must be > 0 (seconds)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, hints[f.name])
        given = {k: v for k, v in overrides.items() if v is not None}
        # the older name ``embedder`` stands for ``default_embedder`` at its own level (code
        # over environment); where both names are given at one level, they must agree
        for level in (values, given):
            if "embedder" in level and "default_embedder" not in level:
                level["default_embedder"] = level.pop("embedder")
        if "default_embedder" in given:
            values.pop("embedder", None)
        values.update(given)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if raw.strip().lower() in ("", "none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if origin is Literal:
            if raw not in args:
                raise ValueError(f"expected one of {', '.join(map(str, args))}")
            return raw
        if hint is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if hint in (int, float):
            return hint(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc


__all__ = ["ALL_TRANSPORTS", "Settings"]
