"""The seed's Phase 1 protocol as a preset: Llama-3-8B, fp16, 4096-token windows, batch 1, CUDA.

Flags override the preset (same flags as scripts/sweep_heads.py). Without CUDA or without the
weights it says so in one sentence and names the offline command.
"""

import sys

from spectra_interp.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("experiment", "run_experiment.py"))
