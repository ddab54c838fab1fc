"""circuitsvis views (attention pattern, per-token H and ‖q‖) of one head.

The views are circuitsvis's own (`RenderedHTML`: the local bundle inline when offline, its CDN
otherwise, as circuitsvis decides). The report inlines circuitsvis's browser bundle once and
renders the same components in the page; `bundle_js` reads that bundle from the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import circuitsvis
import numpy as np
import torch
from circuitsvis.attention import attention_pattern
from circuitsvis.tokens import colored_tokens_multi
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float

from spectra_interp.errors import SpectraError
from spectra_interp.extract.slices import attention_slice, check_head

TOKEN_VIEW_LABELS = ["entropy H (nats)", "‖q‖"]


@lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis' browser bundle (defines the global `CircuitsVis`), safe to inline: no
    `</script`, and no source-map comment (which would make a browser fetch a missing file)."""
    path = Path(str(circuitsvis.__file__)).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise SpectraError(f"circuitsvis' JavaScript bundle is missing at {path}.")
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("//# sourceMappingURL")]
    return "\n".join(lines).replace("</script", "<\\/script")


def pattern_view(token_strs: list[str], pattern: Float[np.ndarray, "query key"]) -> RenderedHTML:
    """One head's attention pattern (rows: query tokens, columns: keys)."""
    pattern = np.asarray(pattern, dtype=np.float32)
    if pattern.shape != (len(token_strs), len(token_strs)):
        raise SpectraError(
            f"pattern has shape {pattern.shape} but there are {len(token_strs)} tokens."
        )
    return attention_pattern(
        tokens=list(token_strs),
        attention=pattern,
        max_value=1.0,
        min_value=0.0,
        mask_upper_tri=True,
        show_axis_labels=True,
    )


def token_view(
    token_strs: list[str], qnorm: Float[np.ndarray, " pos"], entropy: Float[np.ndarray, " pos"]
) -> RenderedHTML:
    """Tokens coloured by H or by ‖q‖ (a toggle), the two numbers on hover."""
    values = np.stack([np.asarray(entropy), np.asarray(qnorm)], axis=1).astype(np.float32)
    if values.shape[0] != len(token_strs):
        raise SpectraError(f"{values.shape[0]} values for {len(token_strs)} tokens.")
    return colored_tokens_multi(
        tokens=list(token_strs), values=torch.from_numpy(values), labels=TOKEN_VIEW_LABELS
    )


@dataclass(frozen=True)
class HeadRun:
    """One head on one text: its tokens, attention pattern, and per-token ‖q‖ and H."""

    token_strs: list[str]
    pattern: Float[np.ndarray, "query key"]
    qnorm: Float[np.ndarray, " pos"]
    entropy: Float[np.ndarray, " pos"]


def run_head(model: Any, text: str, layer: int, head: int) -> HeadRun:
    """Run the model on `text` up to `layer`; keep one head's pattern, ‖q‖ and H
    (`extract.slices.attention_slice` over the whole text)."""
    check_head(model, layer, head)
    tokens = model.to_tokens(text)[0]
    token_strs = [str(s) for s in model.to_str_tokens(tokens)]
    kept = attention_slice(model, tokens, 0, len(tokens), layers=[layer], head=head)
    return HeadRun(
        token_strs,
        kept.pattern[0, 0].numpy(),
        kept.qnorm[0, 0].numpy(),
        kept.entropy[0, 0].numpy(),
    )


def attention_view(model: Any, text: str, layer: int, head: int) -> RenderedHTML:
    """The attention pattern of (layer, head) on `text`, as circuitsvis HTML."""
    run = run_head(model, text, layer, head)
    return pattern_view(run.token_strs, run.pattern)


def head_token_view(model: Any, text: str, layer: int, head: int) -> RenderedHTML:
    """The tokens of `text` coloured by this head's H and ‖q‖."""
    run = run_head(model, text, layer, head)
    return token_view(run.token_strs, run.qnorm, run.entropy)
