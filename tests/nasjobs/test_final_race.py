"""The final race: the end of the budget measures the leading architectures again, so the experiment reports a mean,
not the luckiest single reading; it counts against the budget and resumes exactly."""
from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from nasjobs.bench import make_strategy, run_search
from nasjobs.search import MemoryStore, best_trial
from nasjobs.spaces import NB201
from nasjobs.strategies.base import Observed
from nasjobs.strategies.race import FinalRace
from tests.nasjobs.killed import KilledStore, run_bench_experiment

RACING = ["evolution", "local_search", "bo"]
NB = NB201()


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_the_race_starts_at_its_share_of_the_budget_and_measures_the_leader_with_fewest_readings() -> None:
    race = FinalRace(share=0.25, leaders=2)
    assert race.next() is None and not race.racing  # no budget: no race
    race.budget = 10
    assert race.start == 10 - math.floor(2.5) == 8
    for i, value in enumerate([0.5, 0.9, 0.7, 0.6, 0.1, 0.2, 0.3, 0.95]):
        assert not race.racing and race.next() is None
        race.observe(f"a{i}", value, reevaluating=False)
    race.observe("a1", 0.7, reevaluating=False)  # a repeat answered from the record: not an evaluation
    assert race.spent == 8 and race.readings["a1"] == [0.9]
    assert race.racing
    assert race.next() == "a7"  # the leaders a7 (0.95) and a1 (0.9) hold one reading each: the better first
    race.observe("a7", 0.65, reevaluating=True)  # a lucky first reading: its mean falls to 0.8
    assert race.ranking()[:3] == ["a1", "a7", "a2"]
    assert race.next() == "a1"  # now the leader with the fewest readings
    race.observe("a1", 0.88, reevaluating=True)
    assert race.spent == 10 and race.readings["a1"] == [0.9, 0.88]
    # Its readings are the trials' (first reading, then each re-evaluation): it restores from them alone.
    trials = [Observed(key, tuple(readings)) for key, readings in race.readings.items()]
    again = FinalRace(share=0.25, leaders=2)
    again.budget = 10
    again.restore(trials)
    assert again.readings == race.readings and again.spent == race.spent and again.next() == race.next()


def test_no_share_or_no_budget_means_no_race() -> None:
    for share, budget in [(0.0, 100), (0.15, None), (0.001, 100)]:  # 0.001 of 100 rounds down to nothing
        race = FinalRace(share, 5)
        race.budget = budget
        for i in range(100):
            race.observe(str(i), i / 100, reevaluating=False)
        assert not race.racing and race.next() is None


@pytest.mark.parametrize("name", RACING)
def test_the_last_share_of_the_budget_measures_the_leaders_again(name: str) -> None:
    budget = 60
    searched = budget - math.floor(0.15 * budget)  # the default share: 9 evaluations of 60 race
    reported_held_more = 0
    for seed in range(5):
        outcome = run_search(name, "cifar10", budget, seed)
        trials = outcome.trials
        assert sum(len(t.evaluations) for t in trials) == budget == len(outcome.reported)
        assert len(trials) == searched  # no new architecture once the race has begun
        again = [t for t in trials if len(t.evaluations) > 1]
        assert again and sum(len(t.evaluations) - 1 for t in again) == budget - searched
        best = max(trials, key=lambda t: (mean(t.evaluations), -t.number))
        assert best.number == outcome.best_number
        reported_held_more += len(best.evaluations) > 1
        # Before the race the reported best is simply the highest single reading.
        assert outcome.reported[searched - 1] == NB.index(NB.from_str(max(
            trials, key=lambda t: (t.evaluations[0], -t.number)).arch_key))
    assert reported_held_more >= 4


@pytest.mark.parametrize("name", RACING)
def test_without_a_race_every_evaluation_is_a_new_architecture(name: str) -> None:
    outcome = run_search(name, "cifar10", 60, 0, {"final_race": 0})
    assert len(outcome.trials) == 60 and all(len(t.evaluations) == 1 for t in outcome.trials)


@pytest.mark.parametrize("name", RACING)
def test_reevaluates_is_off_until_the_race(name: str) -> None:
    strategy = make_strategy(name, NB, seed=5)
    strategy.set_budget(20)  # the race: the last 3 evaluations
    for i in range(17):
        assert not strategy.reevaluates
        arch = strategy.propose()
        strategy.observe(arch, 0.5 + 0.01 * (i % 7))
    assert strategy.reevaluates
    assert NB.to_str(strategy.propose()) in strategy.race.ranking()[:5]


def run_experiment(name: str, store: MemoryStore, tmp_path: Any) -> list[tuple[str, list[float]]]:
    return run_bench_experiment(name, None, store, tmp_path)  # 40 evaluations: the race is the last 6


@pytest.mark.parametrize("killed_after", [33, 35, 38])
@pytest.mark.parametrize("name", RACING)
def test_a_search_killed_in_its_race_resumes_exactly(name: str, killed_after: int, tmp_path: Any) -> None:
    expected = run_experiment(name, MemoryStore(), tmp_path / "a")
    assert sum(len(e) for _, e in expected) == 40 and any(len(e) > 1 for _, e in expected)
    crashed = KilledStore(survive=killed_after)
    run_experiment(name, crashed, tmp_path / "b")
    resumed = MemoryStore(state=json.loads(json.dumps(crashed.state)), trials=copy.deepcopy(crashed.trials))
    assert run_experiment(name, resumed, tmp_path / "b") == expected
    assert best_trial(resumed.trials).number == max(
        resumed.trials, key=lambda t: (mean(t.evaluations), -t.number)).number
