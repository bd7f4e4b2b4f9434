"""The dashboard (``/ui``) and the API page (``/schema``) on a server with an admin key.

The fast tests fetch the pages over HTTP: served without a key, with their security headers,
every file they name served here. The browser tests drive headless Chromium with selenium
(Debian's ``chromium`` and ``chromium-driver``; skipped with the reason when one is missing,
failed where services are required, ``ARRWDB_REQUIRE_SERVICES=1``) with every host but the
server's unresolvable, so that a file from anywhere else would not load: the key is entered
once, a document added over REST appears in the page's event feed, a search from the page
shows its results and keeps them current (a live query: documents added and deleted over REST
enter and leave them), and falls back to a one-off search when the query cannot be live.
Screenshots go to ``$ARRWDB_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from arrwdb.server import BackgroundServer
from conftest import add_text, create_library

ADMIN_KEY = "admin-" + uuid.uuid4().hex
WAIT = 15.0  # seconds a page may take to show what is waited for
ARTIFACTS = Path(os.environ.get("ARRWDB_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")


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


# -- in Chromium ------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    missing = []
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        missing.append("chromium (apt-get install chromium)")
    if shutil.which("chromedriver") is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    return "not installed: " + ", ".join(missing) if missing else None


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by selenium; no host but 127.0.0.1 resolves."""
    reason = _browser_missing()
    if reason is not None:
        if os.environ.get("ARRWDB_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium") or shutil.which("chromium-browser"))
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
        # offline: any file from a CDN would fail to load
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(shutil.which("chromedriver")))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, what: str, condition: Callable[[Any], Any]) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders its lists as events arrive: an element found a moment ago may be gone
    wait = WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(condition)
    except TimeoutException:
        shot = _screenshot(driver, f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
        raise AssertionError(f"the page did not show {what} within {WAIT} s ({shot})") from None


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _resources(driver: Any) -> list[str]:
    """Every URL the page loaded (the page itself, scripts, styles, images, fetches)."""
    urls: list[str] = driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    return urls


def _results(driver: Any) -> list[tuple[str, str, str]]:
    """The search results shown, read at once: (score, title, text) of each row."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#results tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    return [(score, title, text) for score, title, text in rows]


def _titles(driver: Any) -> list[str]:
    return [name for _, name, _ in _results(driver)]


def _watches(http: httpx.Client, library: str) -> list[dict[str, Any]]:
    answer = http.get(f"/v1/libraries/{library}/watches")
    assert answer.status_code == 200, answer.text
    watches: list[dict[str, Any]] = answer.json()["watches"]
    return watches


def _until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {WAIT} s")
        time.sleep(0.1)


def _csp_violations(driver: Any) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("source") == "security" or "Content Security Policy" in entry["message"]
    ]


def test_dashboard_in_chromium(chrome: Any, secured: BackgroundServer, admin: httpx.Client) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    library = create_library(admin, name="papers")["id"]
    add_text(admin, library, "Attention", "Transformers use attention.")
    driver = chrome
    driver.get(secured.url + "/ui")

    # the page loads without a key, then asks for one
    key_input = _wait(
        driver, "the key prompt", lambda d: d.find_element(By.ID, "key-input").is_displayed()
    )
    assert key_input
    assert "API key" in driver.find_element(By.ID, "key-message").text
    driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()

    # the libraries, with their counts
    row = f'#libraries tr[data-library-id="{library}"]'
    _wait(driver, "the library list", lambda d: d.find_elements(By.CSS_SELECTOR, row))
    _wait(
        driver,
        "the library's name and count",
        lambda d: (
            d.find_element(By.CSS_SELECTOR, row + " .name").text == "papers"
            and d.find_element(By.CSS_SELECTOR, row + " .documents").text == "1"
        ),
    )
    _wait(
        driver,
        "the live stream",
        lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live",
    )

    # a document added over REST appears in the event feed, and the count follows
    title = f"Retrieval {uuid.uuid4().hex[:6]}"
    add_text(admin, library, title, "Vector search finds the nearest neighbours.")
    added = '#events li[data-type="document.added"]'
    _wait(
        driver,
        "the added document, with its library, in the event feed",
        lambda d: any(
            title in li.text and "papers" in li.text
            for li in d.find_elements(By.CSS_SELECTOR, added)
        ),
    )
    _wait(
        driver,
        "the new document count",
        lambda d: d.find_element(By.CSS_SELECTOR, row + " .documents").text == "2",
    )

    # a search from the page shows its results
    Select(driver.find_element(By.ID, "search-library")).select_by_value(library)
    driver.find_element(By.ID, "search-query").send_keys("attention transformers")
    k = driver.find_element(By.ID, "search-k")
    k.clear()
    k.send_keys("2")
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    results = "#results tbody tr"
    _wait(driver, "search results", lambda d: d.find_elements(By.CSS_SELECTOR, results))
    rows = driver.find_elements(By.CSS_SELECTOR, results)
    assert len(rows) == 2
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[1].text == "Attention"
    assert first[2].text == "Transformers use attention."
    assert float(first[0].text) >= float(rows[1].find_elements(By.TAG_NAME, "td")[0].text)
    assert "2 results" in driver.find_element(By.ID, "search-status").text

    # the results are live: a document that matches better enters at rank 1 without another
    # click, and leaves again when it is deleted
    _wait(
        driver,
        "the live indicator",
        lambda d: d.find_element(By.ID, "search-live").get_attribute("data-state") == "live",
    )
    assert driver.find_element(By.ID, "search-live").text == "live"
    assert [w["k"] for w in _watches(admin, library)] == [2]
    before = _results(driver)
    assert [name for _, name, _ in before] == ["Attention", title]
    best = f"Best {uuid.uuid4().hex[:6]}"
    doc = add_text(admin, library, best, "attention transformers")
    _wait(
        driver,
        "the better match at rank 1",
        lambda d: _titles(d) == [best, "Attention"],
    )
    top = _results(driver)
    assert top[0][2] == "attention transformers"
    assert float(top[0][0]) > float(top[1][0])
    assert top[1] == before[0]
    assert "2 results" in driver.find_element(By.ID, "search-status").text
    assert admin.delete(f"/v1/libraries/{library}/documents/{doc['id']}").status_code == 204
    _wait(driver, "the deleted match gone", lambda d: _results(d) == before)

    # connection statistics: this page's own SSE streams are counted (the feed, the search)
    _wait(driver, "the SSE stream count", lambda d: d.find_element(By.ID, "stat-sse").text == "2")
    shot = _screenshot(driver, "dashboard")
    assert shot.stat().st_size > 0

    # the key was entered once: kept for the tab (not in localStorage), not asked for again
    stored = driver.execute_script(
        "return [sessionStorage.getItem('arrwdb.key'), localStorage.length]"
    )
    assert stored == [ADMIN_KEY, 0]
    # a new search replaces the watch of the last one
    query = driver.find_element(By.ID, "search-query")
    query.clear()
    query.send_keys("nearest neighbours")
    k = driver.find_element(By.ID, "search-k")
    k.clear()
    k.send_keys("1")
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    _wait(
        driver,
        "the new search's result",
        lambda d: (
            _titles(d) == [title]
            and d.find_element(By.ID, "search-live").get_attribute("data-state") == "live"
        ),
    )
    assert [w["k"] for w in _watches(admin, library)] == [1]

    # leaving the page deletes its watch
    driver.refresh()
    _wait(driver, "the library list again", lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert not driver.find_element(By.ID, "key-panel").is_displayed()
    _until("the page's watch deleted", lambda: _watches(admin, library) == [])

    origin = secured.url + "/"
    assert all(url.startswith(origin) for url in _resources(driver)), _resources(driver)
    assert _csp_violations(driver) == []


def test_a_search_that_cannot_be_live_is_done_once(
    chrome: Any, make_server: Callable[..., BackgroundServer]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    live = make_server(max_watches_per_library=1)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        library = create_library(http, name="watched")["id"]
        add_text(http, library, "Attention", "Transformers use attention.")
        taken = http.post(f"/v1/libraries/{library}/watches", json={"query_text": "x", "k": 1})
        assert taken.status_code == 201, taken.text
        driver = chrome
        driver.get(live.url + "/ui")
        row = f'#libraries tr[data-library-id="{library}"]'
        _wait(driver, "the library list", lambda d: d.find_elements(By.CSS_SELECTOR, row))
        Select(driver.find_element(By.ID, "search-library")).select_by_value(library)
        driver.find_element(By.ID, "search-query").send_keys("attention")
        driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
        _wait(driver, "the one-off result", lambda d: _results(d))
        assert _titles(driver) == ["Attention"]
        status = driver.find_element(By.ID, "search-status").text
        assert "1 result" in status, status
        assert "not live" in status, status
        assert "max_watches_per_library" in status, status
        badge = driver.find_element(By.ID, "search-live")
        assert (badge.get_attribute("data-state"), badge.text) == ("down", "not live")
        assert [w["id"] for w in _watches(http, library)] == [taken.json()["id"]]

        # a library without an embedder: neither live nor once, and the page says why
        vectors = create_library(http, name="vectors", dimension=3, embedder=None)["id"]
        _wait(
            driver,
            "the second library",
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#search-library option[value="{vectors}"]'
            ),
        )
        Select(driver.find_element(By.ID, "search-library")).select_by_value(vectors)
        driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
        _wait(
            driver,
            "the search refused",
            lambda d: "search failed" in d.find_element(By.ID, "search-status").text,
        )
        assert "embedder" in driver.find_element(By.ID, "search-status").text
        assert not driver.find_element(By.ID, "results").is_displayed()
        badge = driver.find_element(By.ID, "search-live")
        assert (badge.get_attribute("data-state"), badge.text) == ("down", "not live")
        assert _watches(http, vectors) == []
    assert _csp_violations(driver) == []


def test_a_refused_key_is_asked_for_again(chrome: Any, secured: BackgroundServer) -> None:
    from selenium.webdriver.common.by import By

    driver = chrome
    driver.get(secured.url + "/ui")
    _wait(driver, "the key prompt", lambda d: d.find_element(By.ID, "key-input").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys("not-the-key")
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    _wait(
        driver,
        "the key refused",
        lambda d: "refused" in d.find_element(By.ID, "key-message").text,
    )
    assert driver.find_element(By.ID, "key-input").is_displayed()
    assert not driver.find_element(By.ID, "main").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('arrwdb.key')") is None


def test_api_page_in_chromium_offline(
    chrome: Any, secured: BackgroundServer, admin: httpx.Client
) -> None:
    """The API page loads Swagger UI from the server alone and sends the tab's key."""
    from selenium.webdriver.common.by import By

    create_library(admin, name="from-the-api-page")
    driver = chrome
    driver.get(secured.url + "/schema")
    _wait(driver, "the key prompt", lambda d: d.find_element(By.ID, "key-input").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    operations = ".swagger-ui .opblock"
    _wait(driver, "the operations", lambda d: len(d.find_elements(By.CSS_SELECTOR, operations)) > 5)
    assert "arrwDB" in driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text

    # "Try it out" on GET /v1/libraries: sent with the key, answered 200
    block = driver.find_element(By.CSS_SELECTOR, "#operations-libraries-V1LibrariesListLibraries")
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    _wait(driver, "Try it out", lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    _wait(driver, "Execute", lambda d: block.find_elements(By.CSS_SELECTOR, ".execute"))
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    _wait(
        driver,
        "the answer",
        lambda d: "from-the-api-page" in block.text and "200" in block.text,
    )
    _screenshot(driver, "api-page")
    origin = secured.url + "/"
    assert all(url.startswith(origin) for url in _resources(driver)), _resources(driver)
    assert _csp_violations(driver) == []


def test_without_keys_the_dashboard_asks_for_none(
    chrome: Any, make_server: Callable[..., BackgroundServer]
) -> None:
    from selenium.webdriver.common.by import By

    live = make_server()
    with httpx.Client(base_url=live.url, timeout=10) as http:
        library = create_library(http, name="open")["id"]
    driver = chrome
    driver.get(live.url + "/ui")
    row = f'#libraries tr[data-library-id="{library}"]'
    _wait(driver, "the library list", lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert not driver.find_element(By.ID, "key-panel").is_displayed()
    assert not driver.find_element(By.ID, "forget-key").is_displayed()
    _wait(
        driver,
        "the live stream",
        lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live",
    )
