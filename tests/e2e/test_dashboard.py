"""The dashboard (``/ui``) and the API page (``/schema``) on a server with an admin key.

The pages, fetched over HTTP: served without a key, with their security headers, every file
they name served here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser

import httpx
import pytest

from arrwdb.server import BackgroundServer
from conftest import create_library

ADMIN_KEY = "admin-" + uuid.uuid4().hex


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(make_server: Callable[..., BackgroundServer]) -> BackgroundServer:
    return make_server(api_key=ADMIN_KEY)


@pytest.fixture
def admin(secured: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, headers=bearer(ADMIN_KEY), timeout=10) as client:
        yield client


# -- over HTTP --------------------------------------------------------------------------------


class _Links(HTMLParser):
    """The URLs of the scripts, styles and icons a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            if named.get("src"):
                self.urls.append(str(named["src"]))
            else:
                self.inline_scripts += 1
        elif tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))


def _links(page: str) -> _Links:
    parser = _Links()
    parser.feed(page)
    return parser


@pytest.mark.parametrize("path", ["/ui", "/schema"])
def test_the_pages_and_their_files_are_served_here_without_a_key(
    secured: BackgroundServer, path: str
) -> None:
    with httpx.Client(base_url=secured.url, timeout=10) as anon:
        page = anon.get(path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        links = _links(page.text)
        assert links.inline_scripts == 0
        assert links.urls
        for url in links.urls:
            assert url.startswith("/"), f"{url} is not served here"
            assert not url.startswith("//"), url
            served = anon.get(url)
            assert served.status_code == 200, url
            assert served.content, url
            again = anon.get(url, headers={"If-None-Match": served.headers["etag"]})
            assert again.status_code == 304, url
        # the data stays behind the key
        for data in ("/v1/libraries", "/v1/events", "/v1/websockets/stats", "/schema/openapi.json"):
            assert anon.get(data).status_code == 401, data


def test_only_the_pages_are_public(secured: BackgroundServer, admin: httpx.Client) -> None:
    library = create_library(admin)["id"]
    with httpx.Client(base_url=secured.url, timeout=10) as anon:
        assert anon.get("/ui/no-such-file.js").status_code == 404
        assert anon.get("/schema/assets/no-such-file.js").status_code == 404
        assert anon.post("/ui", json={}).status_code == 405  # GET only
        assert anon.get(f"/v1/libraries/{library}").status_code == 401
        assert anon.get("/schema/openapi.json").status_code == 401
        assert admin.get("/schema/openapi.json").status_code == 200
        # the API page names the document it loads, and the scripts that load it are ours
        page = anon.get("/schema").text
        assert 'data-spec-url="/schema/openapi.json"' in page
        script = anon.get("/schema/assets/apidocs.js").text
        assert "sessionStorage" in script
        assert "localStorage" not in script
        dashboard = anon.get("/ui/app.js").text
        assert "innerHTML" not in dashboard
        assert "localStorage" not in dashboard


def test_the_api_document_is_unchanged_and_lists_no_page(admin: httpx.Client) -> None:
    document = admin.get("/schema/openapi.json")
    assert document.status_code == 200
    paths = document.json()["paths"]
    assert "/v1/libraries" in paths
    assert not [p for p in paths if p.startswith(("/ui", "/schema"))]


def test_without_rest_there_is_no_dashboard(
    make_server: Callable[..., BackgroundServer],
) -> None:
    live = make_server(transports=("sse",))
    with httpx.Client(base_url=live.url, timeout=10) as http:
        assert http.get("/ui").status_code == 404
        assert http.get("/schema").status_code == 200
