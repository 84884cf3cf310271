"""The chart's PrometheusRule: every alert runs through `promtool test rules` on series taken from the
code's own registries (operator and trainer), so an alert can only watch a name and labels the code exports.

No cluster needed: helm renders the rule, promtool (Debian's prometheus package) evaluates it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from lorasweep_operator import telemetry as operator_telemetry
from lorasweep_operator.devcluster import binaries
from lorasweep_trainer.telemetry import Telemetry

CHART = Path(__file__).resolve().parents[2] / "charts" / "lorasweep"
OPERATOR_JOB = "lorasweep-metrics"  # the metrics Service's name for release "lorasweep": the ServiceMonitor's job
TRAINER_JOB = "lorasweep-system/lorasweep-trainer"  # a PodMonitor's job: <namespace>/<name>
METRIC = re.compile(r"\blorasweep_(?:operator|trainer)_[a-z_]+")
LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def helm_template(*sets: str) -> list[dict[str, Any]]:
    helm = binaries.ensure().path("helm")
    args = [str(helm), "template", "lorasweep", str(CHART), "--namespace", "lorasweep-system"]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    (found,) = [doc for doc in helm_template("prometheusRule.enabled=true") if doc["kind"] == "PrometheusRule"]
    return found


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: `make testbed` installs Debian's prometheus package (apt-get install prometheus)"
    )
    return found


# --- series as the code exports them ---------------------------------------------------------------------


def samples(collected: Iterable[Any]) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets the registry exports for it."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in collected:
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


class Exported:
    """Series names and label sets from the code's registries after the events each alert is about, with the
    job label the chart's monitors add when Prometheus scrapes them."""

    def __init__(self) -> None:
        operator_telemetry.record_sweep(
            "ml", "sweep-a", "Running", {"Failed": 2, "Running": 1}, "val_accuracy", 0.5, 10
        )
        operator_telemetry.record_sweep("ml", "sweep-b", "Running", {"Running": 1}, "val_accuracy", 0.5, 10)
        operator_telemetry.RECONCILES.labels(trigger="timer", result="error").inc()
        operator_telemetry.RECONCILES.labels(trigger="timer", result="ok").inc()
        self.operator = samples(prometheus_client.REGISTRY.collect())
        self.trainers = {}
        for trial in ("t-bad", "t-good"):
            trainer = Telemetry("ml", "sweep-a", trial)
            trainer.train_loss.set(math.nan if trial == "t-bad" else 0.7)
            trainer.optimizer_steps.inc()
            if trial == "t-bad":
                trainer.decode_failures("train").inc()
            self.trainers[trial] = samples(trainer.registry.collect())

    def operator_series(self, name: str, **match: str) -> tuple[str, dict[str, str]]:
        (labels,) = [ls for ls in self.operator[name] if all(ls.get(k) == v for k, v in match.items())]
        labels = {**labels, "job": OPERATOR_JOB}
        return selector(name, labels), labels

    def trainer_series(self, trial: str, name: str) -> tuple[str, dict[str, str]]:
        (labels,) = self.trainers[trial][name]
        labels = {**labels, "job": TRAINER_JOB}
        return selector(name, labels), labels

    def names(self) -> set[str]:
        trainer = {name for found in self.trainers.values() for name in found}
        return {name for name in self.operator if name.startswith(operator_telemetry.PREFIX)} | trainer


@pytest.fixture(scope="module")
def exported() -> Exported:
    return Exported()


