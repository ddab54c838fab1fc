"""TransformerLens hook names, from TransformerLens's own naming function: the one place Spectra
spells them."""

from __future__ import annotations

# Re-exported by transformer_lens.utilities without an __all__, hence the pyright rule.
from transformer_lens.utilities import get_act_name  # pyright: ignore[reportPrivateImportUsage]


def attn_hook(kind: str, layer: int) -> str:
    """`blocks.{layer}.attn.hook_{kind}` for kind in q, k, rot_q, rot_k, attn_scores, pattern."""
    return get_act_name(kind, layer, "attn")


def resid_post(layer: int) -> str:
    return get_act_name("resid_post", layer)


def template(name: str) -> str:
    """A hook name with its layer shown as `{layer}` (for config.json)."""
    return name.replace(".0.", ".{layer}.", 1)
