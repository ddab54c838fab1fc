"""Phase 2: ‖q‖ as each query's key budget. No arguments: the offline default (SmolLM2-135M, CPU,
the bundled books split into calibration and evaluation documents).

Run `python scripts/adaptive_attention.py --help` for every option; under torchrun the windows
are sharded across ranks.
"""

import sys

from spectra_interp.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("budget", "adaptive_attention.py"))