def expect(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The alert promtool must see: the rule's labels over the series', annotations filled in as Prometheus does."""
    annotations = {key: LABEL.sub(lambda m: labels[m.group(1)], text) for key, text in rule["annotations"].items()}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def keep(labels: dict[str, str], *names: str) -> dict[str, str]:
    return {name: labels[name] for name in names}


def test_the_rule_is_off_by_default() -> None:
    assert [doc for doc in helm_template() if doc["kind"] == "PrometheusRule"] == []


def test_every_alert_watches_only_series_the_code_exports(rule: dict[str, Any], exported: Exported) -> None:
    names = exported.names()
    assert "lorasweep_operator_build_info" in names
    for name, item in alerts(rule).items():
        used = set(METRIC.findall(item["expr"]))
        assert used, f"{name}: no lorasweep metric in {item['expr']}"
        assert used <= names, f"{name}: {sorted(used - names)} is not exported by the code"


def test_every_alert_passes_promtool_test_rules(rule: dict[str, Any], exported: Exported, tmp_path: Path) -> None:
    rules = alerts(rule)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    build, build_labels = exported.operator_series("lorasweep_operator_build_info")
    errors, error_labels = exported.operator_series("lorasweep_operator_reconciles_total", result="error")
    ok, _ = exported.operator_series("lorasweep_operator_reconciles_total", result="ok")
    failed, failed_labels = exported.operator_series("lorasweep_operator_trials", sweep="sweep-a", phase="Failed")
    clean, _ = exported.operator_series("lorasweep_operator_trials", sweep="sweep-b", phase="Failed")
    nan_loss, nan_labels = exported.trainer_series("t-bad", "lorasweep_trainer_train_loss")
    fine_loss, _ = exported.trainer_series("t-good", "lorasweep_trainer_train_loss")
    stuck, stuck_labels = exported.trainer_series("t-bad", "lorasweep_trainer_optimizer_steps_total")
    moving, _ = exported.trainer_series("t-good", "lorasweep_trainer_optimizer_steps_total")
    decode, decode_labels = exported.trainer_series("t-bad", "lorasweep_trainer_decode_failures_total")

    def case(alert: str, series: list[tuple[str, str]], checks: list[tuple[str, list[dict[str, str]]]]) -> Any:
        return {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert, "exp_alerts": [expect(rules[alert], labels) for labels in fired]}
                for at, fired in checks
            ],
        }

    trial = ("namespace", "sweep", "trial")
    tests = [
        # Scraped for 10 minutes, then gone: absent after staleness, firing once that held for 5 minutes.
        case("LoraSweepOperatorDown", [(build, "1x10 stale")], [("8m", []), ("20m", [keep(build_labels, "job")])]),
        case("LoraSweepOperatorDown", [(build, "1x40")], [("30m", [])]),
        # Errors every minute for 40 minutes fire after 15; successes alone never do.
        case(
            "LoraSweepReconcileErrors",
            [(errors, "0+1x40"), (ok, "0+5x40")],
            [("10m", []), ("30m", [keep(error_labels, "job")])],
        ),
        case("LoraSweepReconcileErrors", [(errors, "3x40"), (ok, "0+5x40")], [("30m", [])]),
        # sweep-a has failed trials; sweep-b's Failed count is 0.
        case(
            "LoraSweepFailedTrials",
            [(failed, "2x10"), (clean, "0x10")],
            [("5m", [keep(failed_labels, "namespace", "sweep")])],
        ),
        case("LoraSweepTrialLossNaN", [(nan_loss, "NaN NaN NaN"), (fine_loss, "0.7 0.6 0.5")], [("2m", [nan_labels])]),
        # t-bad's step counter stops at 1; t-good keeps stepping.
        case(
            "LoraSweepTrialNoProgress",
            [(stuck, "1x60"), (moving, "1+1x60")],
            [("20m", []), ("50m", [keep(stuck_labels, *trial)])],
        ),
        case(
            "LoraSweepTrainerDecodeFailures",
            [(decode, "0 1 1 1"), (moving, "1+1x3")],
            [("0m", []), ("2m", [keep(decode_labels, *trial)])],
        ),
    ]
    assert {t["alert_rule_test"][0]["alertname"] for t in tests} == set(rules), "every alert has a test"
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_thresholds_come_from_values() -> None:
    (found,) = [
        doc
        for doc in helm_template(
            "prometheusRule.enabled=true",
            "prometheusRule.noProgressFor=2h",
            "prometheusRule.decodeFailuresAbove=5",
            "prometheusRule.operatorJob=ops",
            "prometheusRule.labels.release=kube-prometheus-stack",
        )
        if doc["kind"] == "PrometheusRule"
    ]
    rules = alerts(found)
    assert rules["LoraSweepTrialNoProgress"]["for"] == "2h"
    assert rules["LoraSweepTrainerDecodeFailures"]["expr"].endswith("> 5")
    assert 'job="ops"' in rules["LoraSweepOperatorDown"]["expr"]
    assert found["metadata"]["labels"]["release"] == "kube-prometheus-stack"
