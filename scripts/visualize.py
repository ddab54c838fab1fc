"""Rebuild figures and report.html from a results folder alone, without loading a model."""

import sys

from spectra_interp.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("visualize", "visualize.py"))
