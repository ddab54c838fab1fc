"""The results folder: its layout (one place), atomic writes, shards and claims, and reading a
finished folder back as one typed object."""

from spectra_interp.results.layout import SweepLayout
from spectra_interp.results.load import Results, load_results

__all__ = ["Results", "SweepLayout", "load_results"]
