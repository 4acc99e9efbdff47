import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.search import (ExperimentSpec, Leaderboard, MemoryStore, SearchCancelled, SearchRunner, SpecError,
                            TrialRecord, best_trial, evaluations_done, top_k_numbers, validate_spec)
from nasjobs.strategies.random_search import RandomSearch
from tests.nasjobs.killed import KilledStore

CPU = torch.device("cpu")
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=5, epochs=1, seed=4, top_k=2,
                      options={"space": {"max_layers": 2, "filters": "8,16"}})


def run(spec, store, root):
    SearchRunner(spec, store, ArtifactStore(root, 1), CPU).run()
    return store


def test_it_runs_to_the_budget_keeping_only_the_top_k_weights(tmp_path):
    store = run(SPEC, MemoryStore(), tmp_path)
    assert [t.number for t in store.trials] == list(range(5))
    assert len({t.arch_key for t in store.trials}) == 5
    kept = sorted(store.trials, key=lambda t: (-t.val_acc, t.number))[:2]
    assert sorted(p.name for p in (tmp_path / "experiment-1").iterdir()) == sorted(
        f"trial-{t.number:05d}.pt" for t in kept)
    assert {t.number for t in store.trials if t.weights_path} == {t.number for t in kept}
    best_number, test_acc = store.best
    assert best_number == kept[0].number
    assert 0.0 <= test_acc <= 1.0
    assert all(t.estimator == "train" and t.fidelity["epochs"] == 1 for t in store.trials)


class CrashingStore(MemoryStore):
    """Dies like a killed worker after `crash_after` trials were recorded."""

    def __init__(self, crash_after: int) -> None:
        super().__init__()
        self.crash_after = crash_after

    def record_trial(self, trial, strategy_state, kept):
        super().record_trial(trial, strategy_state, kept)
        if len(self.trials) == self.crash_after:
            raise SystemExit("worker killed")


def test_a_resumed_search_proposes_what_an_uninterrupted_one_would(tmp_path):
    uninterrupted = run(SPEC, MemoryStore(), tmp_path / "a")
    crashed = CrashingStore(crash_after=2)
    with pytest.raises(SystemExit):
        run(SPEC, crashed, tmp_path / "b")
    assert len(crashed.trials) == 2
    resumed = MemoryStore(state=crashed.state, trials=list(crashed.trials))
    run(SPEC, resumed, tmp_path / "b")
    assert [t.arch_key for t in resumed.trials] == [t.arch_key for t in uninterrupted.trials]
    assert [t.number for t in resumed.trials] == list(range(5))


def test_cancelling_stops_the_search_between_epochs(tmp_path):
    store = MemoryStore()
    store.cancelled = True
    with pytest.raises(SearchCancelled):
        run(SPEC, store, tmp_path)
    assert store.trials == []


def test_lost_weights_are_recomputed_for_the_final_test(tmp_path):
    store = run(SPEC, MemoryStore(), tmp_path)
    for f in (tmp_path / "experiment-1").iterdir():
        f.unlink()
    again = MemoryStore(state=store.state, trials=store.trials)
    run(SPEC, again, tmp_path)
    assert again.best == store.best


@pytest.mark.parametrize("change, field", [
    ({"budget": 0}, "budget"), ({"epochs": -1}, "epochs"), ({"strategy": "nope"}, "strategy"),
    ({"dataset": "imagenet"}, "dataset"), ({"options": {"space": {"max_layers": 0}}}, "space.max_layers"),
    ({"options": {"strategy": {"bogus": 1}}}, "strategy.bogus"), ({"options": {"other": {}}}, "options"),
    ({"seed": True}, "seed"),
])
def test_invalid_specs_name_the_offending_field(change, field):
    spec = ExperimentSpec(**{**SPEC.__dict__, **change})
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    assert err.value.field == field


def test_the_engine_runs_without_django():
    code = ("import sys, nasjobs.search, nasjobs.spaces, nasjobs.strategies, nasjobs.estimators; "
            "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django imported'")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_trial_records_keep_their_estimator():
    record = TrialRecord(0, "c8k3", "3x3·8", 0.5, 10, 20, 0.1, {}, [], None, "train")
    assert record.estimator == "train"


def test_patience_stops_a_search_that_stopped_improving(tmp_path):
    spec = ExperimentSpec(**{**SPEC.__dict__, "budget": 40, "patience": 2})
    store = run(spec, MemoryStore(), tmp_path)
    best = max(store.trials, key=lambda t: (t.val_acc, -t.number))
    assert store.stop_reason == "patience"
    assert len(store.trials) == best.number + 3 < 40


def test_the_time_limit_counts_search_time_across_resumptions(tmp_path):
    spec = ExperimentSpec(**{**SPEC.__dict__, "budget": 50, "max_seconds": 1})
    crashed = CrashingStore(crash_after=1)
    with pytest.raises(SystemExit):
        run(spec, crashed, tmp_path)
    crashed.trials[-1].search_seconds = 5.0  # as if the first run had already spent five seconds
    resumed = MemoryStore(state=crashed.state, trials=list(crashed.trials))
    run(spec, resumed, tmp_path)
    assert resumed.stop_reason == "time_limit" and len(resumed.trials) == 1


