"""The test bed's binaries: etcd, the Kubernetes control plane, kubectl and helm.

They are built from the published Go modules with the local Go toolchain, once per machine, and
cached under ``~/.cache/lorasweep/``. A folder named by ``KUBEBUILDER_ASSETS`` (the layout
controller-runtime's envtest uses) is taken first for every binary it holds.

Kubernetes is not an ordinary Go module: its go.mod replaces every ``k8s.io/*`` staging module with
a path inside its own tree, which a module download does not contain. The scratch module therefore
replaces each of them with its published ``v0.Y.Z`` twin, the list read from Kubernetes' own go.mod
so that it never drifts from the pinned version.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.34.4"
HELM_VERSION = "v3.19.0"
# Part of the cache folder's name: bump it when the build flags change, so cached binaries are rebuilt.
BUILD_REVISION = 2

KUBERNETES_COMMANDS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# etcd's server binary is the main package at the root of its server module; the version is the
# one Kubernetes itself requires, so the two are always tested together.
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
ALL_BINARIES = ("etcd", *KUBERNETES_COMMANDS, "helm")


class BinariesUnavailable(RuntimeError):
    """The test bed's binaries can neither be found nor built; the message says how to fix it."""


@dataclass(frozen=True)
class Binaries:
    folder_of: dict[str, Path]

    def path(self, name: str) -> Path:
        return self.folder_of[name] / name


def cache_root() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep"))


def build_folder() -> Path:
    return cache_root() / "bin" / f"kubernetes-{KUBERNETES_VERSION}-helm-{HELM_VERSION}-build{BUILD_REVISION}"


def locate() -> dict[str, Path]:
    """Where each binary already is: KUBEBUILDER_ASSETS first, then the build cache."""
    found: dict[str, Path] = {}
    folders = [Path(p) for p in [os.environ.get("KUBEBUILDER_ASSETS", "")] if p] + [build_folder()]
    for name in ALL_BINARIES:
        for folder in folders:
            if os.access(folder / name, os.X_OK):
                found[name] = folder
                break
    return found


def ensure() -> Binaries:
    """Return every binary, building the missing ones (slow the first time on a machine)."""
    found = locate()
    missing = [name for name in ALL_BINARIES if name not in found]
    if missing:
        build(missing)
        found = locate()
        still_missing = [name for name in ALL_BINARIES if name not in found]
        if still_missing:
            raise BinariesUnavailable(f"build finished but these binaries are missing: {still_missing}")
    return Binaries(found)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        raise BinariesUnavailable(
            "no Go toolchain found (needed once to build etcd, kube-apiserver, kube-controller-manager, "
            "kube-scheduler, kubectl and helm). Install Go 1.24+ (for example `apt-get install golang`), "
            "or set KUBEBUILDER_ASSETS to a folder that holds these binaries: " + ", ".join(ALL_BINARIES)
        )
    return go


def _run_go(args: list[str], cwd: Path) -> None:
    go = _go()
    log.info("go command=%s cwd=%s", " ".join(args), cwd)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false", "GOTOOLCHAIN": "local"}
    result = subprocess.run([go, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise BinariesUnavailable(
            f"`go {' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n{result.stdout[-4000:]}\n"
            "Fix the Go toolchain or network access to the Go module proxy, or set KUBEBUILDER_ASSETS "
            "to a folder holding prebuilt binaries: " + ", ".join(ALL_BINARIES)
        )


def staging_replacements(kubernetes_go_mod: str, version: str = KUBERNETES_VERSION) -> list[str]:
    """The `replace` lines pointing each staging module at its published v0.Y.Z release."""
    twin = "v0." + version.removeprefix("v1.")
    staged = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, flags=re.M)
    if not staged:
        raise BinariesUnavailable(f"no staging modules found in the go.mod of k8s.io/kubernetes {version}")
    return [f"{module} => {module} {twin}" for module in staged]


def _module_file(go_mod_dir: Path, module: str, version: str) -> str:
    _run_go(["mod", "download", f"{module}@{version}"], go_mod_dir)
    gomodcache = subprocess.run([_go(), "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    return (Path(gomodcache) / "cache" / "download" / module / "@v" / f"{version}.mod").read_text()


def _scratch_module(folder: Path, name: str, requires: dict[str, str], replaces: list[str], tools: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"module lorasweep.dev/testbed/{name}", "", "go 1.24", ""]
    lines += ["require ("] + [f"\t{m} {v}" for m, v in requires.items()] + [")", ""]
    if replaces:
        lines += ["replace ("] + [f"\t{r}" for r in replaces] + [")", ""]
    (folder / "go.mod").write_text("\n".join(lines))
    imports = "\n".join(f'\t_ "{t}"' for t in tools)
    (folder / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")


def _version_ldflags(version: str) -> str:
    major, minor, _ = version.removeprefix("v").split(".")
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(["-s", "-w", *flags])


def _helm_version_flags() -> list[str]:
    # Without a cluster (`helm template`, `helm lint`) helm assumes the Kubernetes version it was
    # built for, 1.20 unless told: tell it ours, or charts requiring a newer one fail to render.
    major, minor, _ = KUBERNETES_VERSION.removeprefix("v").split(".")
    flags = [
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
    ]
    for package in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {package}.k8sVersionMajor={major}", f"-X {package}.k8sVersionMinor={minor}"]
    return flags


def build(names: list[str]) -> None:
    out = build_folder()
    out.mkdir(parents=True, exist_ok=True)
    src = cache_root() / "src"
    log.info("building test-bed binaries names=%s out=%s (first time on this machine: 15-40 min)", names, out)
    with tempfile.TemporaryDirectory(prefix="partial-", dir=out) as partial:
        staging = Path(partial)
        kube_names = [n for n in names if n in KUBERNETES_COMMANDS or n == "etcd"]
        if kube_names:
            module = src / f"kubernetes-{KUBERNETES_VERSION}"
            module.mkdir(parents=True, exist_ok=True)
            go_mod = _module_file(module, "k8s.io/kubernetes", KUBERNETES_VERSION)
            _scratch_module(
                module,
                "kubernetes",
                {"k8s.io/kubernetes": KUBERNETES_VERSION},
                staging_replacements(go_mod),
                [*KUBERNETES_COMMANDS.values(), ETCD_PACKAGE],
            )
            _run_go(["mod", "tidy"], module)
            commands = [KUBERNETES_COMMANDS[n] for n in kube_names if n in KUBERNETES_COMMANDS]
            if commands:
                _run_go(
                    [
                        "build",
                        "-trimpath",
                        "-ldflags",
                        _version_ldflags(KUBERNETES_VERSION),
                        "-o",
                        str(staging) + "/",
                        *commands,
                    ],
                    module,
                )
            if "etcd" in kube_names:
                _run_go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "etcd"), ETCD_PACKAGE], module)
        if "helm" in names:
            module = src / f"helm-{HELM_VERSION}"
            _scratch_module(module, "helm", {"helm.sh/helm/v3": HELM_VERSION}, [], [HELM_PACKAGE])
            _run_go(["mod", "tidy"], module)
            ldflags = " ".join(["-s -w", *_helm_version_flags()])
            _run_go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(staging / "helm"), HELM_PACKAGE], module)
        # Moved into place only when complete, so a killed build never leaves a half binary behind.
        for binary in staging.iterdir():
            binary.replace(out / binary.name)
    log.info("built test-bed binaries out=%s", out)
