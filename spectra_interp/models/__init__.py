"""Models: sources resolved (`sources`), loaded as TransformerLens bridges (`load`), their
attention facts (`architecture`) and hook names (`hooks`)."""

from spectra_interp.models.architecture import AttentionSpec, check_measurable
from spectra_interp.models.load import describe, load_model, pick_device, pick_dtype, spec_of
from spectra_interp.models.masks import check_masks
from spectra_interp.models.sources import (
    gguf_as_hf_folder,
    load_config,
    load_tokenizer,
    resolve_source,
    smollm2_gguf_path,
)

__all__ = [
    "AttentionSpec",
    "check_masks",
    "check_measurable",
    "describe",
    "gguf_as_hf_folder",
    "load_config",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_source",
    "smollm2_gguf_path",
    "spec_of",
]
