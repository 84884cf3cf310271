"""ASHA's rung decisions on scripted results: rungs, cutoffs, ties, late and lost results, restarts, goals."""

from __future__ import annotations

import math

from lorasweep_operator.early_stopping import Decision, History, Rule, cutoff, decide, rungs

RULE = Rule(metric="val_accuracy", goal="maximize", reduction_factor=3, min_epochs=1)


def test_rungs_are_min_epochs_times_powers_of_the_factor_below_the_last_epoch() -> None:
    assert rungs(RULE, 3) == [1]
    assert rungs(RULE, 10) == [1, 3, 9]
    assert rungs(RULE, 1) == []
    assert rungs(Rule("val_loss", "minimize", reduction_factor=2, min_epochs=2), 16) == [2, 4, 8]


def test_cutoff_keeps_the_best_third_and_at_least_one() -> None:
    assert cutoff([0.5], RULE) == 0.5
    assert cutoff([0.2, 0.5], RULE) == 0.5
    assert cutoff([0.1, 0.9, 0.5, 0.3, 0.7, 0.2], RULE) == 0.7  # keep 2 of 6
    assert cutoff([0.4, 0.1, 0.3], Rule("val_loss", "minimize")) == 0.1


def test_nine_trials_at_the_first_rung_keep_the_best_third() -> None:
    values = [0.30, 0.90, 0.50, 0.70, 0.20, 0.80, 0.40, 0.60, 0.10]
    histories = {f"t{i}": History(epochs=3, values={1: v}) for i, v in enumerate(values)}
    decisions = decide(RULE, histories)
    assert [d.trial for d in decisions if not d.stop] == ["t1", "t3", "t5"]  # 0.9, 0.7, 0.8
    assert all(d.rung == 1 and d.cutoff == 0.70 and d.compared == 9 for d in decisions)
    assert sum(d.stop for d in decisions) == 6


def test_ties_with_the_cutoff_continue() -> None:
    histories = {f"t{i}": History(epochs=3, values={1: v}) for i, v in enumerate([0.5, 0.5, 0.5, 0.2, 0.5, 0.1])}
    stopped = {d.trial for d in decide(RULE, histories) if d.stop}
    assert stopped == {"t3", "t5"}  # the cutoff (2nd best of 6) is 0.5: every 0.5 goes on


def test_decisions_are_final_and_a_late_result_is_judged_against_everything_known() -> None:
    # The first arrival is alone at its rung and goes on; a later, better crowd does not take that back.
    first = decide(RULE, {"a": History(epochs=9, values={1: 0.4})})
    assert first == [Decision("a", 1, False, 0.4, 1)]
    histories = {
        "a": History(epochs=9, values={1: 0.4, 2: 0.5}, decided={1: False}),
        "b": History(epochs=9, values={1: 0.8}),
        "c": History(epochs=9, values={1: 0.9}),
        "d": History(epochs=9, values={1: 0.3}),  # late: reports after a has gone on
    }
    decisions = decide(RULE, histories)
    assert [(d.trial, d.stop) for d in decisions] == [("b", True), ("c", False), ("d", True)]
    assert all(d.cutoff == 0.9 and d.compared == 4 for d in decisions)  # keep 1 of 4; a (0.4) stays on


def test_the_same_results_give_the_same_decisions_whatever_the_order() -> None:
    histories = {f"t{i}": History(epochs=3, values={1: (i * 7 % 9) / 10}) for i in range(9)}
    reversed_order = dict(reversed(list(histories.items())))
    assert decide(RULE, histories) == decide(RULE, reversed_order)
    # A restart that reads the recorded decisions makes no new ones.
    recorded = {
        trial: History(3, h.values, {d.rung: d.stop for d in decide(RULE, histories) if d.trial == trial})
        for trial, h in histories.items()
    }
    assert decide(RULE, recorded) == []


def test_finished_and_stopped_trials_are_compared_against_but_not_decided() -> None:
    histories = {
        "done": History(epochs=9, values={1: 0.9, 3: 0.9}, finished=True),
        "stopped": History(epochs=9, values={1: 0.1}, decided={1: True}),
        "live": History(epochs=9, values={1: 0.5, 3: 0.6}, decided={1: False}),
    }
    assert decide(RULE, histories) == [Decision("live", 3, True, 0.9, 2)]


def test_a_lost_rung_report_is_skipped_and_a_later_rung_decides() -> None:
    histories = {
        "a": History(epochs=10, values={1: 0.9, 3: 0.9}, decided={1: False}),
        "b": History(epochs=10, values={2: 0.2, 3: 0.2, 4: 0.3}),  # its epoch-1 report never arrived
    }
    assert decide(RULE, histories) == [Decision("a", 3, False, 0.9, 2), Decision("b", 3, True, 0.9, 2)]
    waiting = {"b": History(epochs=10, values={})}
    assert decide(RULE, waiting) == []


def test_minimize_and_nan_count_as_worst() -> None:
    rule = Rule(metric="val_loss", goal="minimize")
    histories = {"a": History(3, {1: 0.2}), "b": History(3, {1: math.nan}), "c": History(3, {1: 0.9})}
    assert [(d.trial, d.stop) for d in decide(rule, histories)] == [("a", False), ("b", True), ("c", True)]
