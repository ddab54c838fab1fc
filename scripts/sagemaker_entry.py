"""The SageMaker job's entry point: the sweep under SageMaker's container contract.

The training toolkit runs this (under torchrun for distributed jobs) from the unpacked source
tarball; its arguments are the job's hyperparameters. See
spectra_interp/deploy/sagemaker/container.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spectra_interp.deploy.sagemaker.container import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
