"""The sweep as an AWS SageMaker training job, in three parts:

- `request`: the job as data. The headline sweep (the Phase 1 preset) and the user's sweep flags
  become hyperparameters, and `build_request()` turns a `JobSpec` into the CreateTrainingJob
  request as a plain dict, with no AWS call (so `--dry-run` prints exactly what is sent);
- `launcher`: `scripts/launch_sagemaker.py`. It validates the sweep flags the way the job will
  parse them, packs the source tarball and calls boto3's `create_training_job`;
- `container`: `scripts/sagemaker_entry.py` inside the job. It maps SageMaker's environment to
  sweep flags, keeps the results folder in the checkpoint folder (a spot restart resumes) and
  copies it to the model dir, which SageMaker uploads to S3.

The job runs in AWS's PyTorch training container, whose training toolkit installs
`requirements.txt`, sets the `SM_*` variables, passes the hyperparameters as `--key value`
arguments and, with `sagemaker_torch_distributed_enabled`, starts the entry point under torchrun
on every instance. A Hugging Face token reaches the job only as its `HF_TOKEN` environment
variable and is masked whenever a request is printed.
"""
