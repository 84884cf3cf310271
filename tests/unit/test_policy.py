"""The operator's Job policy (pure), over the cases the admission policy also runs (tests/policy_cases.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasweep_operator import policy
from lorasweep_operator.cli import build_parser
from lorasweep_operator.commands.operator import job_policy as cli_policy
from lorasweep_operator.spec import parse_spec
from policy_cases import CASES, POLICIES, STRICT, case_spec, job_policy

CHART = Path(__file__).resolve().parents[2] / "charts" / "lorasweep"


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
    )
    assert cli_policy(args) == job_policy(POLICIES["wide"])
    assert cli_policy(build_parser().parse_args(["operator", "--allowed-image="])).allowed_images == ()
