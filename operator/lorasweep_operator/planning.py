"""Planning: a sweep spec to its ordered, de-duplicated list of trials. Pure; no cluster, no clock.

Order is the spec's order (baseline first, then each group's values; grid in row-major order of the
parameters as `PARAMETERS` lists them; random in sample order; an explicit list as written; fromSweep
best first), each configuration repeated for every seed. A configuration equal to an earlier one (an
override equal to the baseline, the same value in two groups) is dropped, so the reference's baseline
plus four groups plans exactly its 11 trials.

A trial's id is a hash of its resolved training parameters and seed: the same configuration always gets
the same id, so a restarted operator finds the Jobs it already made (`job_name`, `label_value`). A Job's name
also carries a hash of the sweep's name, so two sweeps in one namespace never share a Job name (``exp.1`` and
``exp-1``, or two long names with one prefix, would otherwise meet 409 on each other's Jobs forever).

search.optimize is planned as it goes (`optimize_plan`): the proposals recorded so far, by proposal index, then
the next ones TPE asks for; its ids also hash the index (`proposal_id`). fromSweep with ``refine`` adds, after
the top trials, their groups' midpoint neighbours (`neighbours`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from lorasweep_operator.spec import (
    DEFAULT_MAX_TRIALS,
    TERMINAL_TRIAL_PHASES,
    Distribution,
    LoraSweepSpec,
    SearchSpace,
    SourceTrial,
    SpecError,
    TrainingConfig,
    TrainingOverride,
    TrialPhase,
    TrialStatus,
)
from lorasweep_trainer.config import CacheConfig, ModelWeights, TrialConfig, trial_output

TRIAL_ID_LENGTH = 10
SWEEP_HASH_LENGTH = 5
NAME_LIMIT = 63
# Past this many raw combinations planning refuses before materialising them (de-dup cannot bring 10^9 down).
MATERIALISE_LIMIT = 1_000_000

# The searchable parameters, as (camelCase path, integer?) in the order grids and variants use.
PARAMETERS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("learningRate",), False),
    (("lora", "rank"), True),
    (("lora", "alpha"), False),
    (("lora", "dropout"), False),
    (("epochs",), True),
    (("batchSize",), True),
    (("gradientAccumulationSteps",), True),
    (("weightDecay",), False),
)

BASELINE = "baseline"
OPTIMIZE = "optimize"
REFINE = "refine"


class PlanError(SpecError):
    """The search cannot be expanded as written (too many trials, an invalid combination, no source)."""


@dataclass(frozen=True)
class PlannedTrial:
    index: int
    id: str
    job_name: str
    group: str
    variant: str
    training: TrainingConfig
    seed: int


# --- names ----------------------------------------------------------------------------------------------------


def short_hash(text: str, length: int = TRIAL_ID_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def trial_id(training: TrainingConfig, seed: int) -> str:
    canonical = json.dumps(
        {"training": training.model_dump(mode="json", by_alias=True), "seed": seed},
        sort_keys=True,
        separators=(",", ":"),
    )
    return short_hash(canonical)


def job_name(sweep: str, trial: str) -> str:
    """``<sweep prefix>-<sweep hash>-<trial id>``: a DNS-1123 label (<= 63) that is also a valid label value.
    The prefix is only for people (it is cut and has dots replaced); the hash of the whole name keeps sweeps apart."""
    suffix = f"{short_hash(sweep, SWEEP_HASH_LENGTH)}-{trial}"
    prefix = sweep.lower().replace(".", "-")[: NAME_LIMIT - len(suffix) - 1].rstrip("-")
    return f"{prefix}-{suffix}" if prefix else f"t-{suffix}"


def label_value(text: str) -> str:
    """`text` when it is a valid label value (sweep names are DNS subdomains, up to 253), else prefix + hash."""
    if len(text) <= NAME_LIMIT:
        return text
    return f"{text[: NAME_LIMIT - TRIAL_ID_LENGTH - 1].rstrip('-.')}-{short_hash(text)}"


# --- overrides ------------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_changes(training: TrainingConfig, changes: Mapping[str, Any], where: str) -> TrainingConfig:
    """`training` with the camelCase `changes` merged in, validated as a whole."""
    try:
        return TrainingConfig.model_validate(_merge(training.model_dump(mode="json", by_alias=True), changes))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise PlanError(f"{where} gives an invalid trial: {problems}") from None


def apply_override(training: TrainingConfig, override: TrainingOverride | None, where: str) -> TrainingConfig:
    return training if override is None else apply_changes(training, override.changes(), where)


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return dict(value)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(str(item) for item in value)
    return str(value)


def describe(baseline: TrainingConfig, training: TrainingConfig) -> str:
    """What `training` changes against `baseline`, e.g. ``learningRate=0.001`` or ``lora.rank=8 lora.alpha=16``."""
    before = _flatten(baseline.model_dump(mode="json", by_alias=True))
    after = _flatten(training.model_dump(mode="json", by_alias=True))
    order = [".".join(path) for path, _ in PARAMETERS]
    keys = sorted(after, key=lambda key: (order.index(key) if key in order else len(order), key))
    changes = [f"{key}={_format(after[key])}" for key in keys if after[key] != before.get(key)]
    return " ".join(changes) if changes else BASELINE


# --- the search kinds -----------------------------------------------------------------------------------------

Configuration = tuple[str, TrainingConfig]  # (group, resolved training)


def _groups(spec: LoraSweepSpec) -> Iterator[Configuration]:
    for group in spec.search.groups or []:
        for index, value in enumerate(group.values):
            where = f"search.groups[{group.name}].values[{index}]"
            yield group.name, apply_override(spec.training, value, where)


def _grid_axes(spec: LoraSweepSpec) -> list[tuple[tuple[str, ...], list[Any]]]:
    assert spec.search.grid is not None
    listed = _flatten(spec.search.grid.model_dump(mode="json", by_alias=True, exclude_none=True))
    return [(path, list(listed[".".join(path)])) for path, _ in PARAMETERS if ".".join(path) in listed]


def _grid(spec: LoraSweepSpec) -> Iterator[Configuration]:
    axes = _grid_axes(spec)
    for combination in itertools.product(*(values for _, values in axes)):
        changes: dict[str, Any] = {}
        for (path, _), value in zip(axes, combination, strict=True):
            changes = _merge(changes, _nested(path, value))
        yield "grid", apply_changes(spec.training, changes, f"search.grid {describe_changes(changes)}")


def describe_changes(changes: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={_format(value)}" for key, value in _flatten(changes).items())


def sample(distribution: Distribution, rng: random.Random, integer: bool) -> float | int:
    """One draw; integers round to the nearest whole number, floats keep 6 significant digits."""
    value: float
    if distribution.choice is not None:
        value = rng.choice(distribution.choice)
    elif distribution.uniform is not None:
        value = rng.uniform(distribution.uniform.min, distribution.uniform.max)
    else:
        assert distribution.log_uniform is not None
        low, high = math.log(distribution.log_uniform.min), math.log(distribution.log_uniform.max)
        value = math.exp(rng.uniform(low, high))
    return round(value) if integer else float(f"{value:.6g}")


def space_distributions(space: SearchSpace) -> list[tuple[tuple[str, ...], bool, Distribution]]:
    """The space's distributions as (camelCase path, integer?, distribution), in `PARAMETERS` order."""
    distributions: list[tuple[tuple[str, ...], bool, Distribution]] = []
    for path, integer in PARAMETERS:
        node: Any = space
        for key in path:
            node = getattr(node, _snake(key), None) if node is not None else None
        if node is not None:
            distributions.append((path, integer, node))
    return distributions


