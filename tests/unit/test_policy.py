"""The operator's Job policy (pure), over the cases the admission policy also runs (tests/policy_cases.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator import policy
from lorasweep_operator.cli import build_parser
from lorasweep_operator.commands.operator import job_policy as cli_policy
from lorasweep_operator.spec import parse_spec
from policy_cases import (
    AUTHOR_CASES,
    CASES,
    POLICIES,
    STRICT,
    WIDE,
    case_spec,
    claim,
    config_map_volume,
    from_secret,
    job_policy,
    pod,
    value,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lorasweep"


@pytest.mark.parametrize(("policy_name", "case", "changes", "refused"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_cases(policy_name: str, case: str, changes: dict[str, Any], refused: str | None) -> None:
    spec = parse_spec(case_spec(changes))
    found = policy.violations(spec, job_policy(POLICIES[policy_name]))
    assert [problem.split(" ", 1)[0] for problem in found] == ([refused] if refused else [])
    if refused:
        with pytest.raises(policy.PolicyError, match=rf"{refused} .*chart value policy\."):
            policy.check(spec, job_policy(POLICIES[policy_name]))
    else:
        policy.check(spec, job_policy(POLICIES[policy_name]))


def test_every_violation_is_named_at_once() -> None:
    changes = {"image": "x/y:1", "command": ["sh"], "serviceAccountName": "a", "priorityClassName": "b"}
    found = policy.violations(parse_spec(case_spec(changes)), job_policy(STRICT))
    assert [p.split(" ", 1)[0] for p in found] == [
        "spec.image",
        "spec.command",
        "spec.serviceAccountName",
        "spec.priorityClassName",
    ]


def test_no_allowed_images_allows_any_image() -> None:
    assert policy.image_allowed("anything/at:all", ())
    assert not policy.image_allowed("anything/at:all", ("other",))


def test_the_chart_defaults_are_the_operators_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    assert {key: value for key, value in values.items() if key != "admissionPolicy"} == STRICT
    assert job_policy(STRICT) == policy.JobPolicy()
    assert cli_policy(build_parser().parse_args(["operator"])) == policy.JobPolicy()


def test_cli_flags_make_the_policy() -> None:
    args = build_parser().parse_args(
        ["operator", "--allowed-image=registry.example/team/", "--allowed-image=ghcr.io/lorasweep/lorasweep-trainer"]
        + ["--allow-command-override", "--allowed-service-account=trainer", "--allowed-priority-class=research"]
        + [
            "--allowed-env-source=value",
            "--allowed-volume-type=emptyDir",
            "--allowed-volume-type=persistentVolumeClaim",
        ]
        + ["--allowed-claim=model-cache", "--allowed-label=team", "--allowed-label=example.com/"]
        + ["--allowed-annotation=sidecar.istio.io/inject", "--allowed-annotation=example.com/"]
    )
    assert cli_policy(args) == job_policy(POLICIES["wide"])
    assert cli_policy(build_parser().parse_args(["operator", "--allowed-image="])).allowed_images == ()
    nothing = cli_policy(build_parser().parse_args(["operator", "--allowed-env-source=", "--allowed-volume-type="]))
    assert (nothing.env_sources, nothing.volume_types) == ((), ())


@pytest.mark.parametrize(
    ("policy_name", "case", "changes", "refused"), AUTHOR_CASES, ids=[f"{c[0]}-{c[1]}" for c in AUTHOR_CASES]
)
def test_what_depends_on_the_author_is_left_to_admission(
    policy_name: str, case: str, changes: dict[str, Any], refused: str | None
) -> None:
    """The operator cannot tell who wrote a sweep: the author's own rights are the admission policy's question."""
    assert policy.violations(parse_spec(case_spec(changes)), job_policy(POLICIES[policy_name])) == []


def test_every_spec_pod_violation_is_named_at_once() -> None:
    changes = pod(
        env=[from_secret("TOKEN"), value("PYTHONPATH", "/mnt/x")],
        volumes=[config_map_volume(), claim("scratch")],
        labels={"team": "a"},
        annotations={"example.org/x": "y"},
    )
    found = policy.violations(parse_spec(case_spec(changes)), job_policy(WIDE))
    assert found == [
        "spec.pod.env TOKEN take their values from secretKeyRef, which the policy does not allow (allowed: value; "
        "chart value policy.pod.envSources)",
        "spec.pod.volumes trainer-config are of types the policy does not allow (allowed: emptyDir, "
        "persistentVolumeClaim; chart value policy.pod.volumeTypes)",
        "spec.pod.volumes mount PersistentVolumeClaims scratch, not among the allowed claims (model-cache; chart "
        "value policy.pod.allowedClaims)",
        "spec.pod.annotations example.org/x are not among the allowed keys (sidecar.istio.io/inject, example.com/; "
        "chart value policy.pod.allowedAnnotations)",
    ]
    strict = policy.violations(parse_spec(case_spec(changes)), job_policy(STRICT))
    assert [problem.split(" ", 2)[:2] for problem in strict] == [
        ["spec.pod.env", "PYTHONPATH"],
        ["spec.pod.labels", "team"],
        ["spec.pod.annotations", "example.org/x"],
    ]


@pytest.mark.parametrize(
    ("name", "loads_code"),
    [("PYTHONPATH", True), ("PYTHONSTARTUP", True), ("PYTHONWARNINGS", True), ("LD_PRELOAD", True), ("PATH", True),
     ("LD_LIBRARY_PATH", True), ("OPENSSL_CONF", True), ("BASH_ENV", True), ("GCONV_PATH", True),
     ("PYTHONUNBUFFERED", False), ("PYTHONHASHSEED", False), ("HF_HOME", False), ("PUSHGATEWAY_URL", False),
     ("OMP_NUM_THREADS", False), ("MY_PATH", False)],
)  # fmt: skip
def test_code_loading_variables(name: str, loads_code: bool) -> None:
    assert policy.code_env(name) is loads_code


def test_the_admission_policy_knows_the_same_code_loading_variables() -> None:
    # deploy/admission is the chart's policy rendered (tests/integration/test_sweep_policy.py holds them equal).
    document = yaml.safe_load((ROOT / "deploy" / "admission" / "policy.yaml").read_text())
    literals = {item["name"]: item["expression"] for item in document["spec"]["variables"]}
    assert json.loads(literals["codeEnvNames"]) == list(policy.CODE_ENV_NAMES)
    assert json.loads(literals["codeEnvPrefixes"]) == list(policy.CODE_ENV_PREFIXES)
    assert json.loads(literals["harmlessEnvNames"]) == list(policy.HARMLESS_ENV_NAMES)
