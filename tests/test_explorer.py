"""The explorer page as text: readable tokens, stored weights, sizes, self-containment, bad input.

Its behaviour in a browser is tested in test_explorer_browser.py.
"""

import re

import pytest
import torch

from minigpt.explorer import explorer_html, token_texts
from minigpt.model import GPTConfig
from minigpt.plots import layer_head_summaries
from tests.explorer_pages import BYTES, expected_bytes, page_data, page_for, patterned_attention, stored_bytes
from tests.skips import gpt2_or_skip


def test_tokens_show_whitespace_raw_and_a_split_character_whole_on_each_of_its_tokens():
    ids = BYTES.encode_ordinary("a\té—") + [0xFF]  # é: 2 bytes, —: 3 bytes, then a byte that is not UTF-8
    tokens = token_texts(BYTES, ids)
    assert [t["text"] for t in tokens] == ["a", "\t", "é", "é", "—", "—", "—", "\\xff"]
    assert [t["label"] for t in tokens] == ["a", "\t", "é₁⁄₂", "é₂⁄₂", "—₁⁄₃", "—₂⁄₃", "—₃⁄₃", "\\xff"]
    assert [t["lead"] for t in tokens] == [0, 0, 0, 1, 0, 1, 1, 0]  # characters begun in an earlier token
    assert tokens[3]["part"] == "byte 2 of 2 of é (U+00E9)" and tokens[0]["part"] == ""


def test_gpt2_tokens_that_cut_an_emoji_name_the_bytes_they_hold():
    gpt2 = gpt2_or_skip()
    ids = gpt2.encode_ordinary("I like 🐱 and café")
    tokens = token_texts(gpt2, ids)
    assert "".join(t["text"][t["lead"] :] for t in tokens) == "I like 🐱 and café"  # each character once
    cut = [t for t in tokens if t["part"]]
    assert [t["part"] for t in cut] == [
        "bytes 1-2 of 4 of 🐱 (U+1F431)",
        "byte 3 of 4 of 🐱 (U+1F431)",
        "byte 4 of 4 of 🐱 (U+1F431)",
    ]
    assert cut[0]["label"] == " 🐱₁₋₂⁄₄"


def test_weights_are_stored_as_square_root_bytes_of_the_lower_triangle_within_half_a_step():
    page, weights = page_for(n_layer=2, n_head=3, T=20)
    stored = stored_bytes(page)
    assert torch.equal(stored, expected_bytes(weights))
    rows, cols = torch.tril_indices(20, 20)
    read_back = (stored.float() / 255) ** 2  # what the page shows
    error = (read_back - torch.cat(weights)[:, rows, cols]).abs().max().item()
    assert 0 < error <= 1 / 255  # half a step of 1/255 on the square-root scale: at most (2 + 1/255) / 510
    data = page_data(page)
    assert (data["n_layer"], data["n_head"], data["T"]) == (2, 3, 20)
    assert [s["name"] for s in data["scores"]] == ["entropy", "prev_token", "first_token"]
    assert data["scores"][0]["low_first"] and not data["scores"][1]["low_first"]  # focused heads rank first
    summaries = layer_head_summaries(weights)
    torch.testing.assert_close(torch.tensor(data["scores"][1]["values"]), summaries["prev_token"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "config,limit",
    [(GPTConfig(n_layer=12, n_head=12), 1_500_000), (GPTConfig(n_layer=4, n_head=4), 300_000)],
    ids=["gpt2-small", "default"],
)
def test_page_size_at_64_tokens(config, limit):
    page, _ = page_for(config.n_layer, config.n_head, T=64)
    size = len(page.encode("utf-8"))
    assert size <= limit, f"{config.n_layer} x {config.n_head} heads at 64 tokens: {size:,} bytes > {limit:,}"


def test_a_long_probe_is_shown_cut_to_its_first_64_tokens_and_the_header_says_so():
    T = 100
    weights = patterned_attention(1, 2, T)
    ids = BYTES.encode_ordinary("x" * T)
    page = explorer_html(weights, token_texts(BYTES, ids), {}, {"model": "m", "step": None, "source": ""})
    data = page_data(page)
    assert data["T"] == 64 and len(data["tokens"]) == 64 and stored_bytes(page).shape == (2, 64 * 65 // 2)
    assert data["header"] == [["model", "m"], ["tokens", "the first 64 of 100"]]  # empty values left out


def test_the_page_fetches_nothing_and_token_text_cannot_break_out_of_it():
    text = "</script>{{script}}"  # would end the data's element; would be filled in by a second substitution
    T = len(text)
    ids = BYTES.encode_ordinary(text)
    page = explorer_html(patterned_attention(1, 1, T), token_texts(BYTES, ids), {}, {"source": "<b>run</b>"})
    assert page.count("</script>") == 2  # the data's element and the script's
    assert page.count('"use strict"') == 1  # the script once
    assert "".join(t["text"] for t in page_data(page)["tokens"]) == text
    assert "<title>attention explorer · &lt;b&gt;run&lt;/b&gt;</title>" in page
    # Nothing that loads a resource: no URL, no src/href attribute, no CSS import or url(); a policy forbidding it.
    assert not re.search(r"https?:|//cdn|\bsrc=|\bhref=|@import|url\(", page, re.I)
    assert "default-src 'none'" in page


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda w, t, s: ([x.transpose(1, 2) for x in w], t, s), "rows must sum to 1"),
        (lambda w, t, s: (w, t[:-1], s), "7 tokens for attention over 8 tokens"),
        (lambda w, t, s: (w, t, {"induction": torch.zeros(3, 2)}), "score 'induction' has shape (3, 2)"),
        (lambda w, t, s: ([], t, s), "no attention weights"),
        (lambda w, t, s: (w + patterned_attention(1, 3, 8), t, s), "layers' attention shapes differ"),
        (lambda w, t, s: ([torch.ones(2, 8, 8) / 8] * 2, t, s), "attention weights are not causal"),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_is_wrong(change, message):
    weights = patterned_attention(2, 2, 8)
    tokens = token_texts(BYTES, list(range(97, 105)))
    weights, tokens, scores = change(weights, tokens, layer_head_summaries(weights))
    with pytest.raises(ValueError, match=re.escape(message)):
        explorer_html(weights, tokens, scores, {})
