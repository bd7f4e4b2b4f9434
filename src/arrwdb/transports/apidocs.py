"""The interactive API page: ``GET /schema`` (also ``/schema/swagger``), Swagger UI over the
OpenAPI document ``/schema/openapi.json``, with every file it loads served from here
(``/schema/assets/<name>``), so it works with no network.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (Apache-2.0; the files of
the ``swagger-ui-dist`` release of the same version). The page runs no inline script: it loads
Swagger UI and ``apidocs.js``, which fetches the document (with the key the dashboard keeps
in the tab's ``sessionStorage``, or one asked for on a 401) and sends that key with the
requests made from the page. The page and its files hold no data: the guard serves them
without a key (:data:`PUBLIC_PAGES`, :data:`PUBLIC_FILES`); the document itself needs one.
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request, Router, get
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath
from litestar.response import Response
from swagger_ui_bundle import swagger_ui_path

from arrwdb.transports._static import HERE, PAGE_CSP, Shelf, security_headers

PATH = "/schema"
ASSETS = PATH + "/assets"
PUBLIC_PAGES = frozenset({PATH, PATH + "/", PATH + "/swagger"})
PUBLIC_FILES = ASSETS + "/"

_OURS = ("apidocs.js", "apidocs.css")
_SWAGGER = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
_HEADERS = security_headers(PAGE_CSP)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} API</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="stylesheet" href="{assets}/apidocs.css">
<script src="{assets}/swagger-ui-bundle.js" defer></script>
<script src="{assets}/apidocs.js" defer></script>
</head>
<body>
<header class="arrwdb-bar">
  <a href="/ui">Dashboard</a>
  <form id="key-form" hidden>
    <label>API key <input id="key-input" type="password" autocomplete="off" required></label>
    <button type="submit">Use key</button>
    <span id="key-message" role="alert"></span>
  </form>
  <span id="load-message" role="status"></span>
</header>
<div id="swagger" data-spec-url="{spec}"></div>
</body>
</html>
"""


class SwaggerPage(OpenAPIRenderPlugin):
    """Swagger UI from this server's own files (Litestar's plugin loads it from a CDN)."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/swagger"])

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _PAGE.format(
            title=html.escape(str(openapi_schema["info"]["title"])),
            assets=ASSETS,
            spec=html.escape(self.get_openapi_json_route(request)),
        ).encode()

    def receive_router(self, router: Router) -> None:
        ours = Shelf.of(HERE / "apidocs", _OURS, cache_control="no-cache")
        swagger = Shelf.of(swagger_ui_path, _SWAGGER, cache_control="no-cache")

        @get("/assets/{name:str}", sync_to_thread=False)
        def asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
            shelf = ours if name in _OURS else swagger
            return shelf.response(request, name)  # 404 for a name on neither shelf

        router.register(asset)


def router() -> Router:
    """The router of ``/schema`` (Litestar adds the document and the page to it): every
    answer with the page's security headers."""
    return Router(
        path=PATH,
        route_handlers=[],
        include_in_schema=False,
        response_headers=_HEADERS,
        dto=None,
        return_dto=None,
    )
