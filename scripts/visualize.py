"""Rebuild figures and report.html from a results folder alone, without loading a model."""

import sys

from spectra_interp.cli import guarded, visualize_command

if __name__ == "__main__":
    sys.exit(guarded(lambda: visualize_command(sys.argv[1:])))
