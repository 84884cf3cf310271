"""The operator's test fixtures: the CRD and deploy/rbac's roles installed, the operator running with
the deploy/rbac ServiceAccount's token (see operator_harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, install_crd, running_operator


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    install_crd(cluster)


@pytest.fixture
def operator(
    crd: None, cluster: Any, namespace: str, serviceaccount_kubeconfig: Any, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace, serviceaccount_kubeconfig, tmp_path) as process:
        yield process
