"""Shared fixtures: the local control plane (fixtures_cluster), the S3-protocol server (fixtures_s3) and an MLflow
tracking server (fixtures_mlflow)."""

pytest_plugins = ["fixtures_s3", "fixtures_cluster", "fixtures_mlflow"]
