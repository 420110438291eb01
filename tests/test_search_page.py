"""The search page of `clir serve` (GET /) in a real browser: headless Chromium from the system packages,
driven by Selenium, against a real `clir serve` subprocess on the tiny model. Every hit, document and error the
page shows is checked against what the REST API answers for the same request.

Skips with the reason where Chromium, chromedriver or Selenium is missing (CI installs Debian's `chromium`
and `chromium-driver` in .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from clir.testing import server_url, stop_server  # noqa: E402

KEY = "page-test-key-0123"
KEY_ENV = "CLIR_PAGE_TEST_KEY"
QUERY = "the cat sits on the mat"
LANGS = ("en", "de", "fa", "fr", "ru", "zh")
INDEXES = ["madx", "plain", "split", "doc-source", "doc-target"]
WAIT_S = 60  # generous upper bound for the page to settle; the waits return as soon as it has


# ---------------------------------------------------------------------- the page without a browser
@pytest.fixture(scope="module")
def keyed_client(tiny_bert, tiny_collection, tmp_path_factory, monkeypatch_module):
    from fastapi.testclient import TestClient

    from clir.serve import ServeSettings, create_app

    monkeypatch_module.setenv(KEY_ENV, KEY)
    index = _build_index(tiny_collection, str(tiny_bert), tmp_path_factory.mktemp("page") / "plain")
    app = create_app({"plain": index}, ServeSettings(api_key_env=KEY_ENV))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_page_and_assets_are_served_without_the_key_but_the_api_is_not(keyed_client):
    page = keyed_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>clir search</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    # every asset the page names is served, and none is external
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert sorted(assets) == ["docs", "ui/app.css", "ui/app.js"]
    for path in ("ui/app.js", "ui/app.css"):
        r = keyed_client.get(f"/{path}")
        assert r.status_code == 200 and r.content, path
        assert not re.search(r"https?://", r.text), f"{path} refers to an external address"
    assert keyed_client.get("/indexes").status_code == 401
    assert keyed_client.get("/indexes", headers={"X-API-Key": KEY}).status_code == 200
    # the page is not part of the API's description
    assert "/" not in keyed_client.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------------- fixtures: indexes, server, browser
def _build_index(
    collection: Path, model: str, out: Path, passage_length: int | None = None, doc_routing: str | None = None
) -> Path:
    from clir.index import IndexArgs, build_index
    from clir.index.passages import PassageSpec

    overrides: dict = {"precision": "fp32"}
    if doc_routing:
        overrides["routing"] = {"doc": doc_routing}
    args = IndexArgs(
        collection=str(collection),
        model=model,
        out=str(out),
        overrides=overrides,
        passages=PassageSpec(length=passage_length),
    )
    build_index(args)
    return out


def _long_docs(out: Path) -> Path:
    import json

    from clir.testing import _LINES

    out.mkdir(parents=True)
    docs = [
        {"doc_id": f"{lang}-all", "text": ". ".join(lines), "lang": lang} for lang, lines in _LINES.items()
    ]
    (out / "docs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return out


@pytest.fixture(scope="module")
def madx_model(tiny_bert, tmp_path_factory) -> Path:
    """A madx encoder whose query-side adapter follows the query language (routing query=target), with its
    language adapters saved in the folder: `en` and `de` queries then go through different adapters."""
    from clir.model import load_encoder

    enc = load_encoder(
        str(tiny_bert),
        {
            "adapter_mode": "madx",
            "language_adapters": {lang: "new" for lang in LANGS},
            "routing": {"query": "target", "doc": "source"},
            "pooling": "mean",
            "normalize": True,
            "precision": "fp32",
        },
    )
    return enc.save(tmp_path_factory.mktemp("madx") / "model", save_lang=LANGS)


@pytest.fixture(scope="module")
def server(tiny_bert, madx_model, tiny_collection, tmp_path_factory):
    """`clir serve` with an API key over a madx index (routable), a plain one, a split one, and a pair of
    indexes of one madx model whose documents went through the English adapter / their own language's (the
    paper's adapters: no French one), on a free loopback port."""
    from clir.testing import build_tiny_madx

    out = tmp_path_factory.mktemp("page-indexes")
    madx = _build_index(tiny_collection, str(madx_model), out / "madx")
    plain = _build_index(tiny_collection, str(tiny_bert), out / "plain")
    # one long document per language, in windows of 20 tokens: hits carry their best passage
    split = _build_index(_long_docs(out / "long"), str(tiny_bert), out / "split", passage_length=20)
    paper = str(build_tiny_madx(tiny_bert, out / "paper-madx"))
    pair = [f"{name}={_build_index(tiny_collection, paper, out / name, doc_routing=route)}"
            for name, route in (("doc-source", "source"), ("doc-target", "target"))]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{KEY_ENV: KEY})
    cmd = [sys.executable, "-m", "clir", "serve", "--index", f"madx={madx}", "--index", f"plain={plain}", "--index", f"split={split}",
           "--index", pair[0], "--index", pair[1],
           "--api-key-env", KEY_ENV, "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        url = server_url(proc, 600)  # a loaded CI machine is slow
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the pipe
        yield url
    finally:
        stop_server(proc)


def _browser_paths() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not browser or not driver:
        pytest.skip(
            "no system Chromium + chromedriver (Debian: apt-get install chromium chromium-driver); "
            f"found browser={browser}, driver={driver}"
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    from selenium.common.exceptions import WebDriverException

    browser_bin, driver_bin = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser_bin
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en-US",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        opts.add_argument(flag)
    try:
        # an explicit driver path: Selenium Manager never downloads a driver or a browser
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_bin))
    except WebDriverException as e:
        pytest.skip(f"system Chromium did not start: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser, server):
    """The page freshly loaded with the API key already entered (sessionStorage cleared first)."""
    browser.set_window_size(1280, 1000)
    browser.get(server + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(server + "/")
    _enter_key(browser, KEY)
    _wait(browser, lambda d: _options(d, "index-a") == INDEXES, "the index picker to fill")
    return browser


# ---------------------------------------------------------------------- helpers
def _wait(driver, cond, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(cond, f"timed out waiting for {what}")


def _by_id(driver, id_: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def _options(driver, select_id: str) -> list[str]:
    return driver.execute_script(
        "return [...document.getElementById(arguments[0]).options].map(o => o.value)", select_id
    )


def _message(driver) -> str:
    return driver.execute_script(
        "const m = document.getElementById('message'); return m.hidden ? '' : m.textContent"
    )


def _enter_key(driver, key: str) -> None:
    box = _by_id(driver, "key-box")
    if not box.get_attribute("open"):
        _by_id(driver, "key-box").find_element("tag name", "summary").click()
    field = _by_id(driver, "key-input")
    field.clear()
    field.send_keys(key)
    field.submit()


def _hits(driver, side: str = "a") -> list[dict]:
    """What the page shows for each hit of column `side`."""
    return driver.execute_script(
        """return [...document.querySelectorAll(`.column[data-side="${arguments[0]}"] .hit`)].map(li => ({
            rank: +li.querySelector('.rank').textContent, doc_id: li.querySelector('.doc-link').textContent,
            score: li.querySelector('.score').textContent, lang: li.querySelector('.lang-badge')?.textContent,
            text: li.querySelector('.text')?.textContent, move: li.querySelector('.move')?.dataset.move ?? null,
            href: li.querySelector('.doc-link').getAttribute('href')}))""",
        side,
    )


def _api_search(server: str, **body) -> list[dict]:
    import httpx

    r = httpx.post(
        f"{server}/search", json={"k": 10, "return_text": True, **body}, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def _search(driver, query: str, *, k: int | None = None) -> None:
    from selenium.webdriver.common.keys import Keys

    before = driver.execute_script("return document.getElementById('status').textContent")
    q = _by_id(driver, "q")
    q.clear()
    if k is not None:
        field = _by_id(driver, "k")
        field.clear()
        field.send_keys(str(k))
    q.send_keys(query, Keys.ENTER)
    _wait(
        driver,
        lambda d: (
            _message(d)
            or d.execute_script("return document.getElementById('status').textContent")
            not in (before, "Searching\u2026")
        ),
        "the search to finish",
    )


def _same_as_api(shown: list[dict], api: list[dict]) -> None:
    assert [h["doc_id"] for h in shown] == [h["doc_id"] for h in api]
    assert [h["rank"] for h in shown] == [h["rank"] for h in api]
    assert [h["score"] for h in shown] == [f"{h['score']:.4f}" for h in api]
    assert [h["lang"] for h in shown] == [h["lang"] for h in api]
    assert [h["text"] for h in shown] == [h["text"] for h in api]


def _check_moves(driver, a: list[dict], b: list[dict]) -> None:
    """B's hits are marked with their movement against A (up/down by how many, same, new); A's hits that B
    lacks are marked out; the status line counts them."""
    rank_a = {h["doc_id"]: h["rank"] for h in a}
    in_b = {h["doc_id"] for h in b}
    for h in b:
        ra = rank_a.get(h["doc_id"])
        want = "new" if ra is None else "same" if ra == h["rank"] else (
            f"up {ra - h['rank']}" if h["rank"] < ra else f"down {h['rank'] - ra}")  # fmt: skip
        assert h["move"] == want, h
    assert [h["move"] for h in a] == [None if h["doc_id"] in in_b else "out" for h in a]
    common = len(in_b & set(rank_a))
    assert f"{common} of {len(b)} hits in both" in _by_id(driver, "status").text


# ---------------------------------------------------------------------- the browser tests
def test_api_key_errors_then_search_and_document_view(browser, server):
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(1280, 1000)
    browser.get(server + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(server + "/")
    # no key yet: the API's 401 is shown as a message and the key field takes the focus
    _wait(browser, _message, "the missing-key message")
    assert "401 unauthorized: missing X-API-Key header" in _message(browser)
    assert browser.switch_to.active_element == _by_id(browser, "key-input")
    _enter_key(browser, "not-the-key")
    _wait(browser, lambda d: "wrong X-API-Key" in _message(d), "the wrong-key message")
    _enter_key(browser, KEY)
    _wait(browser, lambda d: _options(d, "index-a") == INDEXES, "the index picker to fill")
    assert _message(browser) == ""
    # the key is kept for this tab's session only, and survives a reload
    assert browser.execute_script("return sessionStorage.getItem('clir.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0
    browser.refresh()
    _wait(
        browser,
        lambda d: _options(d, "index-a") == INDEXES,
        "the index picker after a reload",
    )

    _search(browser, QUERY)
    shown = _hits(browser)
    assert len(shown) == 10
    _same_as_api(shown, _api_search(server, query=QUERY, index="madx", query_lang="en"))
    assert set(h["lang"] for h in shown) > {"de"}  # badges of several languages

    # open the second hit's document, then come back with Escape, to the link that opened it
    link = browser.find_elements("css selector", ".column .hit .doc-link")[1]
    link.click()
    _wait(browser, lambda d: _by_id(d, "doc-view").is_displayed(), "the document view")
    import httpx

    doc = httpx.get(f"{server}/indexes/madx/docs/{shown[1]['doc_id']}", headers={"X-API-Key": KEY}).json()
    _wait(browser, lambda d: _by_id(d, "doc").find_elements("css selector", ".text"), "the document text")
    assert _by_id(browser, "doc").find_element("css selector", ".text").text == doc["text"]
    assert _by_id(browser, "doc").find_element("css selector", ".lang-badge").text.lower() == doc["lang"]
    assert browser.current_url.endswith(shown[1]["href"])
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: _by_id(d, "search-view").is_displayed(), "the results again")
    assert browser.switch_to.active_element.text == shown[1]["doc_id"]

    # an unknown document is the API's 404, shown in the document view
    browser.get(f"{server}/#doc/madx/no-such-doc")
    _wait(browser, lambda d: "Opening the document failed" in _by_id(d, "doc").text, "the 404 message")
    assert "404 not_found" in _by_id(browser, "doc").text and "no-such-doc" in _by_id(browser, "doc").text


def test_api_errors_are_shown_as_messages(page, server):
    _search(page, QUERY, k=5000)
    assert "422 invalid_request: k: Input should be less than or equal to 1000" in _message(page)
    lang = _by_id(page, "lang-a")
    lang.clear()
    lang.send_keys("xx")
    _search(page, QUERY, k=3)
    assert "400 bad_request: no language adapter for 'xx'" in _message(page)
    lang.clear()
    lang.send_keys("en")
    _search(page, QUERY, k=3)
    assert _message(page) == "" and len(_hits(page)) == 3


def test_side_by_side_two_routings_shows_what_moved(page, server):
    _by_id(page, "compare").click()
    assert _by_id(page, "side-b").is_displayed()
    # same index on both sides; B swaps the query-side adapter to German
    assert _by_id(page, "index-b").get_attribute("value") == "madx"
    assert _by_id(page, "lang-b").get_attribute("value") == "de"
    _search(page, QUERY)
    a, b = _hits(page, "a"), _hits(page, "b")
    _same_as_api(a, _api_search(server, query=QUERY, index="madx", query_lang="en"))
    _same_as_api(b, _api_search(server, query=QUERY, index="madx", query_lang="de"))
    assert [h["doc_id"] for h in a] != [h["doc_id"] for h in b], "the two routings ranked alike"
    _check_moves(page, a, b)
    # the address names the search (not the key): a reload repeats it
    assert "q=the+cat+sits" in page.current_url and "lang_b=de" in page.current_url
    assert KEY not in page.current_url
    page.refresh()
    _wait(page, lambda d: len(_hits(d, "b")) == 10, "the search named in the address")
    assert _hits(page, "a") == a and _hits(page, "b") == b

    # a plain index has no adapters: its query language is fixed, and says why
    Select = pytest.importorskip("selenium.webdriver.support.select").Select
    Select(_by_id(page, "index-b")).select_by_value("plain")
    assert not _by_id(page, "lang-b").is_enabled()
    assert "no language adapters" in _by_id(page, "routing-b").text
    _search(page, QUERY)
    _same_as_api(_hits(page, "b"), _api_search(server, query=QUERY, index="plain"))


def test_two_document_routings_side_by_side(page, server):
    """The pair of indexes that differ only in document routing: one button shows them side by side for a
    query, with what moved marked and one sentence saying what the columns are."""
    assert not page.find_elements("id", "pair-note")
    _by_id(page, "q").send_keys(QUERY)
    before = page.execute_script("return document.getElementById('status').textContent")
    _by_id(page, "pair").click()
    _wait(
        page, lambda d: d.find_element("id", "status").text not in (before, "Searching\u2026"), "the search"
    )
    assert _message(page) == ""
    assert _by_id(page, "index-a").get_attribute("value") == "doc-source"
    assert _by_id(page, "index-b").get_attribute("value") == "doc-target"
    assert _by_id(page, "compare").is_selected() and _by_id(page, "side-b").is_displayed()
    a, b = _hits(page, "a"), _hits(page, "b")
    _same_as_api(a, _api_search(server, query=QUERY, index="doc-source"))
    _same_as_api(b, _api_search(server, query=QUERY, index="doc-target"))
    assert [h["score"] for h in a] != [h["score"] for h in b], "the two document routings scored alike"
    _check_moves(page, a, b)
    note = _by_id(page, "pair-note")
    assert note.is_displayed()
    sentence = note.text
    assert sentence.startswith(
        "Left: documents encoded through the English adapter; right: through each document\u2019s own language "
        "adapter (the MAD-X swap)."
    )
    # the tiny collection's three French documents: the paper's adapters have no French one
    assert sentence.endswith("No adapter for French (3 documents): they keep the English one on both sides.")
    heads = [h.text for h in page.find_elements("css selector", ".column h2")]
    assert heads == [
        "A: doc-source \u00b7 documents through the English adapter",
        "B: doc-target \u00b7 documents through each document\u2019s own language adapter",
    ]
    # the address names both sides: a reload shows the same comparison, sentence included
    assert "index_b=doc-target" in page.current_url
    page.refresh()
    _wait(page, lambda d: len(_hits(d, "b")) == len(b), "the comparison named in the address")
    assert _hits(page, "a") == a and _hits(page, "b") == b and _by_id(page, "pair-note").text == sentence
    # one column, or two indexes that are no such pair: no sentence
    _by_id(page, "compare").click()
    _search(page, QUERY)
    assert not page.find_elements("id", "pair-note")


def test_keyboard_alone_on_a_narrow_screen(page, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.set_window_size(390, 844)  # a phone
    page.execute_script("document.activeElement.blur()")  # focus on the page itself, in no field
    keys = ActionChains(page)
    keys.send_keys("/").perform()  # "/" jumps to the query box
    assert page.switch_to.active_element == _by_id(page, "q")
    keys.send_keys(QUERY, Keys.ENTER).perform()
    _wait(page, lambda d: _hits(d), "hits")
    # Tab from the query box reaches the first result's link; Enter opens it, Escape comes back
    for _ in range(40):
        ActionChains(page).send_keys(Keys.TAB).perform()
        if "doc-link" in (page.switch_to.active_element.get_attribute("class") or ""):
            break
    first = _hits(page)[0]
    assert page.switch_to.active_element.text == first["doc_id"]
    ActionChains(page).send_keys(Keys.ENTER).perform()
    _wait(page, lambda d: _by_id(d, "doc-view").is_displayed(), "the document view")
    ActionChains(page).send_keys(Keys.ESCAPE).perform()
    _wait(page, lambda d: _by_id(d, "search-view").is_displayed(), "the results again")
    # side by side stacks the columns on a narrow screen, and nothing scrolls sideways
    _by_id(page, "compare").send_keys(Keys.SPACE)
    _search(page, QUERY)
    cols = page.find_elements("css selector", ".column")
    assert len(cols) == 2 and cols[1].location["y"] > cols[0].location["y"] + cols[0].size["height"] - 1
    assert cols[0].size["width"] <= 390
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_best_passage_is_marked_in_hits_and_document(page, server):
    Select = pytest.importorskip("selenium.webdriver.support.select").Select
    Select(_by_id(page, "index-a")).select_by_value("split")
    _search(page, QUERY)
    api = _api_search(server, query=QUERY, index="split")
    _same_as_api(_hits(page), api)
    with_passage = [h for h in api if h.get("passage")]
    assert with_passage, "no hit of the split index carries a passage"
    marks = page.execute_script(
        """return [...document.querySelectorAll('.hit')].map(li => ({doc_id: li.dataset.docId,
            mark: li.querySelector('mark.passage')?.textContent ?? null,
            badge: li.querySelector('.passage-badge')?.textContent ?? null}))"""
    )
    by_id = {m["doc_id"]: m for m in marks}
    for h in api:
        p = h.get("passage")
        want = h["text"][p["start"] : p["end"]] if p else None
        assert by_id[h["doc_id"]]["mark"] == want, h
        assert by_id[h["doc_id"]]["badge"] == (f"passage {p['index'] + 1}" if p else None)
    # the document view marks the same passage in the whole text
    hit = with_passage[0]
    page.find_element("css selector", f'.hit[data-doc-id="{hit["doc_id"]}"] .doc-link').click()
    _wait(page, lambda d: d.find_elements("css selector", "#doc mark.passage"), "the marked passage")
    p = hit["passage"]
    assert (
        page.find_element("css selector", "#doc mark.passage").get_attribute("textContent")
        == hit["text"][p["start"] : p["end"]]
    )
