"""circuitsvis views: the bundle is inlined (never the CDN), and a model run keeps one head."""

import re

import numpy as np
import pytest
from browser import open_page

from spectra_interp.errors import SpectraError
from spectra_interp.extract import extract
from spectra_interp.viz import attention

TOKENS = ["<s>", "The", " cat", " sat"]


def _causal(t: int) -> np.ndarray:
    p = np.tril(np.ones((t, t)))
    return p / p.sum(-1, keepdims=True)


def test_bundle_is_inline_safe_and_has_no_source_map():
    js = attention.bundle_js()
    assert "var CircuitsVis" in js
    assert "</script" not in js
    assert "sourceMappingURL" not in js


def test_pattern_view_is_circuitsvis_local_html_offline():
    view = attention.pattern_view(TOKENS, _causal(4))
    html = view._repr_html_()  # this machine is offline: circuitsvis picks its local bundle
    assert html == view.local_src
    assert "CircuitsVis.AttentionPattern" in html and "var CircuitsVis" in html
    assert "unpkg" not in html and not re.search(r"""src=["']https?://""", html)
    assert '"tokens": ["<s>", "The", " cat", " sat"]' in html
    assert "[0.5, 0.5, 0.0, 0.0]" in html


def test_token_view_carries_both_values_per_token():
    view = attention.token_view(TOKENS, np.arange(4.0), np.array([0.0, 0.7, 1.0, 1.3]))
    html = view._repr_html_()
    assert "CircuitsVis.ColoredTokensMulti" in html
    assert "[1.2999999523162842, 3.0]" in html or "[1.3, 3.0]" in html
    assert '"entropy H (nats)"' in html


def test_views_reject_shapes_that_do_not_match_the_tokens():
    with pytest.raises(SpectraError, match="4 tokens"):
        attention.pattern_view(TOKENS, _causal(3))
    with pytest.raises(SpectraError, match="3 values for 4 tokens"):
        attention.token_view(TOKENS, np.ones(3), np.ones(3))


@pytest.mark.slow
def test_attention_view_runs_one_layer_of_smollm2(smollm2):
    text = "The quick brown fox jumps over the lazy dog."
    run = attention.run_head(smollm2, text, layer=3, head=2)
    t = len(run.token_strs)
    assert t > 5 and run.token_strs[1] == "The"
    assert run.pattern.shape == (t, t)
    assert np.allclose(run.pattern.sum(-1), 1, atol=1e-4)
    assert np.allclose(np.triu(run.pattern, 1), 0)
    assert run.entropy[0] == pytest.approx(0, abs=1e-6)
    assert (run.entropy <= np.log(np.arange(1, t + 1)) + 1e-4).all()
    assert (run.qnorm > 0).all()
    tokens = smollm2.to_tokens(text)
    full = extract(smollm2, tokens)
    assert np.allclose(run.qnorm, full.qnorm[0, 3, 2].numpy(), rtol=1e-4)
    assert np.allclose(run.entropy, full.entropy[0, 3, 2].numpy(), atol=1e-5)
    html = attention.attention_view(smollm2, text, 3, 2)._repr_html_()
    assert "CircuitsVis.AttentionPattern" in html and '" fox"' in html
    token_html = attention.head_token_view(smollm2, text, 3, 2)._repr_html_()
    assert "CircuitsVis.ColoredTokensMulti" in token_html
    with pytest.raises(SpectraError, match="head 9 is out of range"):
        attention.run_head(smollm2, text, layer=0, head=9)


def test_views_render_in_headless_chromium_offline(tmp_path):
    """Each view on its own page, as a notebook shows each output: it draws, offline."""
    views = {
        "pattern": (attention.pattern_view(TOKENS, _causal(4)), "canvas"),
        "tokens": (
            attention.token_view(TOKENS, np.arange(4.0), np.array([0.0, 0.7, 1.0, 1.3])),
            "span",
        ),
    }
    pages = []
    with open_page() as seen:
        page = seen.page
        for name, (view, element) in views.items():
            path = tmp_path / f"{name}.html"
            path.write_text(f"<html><body>{view._repr_html_()}</body></html>")
            pages.append(path.as_uri())
            page.goto(path.as_uri())
            page.wait_for_selector(f"div[id^=circuits-vis-] {element}", timeout=30_000)
        page.wait_for_function("document.body.innerText.includes('cat')")
    assert seen.errors == []
    assert seen.requests == pages
