"""Running the sweep on rented machines: `deploy.sagemaker` starts it as an AWS SageMaker
training job. Nothing here is imported by the sweep itself."""
