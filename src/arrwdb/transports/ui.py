"""The dashboard: ``GET /ui``, a page of plain JavaScript shipped in the package (no build,
nothing from another origin) that shows the libraries, the live event feed (SSE
``/v1/events``), a search box whose results stay current (a watch of the query, deleted when the
page is left or searches again) and the connection statistics.

The page and its files hold no data, so the guard serves them without a key
(:data:`PUBLIC_PAGES`, :data:`PUBLIC_FILES`); everything it shows is fetched by the page from
the API with the key the user enters (kept in the tab's ``sessionStorage``), as any other
client would.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get
from litestar.params import FromPath
from litestar.response import Response

from arrwdb.transports._static import HERE, PAGE_CSP, Shelf, security_headers

PATH = "/ui"
#: Served without a key: the page, and its files (``/ui/<name>``).
PUBLIC_PAGES = frozenset({PATH, PATH + "/"})
PUBLIC_FILES = PATH + "/"

_FILES = ("index.html", "app.js", "style.css", "favicon.svg")
_HEADERS = security_headers(PAGE_CSP)


def router() -> Router:
    """The dashboard (mounted with the REST transport)."""
    # our own files are small: revalidated on every load, so an upgrade shows at once
    shelf = Shelf.of(HERE / "ui", _FILES, cache_control="no-cache")

    @get(PATH, include_in_schema=False, sync_to_thread=False)
    def page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return shelf.response(request, "index.html", _HEADERS)

    @get(PATH + "/{name:str}", include_in_schema=False, sync_to_thread=False)
    def asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        return shelf.response(request, name, _HEADERS)  # 404 for a name not on the shelf

    return Router(path="/", route_handlers=[page, asset])
