"""Finding and building the test bed's binaries: KUBEBUILDER_ASSETS first, and errors that say what to do
when there is no Go toolchain or the build fails."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from lorasweep_operator.devcluster import binaries, commands


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORASWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return tmp_path / "cache"


def executables(folder: Path, names: tuple[str, ...], body: str = "raise SystemExit(0)") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"#!{sys.executable}\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def run_dev(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands.add_arguments(parser)
    return commands.run(parser.parse_args(list(argv)))


def test_kubebuilder_assets_come_first(empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = executables(tmp_path / "assets", ("etcd", "kube-apiserver"))
    executables(binaries.build_folder(), binaries.ALL_BINARIES)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    found = binaries.ensure()
    assert found.path("etcd") == assets / "etcd"
    assert found.path("kube-apiserver") == assets / "kube-apiserver"
    assert found.path("kubectl") == binaries.build_folder() / "kubectl"


def test_no_go_toolchain_says_what_to_install_or_provide(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    real_access = binaries.os.access
    monkeypatch.setattr(binaries.os, "access", lambda p, m: False if str(p).endswith("/go") else real_access(p, m))

    assert run_dev("build") == 2

    error = capsys.readouterr().err
    assert "no Go toolchain found" in error
    assert "KUBEBUILDER_ASSETS" in error and "kube-apiserver" in error


def test_a_failed_build_shows_go_output_and_the_way_out(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = executables(
        tmp_path / "go", ("go",), "import sys; print('go: proxy.golang.org: no route to host'); sys.exit(1)"
    )
    monkeypatch.setattr(binaries.shutil, "which", lambda name: str(go / "go") if name == "go" else None)

    with pytest.raises(binaries.BinariesUnavailable) as caught:
        binaries.ensure()

    message = str(caught.value)
    assert "`go mod download k8s.io/kubernetes@v1.34.4` failed" in message
    assert "no route to host" in message
    assert "KUBEBUILDER_ASSETS" in message
    # Nothing half-built was left where `locate` would take it for a binary.
    assert binaries.locate() == {}


def test_staging_modules_are_replaced_by_their_published_twins() -> None:
    go_mod = """module k8s.io/kubernetes
replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""
    assert binaries.staging_replacements(go_mod, "v1.34.4") == [
        "k8s.io/api => k8s.io/api v0.34.4",
        "k8s.io/client-go => k8s.io/client-go v0.34.4",
    ]


def test_status_and_env_without_a_cluster_say_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_dev("status", "--state", str(tmp_path / "none")) == 1
    assert "lorasweep dev up" in capsys.readouterr().out
    assert run_dev("env", "--state", str(tmp_path / "none")) == 1
    assert "lorasweep dev up" in capsys.readouterr().err
