"""The shared good and bad sweeps (tests/spec_cases.py) through the pydantic models: what the API server
rejects, `lorasweep validate` and the operator reject with the same words."""

from __future__ import annotations

import pytest

from lorasweep_operator.spec import SpecError, parse_spec
from spec_cases import BAD, GOOD, Case

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("case", GOOD, ids=[case.id for case in GOOD])
def test_good_sweeps_pass_the_models(case: Case) -> None:
    parse_spec(case.spec())


@pytest.mark.parametrize("case", [c for c in BAD if not c.cluster_only], ids=[c.id for c in BAD if not c.cluster_only])
def test_bad_sweeps_fail_the_models_saying_what_to_fix(case: Case) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(case.spec())
    assert case.model_message in str(error.value)


@pytest.mark.parametrize("case", [c for c in BAD if c.cluster_only], ids=[c.id for c in BAD if c.cluster_only])
def test_cluster_only_rules_are_left_to_the_crd(case: Case) -> None:
    # A local run reads and writes local folders; only the CRD insists on s3:// (see spec_cases).
    parse_spec(case.spec())


def test_from_sweep_override_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"search.fromSweep.override sets lora.rank=8 without lora.alpha"):
        parse_spec(next(c for c in BAD if c.id == "from-sweep-override-rank-without-alpha").spec())
