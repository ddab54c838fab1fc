"""The Phase 1 sweep. No arguments: the offline default (SmolLM2-135M, CPU, bundled books).

Run `python scripts/sweep_heads.py --help` for every option; under torchrun the windows are
sharded across ranks.
"""

import sys

from spectra_interp.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("sweep", "sweep_heads.py"))
