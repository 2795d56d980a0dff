"""The explorer page in headless Chromium, offline: every head drawn, a clean console, hover and selection.

Pixels are read back from the page's canvases and compared with the colours the weights should have, so a heatmap
that is blank, misplaced or drawn from the wrong bytes fails.
"""

import base64

import matplotlib
import numpy as np
import pytest
import torch

from minigpt.explorer import explorer_html, token_texts
from minigpt.plots import layer_head_summaries
from tests.browser import browser_or_skip, chromium
from tests.explorer_pages import BYTES, PROBE, expected_bytes, page_for, patterned_attention

browser_or_skip()  # this module is skipped without a browser, or fails where CI requires one

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

VIRIDIS = (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
LATER_KEY = (238, 239, 242)  # the page's colour for a key after the query (explorer.js: FUTURE)


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def open_page(browser, tmp_path, page: str) -> None:
    path = tmp_path / "explorer.html"
    path.write_text(page, encoding="utf-8")
    browser.get(path.as_uri())


def console_problems(browser) -> list[dict]:
    """Errors and warnings logged since the last call, but the one the tests' own pixel readbacks cause."""
    return [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING") and "willReadFrequently" not in entry["message"]
    ]


def canvas_pixels(browser, css: str) -> list[np.ndarray]:
    """RGB pixels (h, w, 3) of every canvas matching css, read back from the page."""
    encoded = browser.execute_script(
        """return [...document.querySelectorAll(arguments[0])].map((c) => {
             const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
             let s = ""; for (let k = 0; k < d.length; k++) s += String.fromCharCode(d[k]);
             return [c.width, c.height, btoa(s)];
           });""",
        css,
    )
    return [np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(h, w, 4)[..., :3] for w, h, data in encoded]


def hover_cell(browser, canvas, i: int, j: int) -> None:
    """Move the pointer to the centre of cell (query i, key j) of an enlarged heatmap."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", canvas)
    left, top = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top]", canvas)
    x0, y0, cell = (float(canvas.get_attribute(f"data-{k}")) for k in ("x0", "y0", "cell"))
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(round(left + x0 + (j + 0.5) * cell), round(top + y0 + (i + 0.5) * cell))
    actions.perform()


def expected_thumbnail(stored: np.ndarray, T: int) -> np.ndarray:
    """(T, T, 3): viridis of each stored byte in the lower triangle, the later-key grey above it."""
    image = np.empty((T, T, 3), dtype=np.uint8)
    image[:] = LATER_KEY
    rows, cols = np.tril_indices(T)
    image[rows, cols] = VIRIDIS[stored]
    return image


def check_every_head_drawn(browser, weights, T):
    thumbs = canvas_pixels(browser, "#heads canvas.thumb")
    stored = expected_bytes(weights).numpy()
    assert len(thumbs) == len(stored)
    for head, pixels in enumerate(thumbs):
        np.testing.assert_array_equal(pixels, expected_thumbnail(stored[head], T), err_msg=f"head {head}")
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#heads canvas.thumb')].map((c) => c.getBoundingClientRect().width)"
    )
    assert min(sizes) >= 36  # on screen, not collapsed


@pytest.mark.parametrize("n_layer,n_head", [(4, 4), (12, 12)], ids=["default", "gpt2-small"])
def test_every_head_is_drawn_and_the_console_is_clean(browser, tmp_path, n_layer, n_head):
    page, weights = page_for(n_layer, n_head, T=64, header={"model": "m", "step": 7, "source": "runs/x"})
    open_page(browser, tmp_path, page)
    check_every_head_drawn(browser, weights, 64)
    about = browser.find_element(By.ID, "about").text.split("\n")
    assert about == ["model", "m", "step", "7", "source", "runs/x", "tokens", "64"]
    # Nothing was fetched (the page itself came from a file) and nothing went wrong.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert console_problems(browser) == []


def test_hover_and_selection_change_what_is_highlighted(browser, tmp_path):
    T = 64
    page, weights = page_for(4, 4, T=T)
    open_page(browser, tmp_path, page)
    stored = expected_bytes(weights).numpy()
    weight = lambda head, i, j: (stored[head][i * (i + 1) // 2 + j] / 255) ** 2  # noqa: E731
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(tokens) == T and tokens[0].text == "d" and tokens[3].text == "␣"  # whitespace visible
    lit = lambda: [float(t.get_attribute("data-weight")) for t in tokens]  # noqa: E731

    # No head selected: hovering a token lights nothing.
    ActionChains(browser).move_to_element(tokens[20]).perform()
    assert max(lit()) == 0

    # Select layer 1 head 2 (id 6): it is enlarged and drawn, the token view follows it.
    head = browser.find_element(By.CSS_SELECTOR, '.head[data-layer="1"][data-head="2"]')
    head.click()
    assert head.get_attribute("aria-pressed") == "true"
    (card,) = browser.find_elements(By.CSS_SELECTOR, "#detail .card")
    assert card.get_attribute("data-layer") == "1" and "head L1 H2" in browser.find_element(By.ID, "token-head").text
    (before,) = canvas_pixels(browser, "#detail canvas.big")
    assert len(np.unique(before.reshape(-1, 3), axis=0)) > 20  # a heatmap with labels, not a blank canvas

    # Hover token 20 as a query: the keys it reads light up by weight, and its row is outlined in the heatmap.
    ActionChains(browser).move_to_element(tokens[21]).move_to_element(tokens[20]).perform()
    np.testing.assert_allclose(lit(), [weight(6, 20, j) if j <= 20 else 0 for j in range(T)], atol=1e-4)
    assert "anchor" in tokens[20].get_attribute("class")
    (row_outlined,) = canvas_pixels(browser, "#detail canvas.big")
    assert (row_outlined != before).any()
    readout = browser.find_element(By.ID, "token-readout").text
    top_key = max(range(21), key=lambda j: weight(6, 20, j))
    assert readout.startswith("L1 H2 query 20 ") and f"{top_key} “" in readout.split("reads:")[1].split("·")[0]

    # Turned round: token 20 as a key, lit by how much each later query reads it.
    browser.find_element(By.ID, "direction").click()
    ActionChains(browser).move_to_element(tokens[21]).move_to_element(tokens[20]).perform()
    np.testing.assert_allclose(lit(), [weight(6, i, 20) if i >= 20 else 0 for i in range(T)], atol=1e-4)
    (column_outlined,) = canvas_pixels(browser, "#detail canvas.big")
    assert (column_outlined != row_outlined).any()

    # Hover a cell of the enlarged heatmap: the readout names query, key and weight; the tokens follow.
    i, j = 30, 27
    hover_cell(browser, browser.find_element(By.CSS_SELECTOR, "#detail canvas.big"), i, j)
    readout = card.find_element(By.CSS_SELECTOR, ".readout").text
    assert readout == f"query 30 “{PROBE[30]}” → key 27 “{PROBE[27]}”: weight {weight(6, i, j):.3f}"
    assert "anchor" in tokens[30].get_attribute("class") and "mark" in tokens[27].get_attribute("class")

    # A second head: two cards, the last selected on top; closing one leaves the other.
    browser.find_element(By.CSS_SELECTOR, '.head[data-layer="0"][data-head="3"]').click()
    cards = browser.find_elements(By.CSS_SELECTOR, "#detail .card")
    assert [(c.get_attribute("data-layer"), c.get_attribute("data-head")) for c in cards] == [("0", "3"), ("1", "2")]
    assert "head L0 H3" in browser.find_element(By.ID, "token-head").text
    cards[1].find_element(By.CSS_SELECTOR, ".close").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#detail .card")) == 1
    assert head.get_attribute("aria-pressed") == "false"
    assert console_problems(browser) == []


def test_one_click_ranks_heads_by_a_score_and_the_slider_filters_them(browser, tmp_path):
    page, _ = page_for(4, 4, T=64)
    open_page(browser, tmp_path, page)
    scores = {s: np.array(v) for s, v in zip(*browser.execute_script(
        "const d = JSON.parse(document.getElementById('explorer-data').textContent);"
        "return [d.scores.map((s) => s.name), d.scores.map((s) => s.values)]"
    ), strict=True)}  # fmt: skip
    order = lambda: [  # noqa: E731
        (int(h.get_attribute("data-layer")), int(h.get_attribute("data-head")))
        for h in browser.find_elements(By.CSS_SELECTOR, "#heads .head")
        if h.is_displayed()
    ]
    assert order() == [(layer, head) for layer in range(4) for head in range(4)]  # layer x head to start with

    browser.find_element(By.CSS_SELECTOR, '.rank[data-score="prev_token"]').click()
    ranked = order()
    values = [scores["prev_token"][lh] for lh in ranked]
    assert values == sorted(values, reverse=True) and len(ranked) == 16
    first = browser.find_element(By.CSS_SELECTOR, "#heads .head .name").text
    assert first == f"#1 L{ranked[0][0]} H{ranked[0][1]}"

    browser.find_element(By.CSS_SELECTOR, '.rank[data-score="prev_token"]').click()  # again: reversed
    assert [scores["prev_token"][lh] for lh in order()] == sorted(values)

    browser.find_element(By.CSS_SELECTOR, '.rank[data-score="entropy"]').click()  # low entropy is notable: first
    entropies = [scores["entropy"][lh] for lh in order()]
    assert entropies == sorted(entropies)

    # The slider keeps heads on the good side of a threshold: at its end, only the most focused head(s).
    browser.find_element(By.ID, "threshold").send_keys(Keys.HOME)
    kept = order()
    assert kept == [lh for lh in order() if scores["entropy"][lh] == min(entropies)] and 1 <= len(kept) < 16
    assert browser.find_element(By.ID, "shown-count").text == f"{len(kept)} of 16 heads"
    browser.find_element(By.CSS_SELECTOR, '.rank[data-score=""]').click()
    assert len(order()) == 16
    assert console_problems(browser) == []


def test_the_page_works_in_a_sandboxed_iframe_as_wandb_shows_it(browser, tmp_path):
    """W&B's HTML panel loads the logged file in `<iframe sandbox="allow-same-origin allow-scripts">`, often small."""
    page, weights = page_for(4, 4, T=64)
    (tmp_path / "explorer.html").write_text(page, encoding="utf-8")
    host = (
        '<!DOCTYPE html><html><body style="margin:0"><iframe id="panel" src="explorer.html" '
        'sandbox="allow-same-origin allow-scripts" style="width:480px;height:360px;border:0"></iframe></body></html>'
    )
    (tmp_path / "host.html").write_text(host, encoding="utf-8")
    browser.get((tmp_path / "host.html").as_uri())
    browser.switch_to.frame(browser.find_element(By.ID, "panel"))
    try:
        check_every_head_drawn(browser, weights, 64)
        browser.find_element(By.CSS_SELECTOR, '.head[data-layer="3"][data-head="1"]').click()
        assert len(canvas_pixels(browser, "#detail canvas.big")) == 1
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 480 + 1  # no sideways scroll
    finally:
        browser.switch_to.default_content()
    assert console_problems(browser) == []


def test_the_probe_text_reads_once_in_the_token_view(browser, tmp_path):
    page, _ = page_for(1, 1, T=64)
    open_page(browser, tmp_path, page)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#tokens .tok')].map((t) => [...t.childNodes]"
        "  .filter((n) => !(n.classList && n.classList.contains('cont'))).map((n) => n.textContent).join(''))"
    )
    text = PROBE.encode()[:64].decode()  # the first 64 byte tokens end on a whole character
    assert "".join(shown) == text.replace(" ", "␣").replace("\n", "↵").replace("\t", "→")
    assert console_problems(browser) == []


def test_heads_rank_by_their_induction_ablation_negative_values_included(browser, tmp_path):
    ids = BYTES.encode_ordinary(PROBE)[:32]
    weights = patterned_attention(2, 3, 32)
    ablation = torch.tensor([[0.3, -0.2, 2.5], [0.0, 1.1, -0.7]])  # nats; a head can also hurt (negative)
    scores = layer_head_summaries(weights) | {"induction_ablation": ablation}
    open_page(browser, tmp_path, explorer_html(weights, token_texts(BYTES, ids), scores, {"step": 1}))
    rank = browser.find_element(By.CSS_SELECTOR, '.rank[data-score="induction_ablation"]')
    assert "zeroed" in rank.get_attribute("title")  # the score's note says what it is
    rank.click()
    order = [
        (int(h.get_attribute("data-layer")), int(h.get_attribute("data-head")))
        for h in browser.find_elements(By.CSS_SELECTOR, "#heads .head")
        if h.is_displayed()
    ]
    assert order == [(0, 2), (1, 1), (0, 0), (1, 0), (0, 1), (1, 2)]  # the heads the model needs most first
    assert console_problems(browser) == []
