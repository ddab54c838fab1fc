"""What Spectra must know of an architecture to measure it faithfully, read once per model.

- ‖q‖ is the norm of the query that is multiplied with the keys: after any QK-norm or other
  change to the query, after RoPE (a rotation: same norm), before the constant score scale.
  The hook methods read `hook_q` (the projection) only where that is provably the same norm,
  else `hook_rot_q` (what meets the keys); the fused method reads the query its attention
  function receives, which is that tensor by construction.
- Keys seen per layer: t + 1 on a causal layer, at most the window on a sliding layer, from the
  config's `layer_types` and `sliding_window` (the rule transformers' own masks follow).
- Some models cannot be measured faithfully; they are refused in one sentence naming the
  architecture and the reason, before any weights are read where possible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from spectra_interp.errors import SpectraError
from spectra_interp.metrics import keys_seen
from spectra_interp.models.hooks import attn_hook

SLIDING, FULL = "sliding_attention", "full_attention"

NO_ATTENTION = "is a state-space or recurrent model with no attention pattern to measure"
HYBRID = (
    "mixes attention with state-space or linear-attention layers, whose tokens have no "
    "attention entropy, so a per-layer, per-head sweep would be partial"
)
ALIBI = (
    "adds an ALiBi position bias to every attention logit, so the logits are not the scaled "
    "q·k that ‖q‖ multiplies (a bias Spectra cannot place in the query)"
)
SINKS = (
    "adds a learned sink logit to every softmax, so part of each query's attention goes to "
    "no key and H over the keys is not the head's attention entropy"
)
LATENT = (
    "uses multi-head latent attention, whose query is assembled from separate rotary and "
    "non-rotary parts that TransformerLens does not expose as the query meeting the keys"
)
NOT_CAUSAL = "is not a causal decoder: its queries see keys in both directions"

# Hugging Face model types refused, and why.
REFUSED_MODEL_TYPES: dict[str, str] = {
    **dict.fromkeys(
        ("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"), NO_ATTENTION
    ),
    **dict.fromkeys(
        (
            "jamba",
            "zamba",
            "zamba2",
            "bamba",
            "falcon_h1",
            "granitemoehybrid",
            "nemotron_h",
            "lfm2",
            "lfm2_moe",
            "lfm3",
            "olmo_hybrid",
            "bailing_hybrid",
            "minimax",
            "qwen3_next",
        ),
        HYBRID,
    ),  # fmt: skip
    **dict.fromkeys(("bloom", "mpt"), ALIBI),
    "gpt_oss": SINKS,
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4"), LATENT),
}
# llama.cpp architecture names (a GGUF file's `general.architecture`) refused, and why.
REFUSED_GGUF: dict[str, str] = {
    **dict.fromkeys(("mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"), NO_ATTENTION),
    **dict.fromkeys(
        ("jamba", "falcon-h1", "lfm2", "plamo2", "granitehybrid", "nemotron_h", "qwen3next"),
        HYBRID,
    ),
    **dict.fromkeys(("bloom", "mpt"), ALIBI),
    "gpt-oss": SINKS,
    **dict.fromkeys(("deepseek2",), LATENT),
    **dict.fromkeys(("t5", "t5encoder", "bert", "nomic-bert", "jina-bert-v2"), NOT_CAUSAL),
}
QK_NORM_MODULES = ("q_norm", "q_layernorm")
WINDOW_FIELD = "sliding_window"


def refuse_gguf_architecture(arch: str, name: str) -> None:
    """One sentence for a GGUF whose architecture Spectra cannot measure."""
    if arch in REFUSED_GGUF:
        raise SpectraError(f"{name} holds a {arch} model, which {REFUSED_GGUF[arch]}.")


def _sliding_in_use(config: Any) -> bool:
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return SLIDING in layer_types
    return getattr(config, "use_sliding_window", True) is not False


def check_window_value(config: Any) -> None:
    """Refuse a configured window transformers cannot mask correctly (SpectraError).

    A window of w keys lets query t see keys t-w+1 .. t (transformers' `sliding_window_overlay`);
    w < 1 lets none through, and a fractional w is not a number of keys.
    """
    window = getattr(config, WINDOW_FIELD, None)
    if window is None or not _sliding_in_use(config):
        return
    whole = isinstance(window, int) and not isinstance(window, bool)
    if not whole or window < 1:
        name = (getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])[0]
        raise SpectraError(
            f"Spectra cannot measure {name}: its config field `{WINDOW_FIELD}` = {window!r} is "
            "not a window transformers can mask (it lets no key, or no whole number of keys, "
            "through on every sliding layer from layer 0); set it to null for full causal "
            "attention or to a positive number of keys."
        )


def _reason(config: Any) -> str | None:
    """Why a config describes a model Spectra cannot measure, or None."""
    model_type = getattr(config, "model_type", "")
    if model_type in REFUSED_MODEL_TYPES:
        return REFUSED_MODEL_TYPES[model_type]
    if getattr(config, "alibi", False):
        return ALIBI
    other = sorted(set(getattr(config, "layer_types", None) or ()) - {SLIDING, FULL})
    if other:
        return (
            f"has {', '.join(other)} layers, whose masks or mixers Spectra does not model "
            "(it measures full and sliding-window causal attention)"
        )
    return None


def check_measurable(config: Any, attention_modules: list[Any] | None = None) -> None:
    """Refuse, in one sentence, a model Spectra would measure wrongly."""
    name = (getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])[0]
    reason = _reason(config)
    if reason is None and attention_modules:
        first = attention_modules[0]
        if getattr(first, "sinks", None) is not None:
            reason = SINKS
        elif getattr(first, "is_causal", True) is False:
            reason = NOT_CAUSAL
    if reason:
        raise SpectraError(f"Spectra cannot measure {name}: it {reason}.")
    check_window_value(config)


def layer_windows(config: Any, n_layers: int) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: full causal attention), as transformers masks it."""
    window = getattr(config, WINDOW_FIELD, None)
    window = int(window) if isinstance(window, int) and window > 0 else None
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        if len(layer_types) != n_layers:
            raise SpectraError(
                f"The config lists {len(layer_types)} layer types for {n_layers} layers."
            )
        return tuple(window if t == SLIDING else None for t in layer_types)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    return (window,) * n_layers


@dataclass(frozen=True)
class AttentionSpec:
    """The attention facts of one loaded model that the measurement depends on."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    windows: tuple[int | None, ...]
    scales: tuple[float, ...]  # the constant score scale of each layer (1/sqrt(d_head) and kin)
    softcap: float | None
    q_hook: str  # TransformerLens hook kind of the query that meets the keys: "q" or "rot_q"
    q_reason: str

    def keys_seen(self, n_pos: int) -> Int[Tensor, "layer pos"]:
        """Keys each position sees, per layer."""
        return torch.stack([keys_seen(n_pos, w) for w in self.windows])

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _changes_query(config: Any, attention: Any) -> str | None:
    """What, between the projection and q·k, changes the query's norm (None: nothing)."""
    for name in QK_NORM_MODULES:
        if getattr(attention, name, None) is not None:
            return f"QK-norm ({type(getattr(attention, name)).__name__} `{name}`)"
    if getattr(config, "clip_qkv", None) is not None:
        return "clip_qkv clamps the query"
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return "a position-dependent query scale after RoPE"
    return None


def attention_spec(
    config: Any, attention_modules: list[Any], hook_names: set[str]
) -> AttentionSpec:
    """The spec of a model from its Hugging Face config, its attention modules (in layer order)
    and the TransformerLens hook names of layer 0."""
    check_measurable(config, attention_modules)
    n_layers = len(attention_modules)
    first = attention_modules[0]
    n_heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    d_head = int(getattr(first, "head_dim", None) or config.hidden_size // n_heads)
    change = _changes_query(config, first)
    if change is None:
        q_hook = "q"
        reason = "hook_q: nothing between the projection and q·k changes the norm (RoPE rotates)"
    else:
        q_hook = "rot_q"
        reason = f"hook_rot_q: {change} sits between the projection and q·k"
        name = (getattr(config, "architectures", None) or [config.model_type])[0]
        if attn_hook("rot_q", 0) not in hook_names:
            raise SpectraError(
                f"Spectra cannot measure {name}: {change} changes the query after its projection "
                "and TransformerLens exposes no hook on the query that meets the keys."
            )
    softcap = getattr(config, "attn_logit_softcapping", None)
    return AttentionSpec(
        architecture=(getattr(config, "architectures", None) or [config.model_type])[0],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        windows=layer_windows(config, n_layers),
        scales=tuple(float(getattr(m, "scaling", d_head**-0.5)) for m in attention_modules),
        softcap=float(softcap) if softcap else None,
        q_hook=q_hook,
        q_reason=reason,
    )
