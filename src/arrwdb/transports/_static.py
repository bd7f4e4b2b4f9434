"""Static files shipped in the package (the dashboard's, the API page's): read once, served
by name from a fixed list (never a path from the request), with an ``ETag`` so a browser
revalidates instead of downloading again, and the headers of a page that runs only its own
scripts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from litestar import Request
from litestar.exceptions import NotFoundException
from litestar.response import Response

#: The files of the dashboard and of the API page, beside this module.
HERE: Traversable = files("arrwdb.transports") / "static"

#: (Litestar adds ``; charset=utf-8`` to the ``text/`` types)
_TYPES = {
    "html": "text/html",
    "js": "text/javascript",
    "css": "text/css",
    "svg": "image/svg+xml",
    "png": "image/png",
}


def security_headers(csp: str) -> dict[str, str]:
    """What a page served here is sent with: its ``Content-Security-Policy`` (no inline
    script, nothing from another origin), not to be framed, no referrer, no type sniffing."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


#: The dashboard's policy: its own scripts, styles and connections (fetch, EventSource) only.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load(directory: Traversable, name: str) -> Asset:
    body = (directory / name).read_bytes()
    kind = name.rpartition(".")[2]
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, _TYPES.get(kind, "application/octet-stream"), etag)


class Shelf:
    """Some files of some directories, by the name they are served under; read on first use
    (a file missing from the install is a 404 then, not a server that does not start)."""

    def __init__(self, sources: Mapping[str, tuple[Traversable, str]], cache_control: str):
        self._sources = dict(sources)
        self._loaded: dict[str, Asset] = {}
        self._cache_control = cache_control

    @classmethod
    def of(cls, directory: Traversable, names: Iterable[str], cache_control: str) -> Shelf:
        return cls({name: (directory, name) for name in names}, cache_control)

    def names(self) -> list[str]:
        return list(self._sources)

    def asset(self, name: str) -> Asset:
        asset = self._loaded.get(name)
        if asset is None:
            source = self._sources.get(name)
            if source is None:
                raise NotFoundException(f"no file {name[:100]!r} here")
            try:
                asset = load(*source)
            except OSError as exc:
                raise NotFoundException(f"the file {name!r} is not installed") from exc
            self._loaded[name] = asset
        return asset

    def response(
        self,
        request: Request[Any, Any, Any],
        name: str,
        headers: Mapping[str, str] | None = None,
    ) -> Response[bytes]:
        asset = self.asset(name)
        sent = {"ETag": asset.etag, "Cache-Control": self._cache_control, **(headers or {})}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(b"", status_code=304, headers=sent)
        return Response(asset.body, media_type=asset.media_type, headers=sent)
