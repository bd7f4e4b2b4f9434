"""API keys and what they give access to.

A server with an admin key (``ARRWDB_API_KEY``) needs a key on every request. The admin key may
do everything; the keys it creates give ``read`` or ``write`` access to some libraries, or to
every library (``["*"]``). What each operation needs is a :class:`Need`:

=============  =====================================================================
``READ``       get, list, search, change streams of a library (the key reads it)
``WRITE``      document writes and library updates (the key writes it)
``MANAGE``     create or delete a library: the admin key, or ``write`` on ``["*"]``
``ADMIN``      backups and keys: the admin key only
``EVERY_LIBRARY`` read every library: the admin key, or a key for ``["*"]`` (metrics)
``ANY``        any valid key (readiness, lists that show only what the key may read)
=============  =====================================================================

:class:`KeyRing` holds the keys (their SHA-256 digests only: a secret is shown once, when it
is made, and never kept) in memory for lookups, and in a :class:`~arrwdb.domain.ports.KeyStore`
so that they survive restarts and are shared by servers sharing a store.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from arrwdb.domain.errors import (
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    UnauthorizedError,
)
from arrwdb.domain.models import AccessLevel, ApiKey, new_id, utcnow
from arrwdb.domain.ports import KeyStore

logger = logging.getLogger("arrwdb.access")

ALL_LIBRARIES = "*"
#: The longest key name, and the most libraries one key may name.
MAX_NAME = 200
MAX_LIBRARIES = 1_000
SECRET_PREFIX = "arrwdb_"


class Need(enum.Enum):
    """What an operation needs of the caller's key."""

    ANY = "any"
    READ = "read"
    WRITE = "write"
    MANAGE = "manage"
    EVERY_LIBRARY = "every_library"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request: the admin, a key, or anyone (a server without an admin key)."""

    key_id: str | None
    admin: bool = False
    #: the libraries the key names (``None``: every library)
    libraries: frozenset[str] | None = None
    access: AccessLevel = "read"

    def may_read(self, library_id: str | None) -> bool:
        """Whether the caller may read ``library_id`` (``None``: every library)."""
        if self.admin or self.libraries is None:
            return True
        return library_id is not None and library_id in self.libraries

    def may_write(self, library_id: str | None) -> bool:
        return self.may_read(library_id) and (self.admin or self.access == "write")

    def allows(self, need: Need, library_id: str | None = None) -> bool:
        if self.admin or need is Need.ANY:
            return True
        if need is Need.READ:
            return self.may_read(library_id)
        if need is Need.WRITE:
            return self.may_write(library_id)
        if need is Need.MANAGE:
            return self.libraries is None and self.access == "write"
        if need is Need.EVERY_LIBRARY:
            return self.libraries is None
        return False  # ADMIN

    def require(self, need: Need, library_id: str | None = None) -> None:
        """Raises ``ForbiddenError`` unless the caller may do what needs ``need``."""
        if not self.allows(need, library_id):
            raise ForbiddenError(_refusal(need, library_id), need=need.value)


def _refusal(need: Need, library_id: str | None) -> str:
    if need is Need.ADMIN:
        return "this needs the admin key"
    if need is Need.MANAGE:
        return "creating or deleting libraries needs the admin key or a write key for '*'"
    if need is Need.EVERY_LIBRARY:
        return "this needs the admin key or a key for every library ('*')"
    verb = "write" if need is Need.WRITE else "read"
    return f"this key may not {verb} library {library_id!r}"


#: The caller on a server without an admin key: it may do everything.
ANYONE = Caller(key_id=None, admin=True)
ADMIN = Caller(key_id="admin", admin=True)


def digest(secret: str) -> str:
    """The SHA-256 digest a key is kept as (secrets are 256 random bits: no salt needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """The API keys of a server: authentication (secret -> :class:`Caller`), and creating,
    listing and revoking keys. Thread-safe. ``admin_key`` ``None``: the server is open (every
    request is :data:`ANYONE`) and keys, though they can be made, are not asked for."""

    def __init__(self, store: KeyStore, admin_key: str | None = None) -> None:
        self._store = store
        self._admin = None if not admin_key else digest(admin_key)
        self._lock = threading.Lock()
        self._by_digest: dict[str, ApiKey] = {}
        self._listeners: list[Callable[[str], None]] = []

    @property
    def enabled(self) -> bool:
        """Whether requests need a key."""
        return self._admin is not None

    @property
    def shared(self) -> bool:
        """Whether other servers may change the keys (then :meth:`refresh` now and then)."""
        return self._store.shared

    def load(self) -> None:
        """Read the keys from the store (at start)."""
        self.refresh()

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(key_id)`` when a key is revoked here or found revoked by
        :meth:`refresh` (from any thread)."""
        self._listeners.append(listener)

    def authenticate(self, secret: str | None) -> Caller:
        """The caller presenting ``secret``; raises ``UnauthorizedError`` (no key, an unknown
        or revoked one) when the server needs a key."""
        if self._admin is None:
            return ANYONE
        if not secret:
            raise UnauthorizedError("this server needs an API key: Authorization: Bearer <key>")
        found = digest(secret)
        if hmac.compare_digest(found, self._admin):
            return ADMIN
        key = self._by_digest.get(found)
        if key is None:
            raise UnauthorizedError("unknown or revoked API key")
        return caller_of(key)

    def create(
        self,
        name: str,
        libraries: Sequence[str],
        access: AccessLevel,
        exists: Callable[[str], bool],
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once). ``libraries``: ids (each must exist:
        ``exists``) or ``["*"]``. Raises ``InvalidArgumentError``, ``NotFoundError``."""
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
            raise InvalidArgumentError(
                f"a key name is 1 to {MAX_NAME} printable characters", field="name"
            )
        if access not in ("read", "write"):
            raise InvalidArgumentError("access is 'read' or 'write'", field="access")
        libs = tuple(dict.fromkeys(libraries))
        if not libs or len(libs) > MAX_LIBRARIES:
            raise InvalidArgumentError(
                f'libraries: 1 to {MAX_LIBRARIES} library ids, or ["*"]', field="libraries"
            )
        if ALL_LIBRARIES in libs and len(libs) > 1:
            raise InvalidArgumentError('"*" stands alone: every library', field="libraries")
        for library_id in libs:
            if library_id != ALL_LIBRARIES and not exists(library_id):
                raise NotFoundError(f"library {library_id!r} not found", field="libraries")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id(), name, libs, access, utcnow(), digest(secret))
        self._store.save_key(key)
        with self._lock:
            self._by_digest[key.digest] = key
        logger.info("API key %s (%s) created", key.id, key.name)
        return key, secret

    def all(self) -> list[ApiKey]:
        """Every key that is not revoked, oldest first."""
        return sorted(self._store.load_keys(), key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> None:
        """Revoke a key: it is refused from now on and the streams opened with it are closed.
        Raises ``NotFoundError``."""
        if not self._store.revoke_key(key_id):
            raise NotFoundError(f"API key {key_id!r} not found", key_id=key_id)
        with self._lock:
            self._by_digest = {d: k for d, k in self._by_digest.items() if k.id != key_id}
        logger.info("API key %s revoked", key_id)
        self._revoked([key_id])

    def refresh(self) -> None:
        """Read the keys from the store again: keys made or revoked by other servers."""
        keys = {k.digest: k for k in self._store.load_keys()}
        with self._lock:
            gone = [k.id for d, k in self._by_digest.items() if d not in keys]
            self._by_digest = keys
        self._revoked(gone)

    def _revoked(self, key_ids: list[str]) -> None:
        for key_id in key_ids:
            for listener in self._listeners:
                try:
                    listener(key_id)
                except Exception:
                    logger.exception("closing the streams of revoked key %s failed", key_id)


def caller_of(key: ApiKey) -> Caller:
    libraries = None if ALL_LIBRARIES in key.libraries else frozenset(key.libraries)
    return Caller(key_id=key.id, libraries=libraries, access=key.access)
