"""circuitsvis views (attention pattern, per-token H and ‖q‖) that render with no network.

circuitsvis' own `render` picks its CDN whenever the machine is online; here the JavaScript
bundle that ships inside the circuitsvis package is always inlined instead.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import circuitsvis
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.metrics import attention_entropy, query_norm


@lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis' browser bundle (defines the global `CircuitsVis`), safe to inline."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise SpectraError(f"circuitsvis' JavaScript bundle is missing at {path}.")
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("//# sourceMappingURL")]
    return "\n".join(lines).replace("</script", "<\\/script")


def json_for_script(value: object) -> str:
    """JSON that can sit inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


@dataclass(frozen=True)
class CircuitsVisHTML:
    """A circuitsvis element as standalone HTML; Jupyter shows it, `str()` gives the source."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def bundle_html() -> CircuitsVisHTML:
    """The bundle alone, made global: display it once, then views made with `bundle=False`
    are a few kB each instead of 1.3 MB (what a page of many redraws, e.g. a widget, wants)."""
    return CircuitsVisHTML(f"<script>\n{bundle_js()}\nwindow.CircuitsVis = CircuitsVis;\n</script>")


def render_local(component: str, bundle: bool = True, **props: object) -> CircuitsVisHTML:
    """Render a circuitsvis React component from the local bundle (no CDN, no network).

    `bundle=True` inlines the bundle (standalone HTML); `bundle=False` relies on `bundle_html()`
    having been displayed earlier on the page.
    """
    div = f"spectra-cv-{uuid.uuid4().hex[:12]}"
    clean = {k: _plain(v) for k, v in props.items() if v is not None}
    source = f"{bundle_js()}\n" if bundle else ""
    cv = "CircuitsVis" if bundle else "window.CircuitsVis"
    html = (
        f'<div id="{div}" style="margin: 10px 0;"></div>\n'
        f"<script>\n{source}"
        f'{cv}.render("{div}", {cv}.{component}, {json_for_script(clean)});\n'
        "</script>"
    )
    return CircuitsVisHTML(html)


def _plain(value: object) -> object:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return np.round(value.astype(np.float64), 5).tolist()
        return value.tolist()
    return value


def pattern_view(
    token_strs: list[str], pattern: Float[np.ndarray, "query key"], bundle: bool = True
) -> CircuitsVisHTML:
    """One head's attention pattern (rows: query tokens, columns: keys)."""
    pattern = np.asarray(pattern, dtype=np.float32)
    if pattern.shape != (len(token_strs), len(token_strs)):
        raise SpectraError(
            f"pattern has shape {pattern.shape} but there are {len(token_strs)} tokens."
        )
    return render_local(
        "AttentionPattern",
        bundle,
        tokens=list(token_strs),
        attention=pattern,
        maxValue=1.0,
        minValue=0.0,
        maskUpperTri=True,
        showAxisLabels=True,
    )


def token_view(
    token_strs: list[str],
    qnorm: Float[np.ndarray, " pos"],
    entropy: Float[np.ndarray, " pos"],
    bundle: bool = True,
) -> CircuitsVisHTML:
    """Tokens coloured by H or by ‖q‖ (a toggle), the two numbers on hover."""
    values = np.stack([np.asarray(entropy), np.asarray(qnorm)], axis=1).astype(np.float64)
    if values.shape[0] != len(token_strs):
        raise SpectraError(f"{values.shape[0]} values for {len(token_strs)} tokens.")
    return render_local(
        "ColoredTokensMulti",
        bundle,
        tokens=list(token_strs),
        values=values,
        labels=["entropy H (nats)", "‖q‖"],
    )


@dataclass(frozen=True)
class HeadRun:
    """One head on one text: its tokens, attention pattern, and per-token ‖q‖ and H."""

    token_strs: list[str]
    pattern: Float[np.ndarray, "query key"]
    qnorm: Float[np.ndarray, " pos"]
    entropy: Float[np.ndarray, " pos"]


def _check_head(model: object, layer: int, head: int) -> None:
    cfg = model.cfg  # type: ignore[attr-defined]
    if not 0 <= layer < cfg.n_layers:
        raise SpectraError(f"layer {layer} is out of range: the model has {cfg.n_layers} layers.")
    if not 0 <= head < cfg.n_heads:
        raise SpectraError(f"head {head} is out of range: the model has {cfg.n_heads} heads.")


def run_head(model: object, text: str, layer: int, head: int) -> HeadRun:
    """Run the model on `text` with hooks on one layer only; keep one head's pattern, ‖q‖, H."""
    _check_head(model, layer, head)
    tokens = model.to_tokens(text)  # type: ignore[attr-defined]
    token_strs = [str(s) for s in model.to_str_tokens(tokens[0])]  # type: ignore[attr-defined]
    kept: dict[str, Tensor] = {}

    def keep_pattern(pattern: Tensor, hook: object) -> None:
        one = pattern[:1, head : head + 1].detach()
        kept["pattern"] = one[0, 0].float().cpu()
        kept["entropy"] = attention_entropy(one)[0, 0].cpu()

    def keep_q(q: Tensor, hook: object) -> None:
        kept["qnorm"] = query_norm(q[:1, :, head : head + 1].detach())[0, 0].cpu()

    hooks = [
        (f"blocks.{layer}.attn.hook_pattern", keep_pattern),
        (f"blocks.{layer}.attn.hook_q", keep_q),
    ]
    with torch.inference_mode():
        model.run_with_hooks(  # type: ignore[attr-defined]
            tokens, fwd_hooks=hooks, stop_at_layer=layer + 1, return_type=None
        )
    return HeadRun(
        token_strs, kept["pattern"].numpy(), kept["qnorm"].numpy(), kept["entropy"].numpy()
    )


def attention_view(model: object, text: str, layer: int, head: int) -> CircuitsVisHTML:
    """The attention pattern of (layer, head) on `text`, as circuitsvis HTML."""
    run = run_head(model, text, layer, head)
    return pattern_view(run.token_strs, run.pattern)


def head_token_view(model: object, text: str, layer: int, head: int) -> CircuitsVisHTML:
    """The tokens of `text` coloured by this head's H and ‖q‖."""
    run = run_head(model, text, layer, head)
    return token_view(run.token_strs, run.qnorm, run.entropy)