def _random(spec: LoraSweepSpec) -> Iterator[Configuration]:
    search = spec.search.random
    assert search is not None
    rng = random.Random(search.seed)
    distributions = space_distributions(search.space)
    for index in range(search.samples):
        changes: dict[str, Any] = {}
        for path, integer, distribution in distributions:
            changes = _merge(changes, _nested(path, sample(distribution, rng, integer)))
        yield (
            "random",
            apply_changes(spec.training, changes, f"search.random sample {index} ({describe_changes(changes)})"),
        )


def _snake(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


def _explicit(spec: LoraSweepSpec) -> Iterator[Configuration]:
    for index, value in enumerate(spec.search.explicit or []):
        yield "list", apply_override(spec.training, value, f"search.list[{index}]")


def _from_sweep(spec: LoraSweepSpec, source: Sequence[TrialStatus | SourceTrial]) -> Iterator[Configuration]:
    search = spec.search.from_sweep
    assert search is not None
    finished = [trial for trial in source if trial.phase == "Succeeded" and trial.objective is not None]
    if not finished:
        raise PlanError(f"search.fromSweep: sweep {search.name!r} has no succeeded trial with an objective to take")
    for rank, trial in enumerate(finished[: search.top], start=1):
        where = f"search.fromSweep.override on {search.name} trial {trial.id}"
        yield trial.group or f"top-{rank}", apply_override(trial.params, search.override, where)
    if search.refine:
        for group, training in neighbours(finished, search.top):
            where = f"search.fromSweep.override on {search.name}'s {group} neighbour"
            yield f"{REFINE}-{group}", apply_override(training, search.override, where)


def neighbours(finished: Sequence[TrialStatus | SourceTrial], top: int) -> list[Configuration]:
    """For each group holding one of the `top` best trials (best first): a configuration at the midpoint of its
    group's two best values, where the group's best beats the source's baseline.

    A group's candidates are its trials plus the baseline (the value every one-factor group moves from). The
    runner-up is the next best whose values differ; among equal objectives the one nearest the best (in the
    parameters that differ, relative to the best's values) is taken. The midpoint is arithmetic per parameter that
    differs (integers rounded): learning rates 5e-4 and 1e-3 give 7.5e-4; ranks 32/64 with alphas 64/128 give
    48/96. `finished` is best first, as the source's trial table is."""
    baseline = next((trial for trial in finished if trial.group == BASELINE), None)
    found: list[Configuration] = []
    seen: set[str] = set()
    for leader in finished[:top]:
        group = leader.group or ""
        if group in seen or group == BASELINE:
            continue
        seen.add(group)
        candidates = [trial for trial in finished if trial.group == group or trial is baseline]
        best = candidates[0]  # `finished` is best first, ties in plan order
        if baseline is not None and (best is baseline or best.objective == baseline.objective):
            continue  # no better than where the group started: nothing to refine
        centre = _values(best.params)
        others = [(trial, _differing(centre, trial.params)) for trial in candidates[1:]]
        others = [(trial, changes) for trial, changes in others if changes]
        if not others:
            continue
        level = others[0][0].objective
        _, far = min(
            ((trial, changes) for trial, changes in others if trial.objective == level),
            key=lambda item: _distance(centre, item[1]),
        )
        changes: dict[str, Any] = {}
        for path, integer in PARAMETERS:
            key = ".".join(path)
            if key in far:
                middle = (float(centre[key]) + float(far[key])) / 2
                changes = _merge(changes, _nested(path, round(middle) if integer else float(f"{middle:.6g}")))
        if changes:
            where = f"the {group} neighbour ({describe_changes(changes)})"
            found.append((group, apply_changes(best.params, changes, where)))
    return found


def _values(training: TrainingConfig) -> dict[str, Any]:
    return _flatten(training.model_dump(mode="json", by_alias=True))


def _differing(centre: Mapping[str, Any], training: TrainingConfig) -> dict[str, Any]:
    """The searchable parameters where `training` differs from `centre`, with `training`'s values."""
    values = _values(training)
    keys = {".".join(path) for path, _ in PARAMETERS}
    return {key: values[key] for key in keys if values[key] != centre.get(key)}


def _distance(centre: Mapping[str, Any], changes: Mapping[str, Any]) -> float:
    return sum(
        abs(float(value) - float(centre[key])) / abs(float(centre[key]) or 1.0) for key, value in changes.items()
    )


def upper_bound(spec: LoraSweepSpec) -> int:
    """Trials before de-duplication, computed without materialising them."""
    search = spec.search
    configs: int
    if search.groups is not None:
        configs = sum(len(group.values) for group in search.groups)
    elif search.grid is not None:
        configs = math.prod(len(values) for _, values in _grid_axes(spec))
    elif search.random is not None:
        configs = search.random.samples
    elif search.explicit is not None:
        configs = len(search.explicit)
    elif search.optimize is not None:
        configs = search.optimize.trials
    else:
        assert search.from_sweep is not None
        configs = search.from_sweep.top * (2 if search.from_sweep.refine else 1)
    return (configs + int(search.baseline_included())) * len(search.seeds)


def plan(
    spec: LoraSweepSpec,
    sweep: str,
    source: Sequence[TrialStatus | SourceTrial] = (),
    history: Sequence[Recorded] = (),
) -> list[PlannedTrial]:
    """The sweep's trials in launch order. `source`: the fromSweep sweep's results, best first
    (`status.source_results`, frozen in status.sourceTrials once the sweep starts); `history` the trials
    search.optimize proposed so far (see `optimize_plan`)."""
    if spec.search.optimize is not None:
        return packed(optimize_plan(spec, sweep, history), sweep, spec.packing)
    bound = upper_bound(spec)
    if bound > MATERIALISE_LIMIT:
        raise PlanError(
            f"the search expands to {bound:,} trials, more than maxTrials={spec.max_trials:,}; "
            f"narrow the search (fewer values, samples or seeds)"
        )
    configurations: list[Configuration] = []
    if spec.search.baseline_included():
        configurations.append((BASELINE, spec.training))
    search = spec.search
    if search.groups is not None:
        configurations.extend(_groups(spec))
    elif search.grid is not None:
        configurations.extend(_grid(spec))
    elif search.random is not None:
        configurations.extend(_random(spec))
    elif search.explicit is not None:
        configurations.extend(_explicit(spec))
    else:
        configurations.extend(_from_sweep(spec, source))

    trials: list[PlannedTrial] = []
    seen: dict[str, str] = {}
    for group, training in configurations:
        for seed in search.seeds:
            identity = trial_id(training, seed)
            if identity in seen:
                continue
            seen[identity] = group
            trials.append(planned(spec, sweep, len(trials), identity, group, training, seed))
    if len(trials) > spec.max_trials:
        raise PlanError(
            f"the search expands to {len(trials):,} trials, more than maxTrials={spec.max_trials:,}; "
            f"narrow the search or raise spec.maxTrials (at most {DEFAULT_MAX_TRIALS:,})"
        )
    return packed(trials, sweep, spec.packing)


PACK_PREFIX = "pack-"


def packed(trials: list[PlannedTrial], sweep: str, packing: int) -> list[PlannedTrial]:
    """With ``packing`` N > 1, every N consecutive trials of the plan share one Job (one pod, run one after
    another): the packs are fixed by plan order, so a restarted operator finds the same Jobs and no trial is ever
    in two of them."""
    if packing <= 1:
        return trials
    out: list[PlannedTrial] = []
    for start in range(0, len(trials), packing):
        members = trials[start : start + packing]
        name = job_name(sweep, PACK_PREFIX + short_hash(",".join(t.id for t in members)))
        out += [replace(trial, job_name=name) for trial in members]
    return out


def trial_config(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    trial: PlannedTrial,
    output_root: str | None = None,
    cache: CacheConfig | None = None,
    weights: ModelWeights | None = None,
) -> TrialConfig:
    """The `LORASWEEP_TRIAL` document for one planned trial; `output_root` defaults to `spec.storage.output`;
    ``cache``: where the preparation left the trial's inputs (preparation.plan_preparation); ``weights``: the model
    it fetched, at the revision it resolved (status.preparation.weights), the same for every trial."""
    root = output_root if output_root is not None else spec.storage.output
    return TrialConfig(
        namespace=namespace,
        sweep=sweep,
        trial=trial.id,
        group=trial.group,
        variant=trial.variant,
        model=spec.model,
        dataset=spec.dataset,
        training=trial.training,
        seed=trial.seed,
        output=trial_output(root, namespace, sweep, trial.id),
        cache=cache,
        weights=weights,
    )


# --- search.optimize ------------------------------------------------------------------------------------------
#
# No hidden state: the proposals made so far are the trials the sweep recorded (its Jobs, and the outcomes of
# those whose Jobs are gone), and the next ones come from a study rebuilt from them with a sampler seeded by
# (search seed, proposal index). The same record therefore gives the same next proposals, in any process.


@dataclass(frozen=True)
class Recorded:
    """A trial search.optimize proposed earlier, as the sweep recorded it."""

    index: int
    id: str
    training: TrainingConfig
    seed: int
    phase: TrialPhase
    objective: float | None = None
    intermediate: Mapping[int, float] = field(default_factory=dict)  # epoch -> the early-stopping metric


DUPLICATE_ATTEMPTS = 20


def proposal_id(training: TrainingConfig, seed: int, index: int) -> str:
    """An optimize trial is its proposal: the index is part of its identity, so one configuration proposed
    twice (a small discrete space) runs twice instead of colliding."""
    return short_hash(f"{trial_id(training, seed)}:{index}")


def planned(
    spec: LoraSweepSpec, sweep: str, index: int, identity: str, group: str, training: TrainingConfig, seed: int
) -> PlannedTrial:
    return PlannedTrial(
        index=index,
        id=identity,
        job_name=job_name(sweep, identity),
        group=group,
        variant=describe(spec.training, training),
        training=training,
        seed=seed,
    )


def optimize_plan(spec: LoraSweepSpec, sweep: str, history: Sequence[Recorded]) -> list[PlannedTrial]:
    """The proposals recorded so far (by index) plus the next ones, as many as `parallelism` leaves room for."""
    search = spec.search.optimize
    assert search is not None
    recorded: dict[int, Recorded] = {}
    for trial in sorted(history, key=lambda item: item.index):
        recorded.setdefault(trial.index, trial)
    trials = [planned(spec, sweep, r.index, r.id, OPTIMIZE, r.training, r.seed) for r in recorded.values()]
    in_flight = sum(1 for r in recorded.values() if r.phase not in TERMINAL_TRIAL_PHASES)
    room = min(spec.parallelism - in_flight, search.trials - len(recorded))
    known = list(recorded.values())
    seed = spec.search.seeds[0]
    index = max(recorded, default=-1) + 1
    for _ in range(max(0, room)):
        training = propose(spec, known, index)
        identity = proposal_id(training, seed, index)
        trials.append(planned(spec, sweep, index, identity, OPTIMIZE, training, seed))
        known.append(Recorded(index, identity, training, seed, "Pending"))
        index += 1
    return trials


def propose(spec: LoraSweepSpec, known: Sequence[Recorded], index: int) -> TrainingConfig:
    """Proposal `index` from TPE over `known` (running ones told to the sampler as running: constant liar).
    A configuration already known is asked again with the next sampler seed, a few times, then taken."""
    search = spec.search.optimize
    assert search is not None
    axes = space_distributions(search.space)
    taken = {trial_id(r.training, r.seed) for r in known}
    training = spec.training
    for attempt in range(DUPLICATE_ATTEMPTS):
        values = _ask(spec, axes, known, int(short_hash(f"{search.seed}:{index}:{attempt}", 8), 16))
        changes: dict[str, Any] = {}
        for (path, _, _), value in zip(axes, values, strict=True):
            changes = _merge(changes, _nested(path, value))
        training = apply_changes(
            spec.training, changes, f"search.optimize proposal {index} ({describe_changes(changes)})"
        )
        if trial_id(training, spec.search.seeds[0]) not in taken:
            break
    return training


def _optuna_distribution(distribution: Distribution, integer: bool) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if distribution.choice is not None:
        choices = [round(value) if integer else value for value in distribution.choice]
        return CategoricalDistribution(tuple(dict.fromkeys(choices)))
    span = distribution.uniform or distribution.log_uniform
    assert span is not None
    log = distribution.log_uniform is not None
    if integer:
        return IntDistribution(math.ceil(span.min), math.floor(span.max), log=log)
    return FloatDistribution(span.min, span.max, log=log)


def _value_of(training: TrainingConfig, path: tuple[str, ...]) -> Any:
    node: Any = training.model_dump(mode="json", by_alias=True)
    for key in path:
        node = node[key]
    return node


def _ask(
    spec: LoraSweepSpec,
    axes: Sequence[tuple[tuple[str, ...], bool, Distribution]],
    known: Sequence[Recorded],
    seed: int,
) -> list[Any]:
    import warnings

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    search = spec.search.optimize
    assert search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {".".join(path): _optuna_distribution(d, integer) for path, integer, d in axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is "experimental"
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=search.resolved_startup_trials, constant_liar=True
        )
        study = optuna.create_study(direction=spec.objective.resolved_goal, sampler=sampler)
        for trial in sorted(known, key=lambda item: item.index):
            params = {".".join(path): _value_of(trial.training, path) for path, _, _ in axes}
            if not all(_inside(distributions[name], value) for name, value in params.items()):
                continue  # outside the space as it is now: not evidence about it
            intermediate = dict(trial.intermediate)
            if trial.phase == "Succeeded" and trial.objective is not None and math.isfinite(trial.objective):
                state, value = TrialState.COMPLETE, trial.objective
            elif trial.phase == "Stopped":
                state, value = TrialState.PRUNED, None
            elif trial.phase in TERMINAL_TRIAL_PHASES:
                state, value = TrialState.FAIL, None
            else:
                state, value = TrialState.RUNNING, None
            study.add_trial(
                create_trial(
                    params=params,
                    distributions=distributions,
                    value=value,
                    state=state,
                    intermediate_values=intermediate,
                )
            )
        asked = study.ask(distributions)
    values = []
    for path, integer, _ in axes:
        name = ".".join(path)
        value = asked.params[name]
        if not integer and not isinstance(distributions[name], CategoricalDistribution):
            # 6 significant digits like search.random, kept inside the range the rounding may step out of
            low, high = distributions[name].low, distributions[name].high
            value = min(max(float(f"{float(value):.6g}"), low), high)
        values.append(int(value) if integer else float(value))
    return values


def _inside(distribution: Any, value: Any) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return bool(distribution.low <= value <= distribution.high)
