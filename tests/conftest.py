"""Shared fixtures: the local control plane (fixtures_cluster) and the S3-protocol server (fixtures_s3)."""

pytest_plugins = ["fixtures_s3", "fixtures_cluster"]
