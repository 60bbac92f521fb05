"""The /ui/ playground in a real browser: sign in, recommend, click, see the list change."""

from __future__ import annotations

import re

import pytest

from tests.serving.conftest import LiveService

TIMEOUT_MS = 15_000


@pytest.fixture
def page(browser, playground: LiveService):
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    page.problems = problems
    yield page
    context.close()


def row_items(page) -> list[str]:
    return page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.item)")


def test_sign_in_recommend_click_and_the_list_changes_at_once(
    page, playground: LiveService, artifacts_dir
):
    from playwright.sync_api import expect

    response = page.goto(f"{playground.url}/ui")
    assert response is not None
    assert response.ok
    assert page.url.endswith("/ui/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    page.fill("#token", playground.token("1", "recommend", "events:write"))
    page.click("#sign-in")
    expect(page.locator("#who")).to_contain_text("Signed in as 1")
    assert page.evaluate("sessionStorage.length") == 1
    expect(page.locator("#user-id")).to_have_value("1")

    page.fill("#k", "10")
    page.click("#recommend")
    expect(page.locator("#results tbody tr")).to_have_count(10)
    expect(page.locator("#meta-cached")).to_have_text("no")
    expect(page.locator("#meta-fallback")).to_have_text("no")
    expect(page.locator("#meta-latency")).to_contain_text(re.compile(r"\d+\.\d ms"))
    expect(page.locator("#experts .expert-row")).to_have_count(len(playground_layers(page)))
    expect(page.locator("#experts")).to_contain_text("E")
    before = row_items(page)

    # The same request again is answered from the cache.
    page.click("#recommend")
    expect(page.locator("#meta-cached")).to_have_text("yes")
    assert row_items(page) == before

    clicked = before[-1]
    page.locator(f'#results tbody tr[data-item="{clicked}"] button.click').click()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text(f"click on {clicked} stored")
    expect(page.locator("#status")).to_contain_text("re-fetched")
    expect(page.locator("#meta-cached")).to_have_text("no")  # a new history version
    after = row_items(page)
    assert clicked not in after, "a clicked item joins the history, which is excluded"
    assert after != before
    assert page.locator("#results tbody tr.new").count() >= 1
    expect(page.locator("#recent")).to_contain_text(f"click {clicked}")

    # The live panel has scraped /metrics and drawn both charts.
    expect(page.locator("#counters")).to_contain_text(re.compile(r"\b[1-9]\d* events"))
    expect(page.locator("#expert-load")).to_have_attribute("data-bars", re.compile(r"[1-9]"))
    expect(page.locator("#latency")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    assert page.evaluate(CANVAS_HAS_INK, "expert-load")

    screenshot = artifacts_dir / "playground.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert page.problems == []


def test_anonymous_history_from_a_catalogue_search(page, playground: LiveService):
    from playwright.sync_api import expect

    page.goto(f"{playground.url}/ui/")
    page.fill("#token", playground.token("1", "recommend"))
    page.click("#sign-in")
    page.check("#mode-anonymous")
    page.fill("#search", "1")
    expect(page.locator("#search-results li button").first).to_be_enabled()
    page.locator("#search-results li button").first.click()
    expect(page.locator("#history-chips li")).to_have_count(1)
    page.fill("#k", "5")
    page.click("#recommend")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    expect(page.locator("#meta-history")).to_have_text("1 items")
    assert page.problems == []


def test_an_expired_or_wrong_token_shows_the_services_error(page, playground: LiveService):
    from playwright.sync_api import expect

    page.goto(f"{playground.url}/ui/")
    page.fill("#token", playground.token("2", "recommend"))  # may read only user 2
    page.click("#sign-in")
    page.fill("#user-id", "1")
    page.click("#recommend")
    expect(page.locator("#error")).to_contain_text("403 forbidden_user")


def playground_layers(page) -> list[int]:
    return page.locator("#experts .expert-layer").evaluate_all(
        "nodes => nodes.map(n => Number(n.textContent.replace('layer ', '')))"
    )


# True when the canvas has any non-transparent pixel.
CANVAS_HAS_INK = """id => {
  const c = document.getElementById(id);
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
  return false;
}"""