def test_each_trial_records_exploration_figures(tmp_path):
    store = run(SPEC, MemoryStore(), tmp_path)
    assert store.stop_reason == "budget"
    assert store.trials[0].distance_to_incumbent is None
    assert all(t.distance_to_incumbent >= 1 for t in store.trials[1:])  # every trial is a new architecture
    assert [t.proposals for t in store.trials] == sorted(t.proposals for t in store.trials)
    assert store.trials[-1].proposals >= len(store.trials)
    assert all(b.search_seconds >= a.search_seconds for a, b in zip(store.trials, store.trials[1:]))


class ReevaluateFirst:
    """A strategy that measures its first architecture again every other proposal."""

    reevaluates = True

    def __init__(self, space, seed):
        import random as _random

        self.space, self.rng, self.first, self.observed, self.turn = space, _random.Random(seed), None, [], 0

    def propose(self):
        self.turn += 1
        if self.first is not None and self.turn % 2 == 0:
            return self.first
        arch = self.space.sample(self.rng)
        self.first = self.first or arch
        return arch

    def observe(self, arch, value):
        self.observed.append((self.space.to_str(arch), value))

    def state_dict(self):
        return {}


def test_a_reevaluating_strategy_spends_budget_and_the_trial_reports_the_mean(tmp_path):
    spec = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=6, epochs=1, seed=3, top_k=1)
    store = MemoryStore()
    runner = SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU)
    runner.strategy = ReevaluateFirst(runner.space, 0)
    runner.run()
    first = store.trials[0]
    assert len(first.evaluations) == 4  # proposal 1, then 2, 4 and 6 measured it again
    assert sum(len(t.evaluations) for t in store.trials) == 6 and len(store.trials) == 3
    assert first.val_acc == pytest.approx(sum(first.evaluations) / 4)
    observed_first = [v for key, v in runner.strategy.observed if key == first.arch_key]
    assert observed_first == first.evaluations  # the strategy sees each single value, not the mean
    assert len(set(first.evaluations)) > 1  # each evaluation draws its own benchmark seed


def test_the_leaderboard_ranks_as_the_best_trial_and_top_k_do_through_reevaluations():
    rng = random.Random(0)
    trials = []
    board = Leaderboard([])
    for number in range(200):
        if trials and rng.random() < 0.3:  # a re-evaluation moves a trial's mean
            trial = rng.choice(trials)
            before = trial.val_acc
            trial.evaluations.append(rng.choice([0.5, 0.7, 0.9]))
            trial.val_acc = sum(trial.evaluations) / len(trial.evaluations)
            board.reevaluated(trial, before)
        else:
            trial = TrialRecord(len(trials), f"a{number}", "", rng.choice([0.5, 0.7, 0.9]), 0, 0, 0.0, {}, [])
            trials.append(trial)
            board.add(trial)
        assert board.best == best_trial(trials).number
        assert board.top(5) == top_k_numbers(trials, 5)
        assert board.evaluations == evaluations_done(trials)
    assert Leaderboard(trials).order == board.order


class OwnHistory(RandomSearch):
    """A strategy written before the loop handed strategies their history: its checkpoint holds what it saw."""

    def state_dict(self):
        return {"rng": rng_state(self.rng), "seen": sorted(self.seen)}

    def load_state_dict(self, state):
        set_rng_state(self.rng, state["rng"])
        self.seen = set(state["seen"])


def test_a_strategy_that_restores_from_its_state_alone_still_resumes(tmp_path):
    spec = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=30, epochs=200, seed=2, top_k=1)

    def run_own(store, root):
        runner = SearchRunner(spec, store, ArtifactStore(root, 1), CPU)
        runner.strategy = OwnHistory(runner.space, runner.strategy.config, runner.strategy.seed)
        try:
            runner.run()
        except RuntimeError:
            pass
        return [t.arch_key for t in store.trials]

    expected = run_own(MemoryStore(), tmp_path / "a")
    crashed = KilledStore(survive=12)
    run_own(crashed, tmp_path / "b")
    assert run_own(MemoryStore(state=crashed.state, trials=list(crashed.trials)), tmp_path / "b") == expected


def test_a_cancel_stops_training_between_batches_not_at_the_end_of_a_long_epoch(tmp_path):
    """One epoch of 135 batches: the heartbeat runs between them, so the cancel it reports on its 20th call
    stops the trial mid-epoch, and nothing half-trained is recorded."""
    class CancelledMidEpoch(MemoryStore):
        def heartbeat(self) -> None:
            super().heartbeat()
            if self.heartbeats == 20:
                raise SearchCancelled()

    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=1, seed=0,
                          options={"estimator": {"batch_size": 8}})
    store = CancelledMidEpoch()
    with pytest.raises(SearchCancelled):
        run(spec, store, tmp_path)
    assert store.heartbeats == 20 and store.trials == []
