"""Start the sweep as an AWS SageMaker training job (`--dry-run` prints the request offline).

    python scripts/launch_sagemaker.py --dry-run
    python scripts/launch_sagemaker.py --s3 s3://BUCKET/spectra --role ARN --spot --max-windows 64

Flags this script does not know are the sweep's own (scripts/sweep_heads.py) and travel to the job.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spectra_interp.deploy.sagemaker.launcher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
