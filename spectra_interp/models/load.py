"""Load any source as a TransformerLens 4 `TransformerBridge`, checked measurable, with its
`AttentionSpec` attached as `bridge.spectra_spec`."""

from __future__ import annotations

import os
from typing import Any

import torch

from spectra_interp.config import DTYPES
from spectra_interp.errors import SpectraError
from spectra_interp.models import hooks
from spectra_interp.models.architecture import AttentionSpec, attention_spec, check_measurable
from spectra_interp.models.sources import (
    ResolvedSource,
    hub_error,
    load_config,
    load_tokenizer,
    pretrained_location,
    quiet_transformers,
    resolve_source,
    with_architectures,
)

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES if name != "auto"}


def pick_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpectraError(f"Device '{device}' was asked for but CUDA is not available here.")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise SpectraError(f"Unknown device '{device}'; use auto, cpu or cuda[:N].") from err


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on CUDA and fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in TORCH_DTYPES:
        raise SpectraError(f"Unknown dtype '{dtype}'; use auto, {', '.join(TORCH_DTYPES)}.")
    return TORCH_DTYPES[dtype]


# With random norms, each norm weight is exp(z), z ~ N(0, NORM_LOG_SD^2): positive, a factor
# of about 1.6 either way, so a normalised query's norm depends on its direction.
NORM_LOG_SD = 0.5


def _random_hf_model(
    config: Any, seed: int, device: torch.device, dtype: torch.dtype, random_norms: bool = False
) -> Any:
    """Fresh weights for `config`, created directly on `device` so 8B models init in seconds;
    with `random_norms`, the normalisation layers' weights are drawn too (`randomize_norms`)."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    if random_norms:
        randomize_norms(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_norms(model: torch.nn.Module, seed: int) -> int:
    """Set the weight of every normalisation layer (a module whose class name ends in `Norm`,
    e.g. RMSNorm, LayerNorm, QK-norm) to exp(N(0, NORM_LOG_SD^2)) draws from `seed`; returns
    how many layers were drawn. Fresh norm weights are all 1, which makes a QK-norm model's
    ‖q‖ sqrt(head_dim) for every token."""
    generator = torch.Generator().manual_seed(seed)
    drawn = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(module).__name__.endswith("Norm") and isinstance(weight, torch.nn.Parameter):
            z = torch.randn(weight.shape, generator=generator) * NORM_LOG_SD
            weight.copy_(z.exp().to(weight.dtype))
            drawn += 1
    return drawn


def _pretrained_hf_model(location: str, device_map: str, dtype: torch.dtype) -> Any:
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = with_architectures(AutoConfig.from_pretrained(location))
        check_measurable(config)
        model = AutoModelForCausalLM.from_pretrained(
            location, config=config, dtype=dtype, attn_implementation="eager",
            device_map=device_map,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        if Path(location).exists():
            raise SpectraError(f"Could not load the model in {location}: {err}") from err
        raise hub_error(location, err) from err
    return model.eval()


def _placeholder_tokenizer() -> Any:
    """A one-word tokenizer for models whose own cannot be had: they still run on token ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _tokenizer_or_placeholder(source: str) -> tuple[Any, bool]:
    try:
        return load_tokenizer(source), False
    except SpectraError:
        return _placeholder_tokenizer(), True


def load_model(
    source: str = "smollm2-135m",
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    seed: int = 0,
    device_map: str | None = None,
    random_norms: bool = False,
) -> Any:
    """Load `source` as a `TransformerBridge` in eval mode.

    `seed` only matters for `random:` sources: the same seed gives the same weights on a device.
    A random model whose trained tokenizer cannot be had offline, or a local folder without
    tokenizer files, gets a placeholder tokenizer (`bridge.spectra_placeholder_tokenizer` is
    True): it still runs on token ids, and `load_tokenizer` says clearly why text cannot be.
    `device_map` (e.g. `auto`) spreads a pretrained model too large for one GPU over all visible
    devices with accelerate; the hooks reduce each layer where it runs. `random_norms` (random
    sources only) also draws the normalisation weights (`randomize_norms`).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers()
    resolved = resolve_source(source)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if device_map and resolved.random_init:
        raise SpectraError("--device-map applies to pretrained weights, not random: sources.")
    if resolved.random_init:
        config = load_config(source)
        check_measurable(config)
        hf_model = _random_hf_model(config, seed, torch_device, torch_dtype, random_norms)
        tokenizer, placeholder = _tokenizer_or_placeholder(source)
    else:
        location = pretrained_location(resolved)
        hf_model = _pretrained_hf_model(location, device_map or str(torch_device), torch_dtype)
        if device_map:
            torch_device = hf_model.get_input_embeddings().weight.device
        tokenizer, placeholder = _tokenizer(source, resolved)
    bridge = _bridge(source, hf_model, tokenizer, torch_device, torch_dtype)
    bridge.spectra_placeholder_tokenizer = placeholder
    return bridge


def _tokenizer(source: str, resolved: ResolvedSource) -> tuple[Any, bool]:
    if resolved.kind == "hub":
        return load_tokenizer(source), False
    return _tokenizer_or_placeholder(source)


def _check_supported(source: str, hf_config: Any) -> None:
    from transformer_lens.model_bridge.sources._hf_format import (
        determine_architecture_from_hf_config,
    )

    name = (getattr(hf_config, "architectures", None) or [hf_config.model_type])[0]
    try:
        determine_architecture_from_hf_config(hf_config)
    except ValueError as err:
        raise SpectraError(
            f"TransformerLens cannot wrap the architecture {name} of '{source}'."
        ) from err


def _bridge(source: str, hf_model: Any, tokenizer: Any, device: torch.device, dtype: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    _check_supported(source, hf_model.config)
    try:
        bridge = TransformerBridge.boot_transformers(
            source, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    except (ValueError, KeyError, NotImplementedError, AttributeError, TypeError) as err:
        raise SpectraError(
            f"TransformerLens could not wrap '{source}': {type(err).__name__}: {err}"
        ) from err
    bridge.spectra_spec = _spec(bridge, source)
    return bridge.eval()


def _spec(bridge: Any, source: str) -> AttentionSpec:
    names = set(bridge.hook_dict)
    missing = [
        n for n in (hooks.attn_hook("pattern", 0), hooks.attn_hook("q", 0)) if n not in names
    ]
    if missing:
        raise SpectraError(f"The TransformerLens wrapper of '{source}' has no {missing} hooks.")
    modules = [block.attn.original_component for block in bridge.blocks]
    return attention_spec(bridge.original_model.config, modules, names)


def spec_of(model: Any) -> AttentionSpec:
    """The `AttentionSpec` that `load_model` attached to a bridge."""
    spec = getattr(model, "spectra_spec", None)
    if spec is None:
        raise SpectraError("This model was not loaded with spectra_interp.models.load_model.")
    return spec


def describe(model: Any) -> dict[str, Any]:
    """Architecture facts of a loaded bridge: layers, query heads, KV heads, head dim, context."""
    cfg = model.cfg
    return {
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "n_kv_heads": int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        "d_head": int(cfg.d_head),
        "n_ctx": int(cfg.n_ctx),
    }
