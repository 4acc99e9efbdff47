import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import load_digits
from nasjobs.estimators.successive_halving import (HyperbandConfig, HyperbandEstimator, SuccessiveHalvingConfig,
                                                   geometric_rungs)
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig
from nasjobs.strategies.random_search import RandomSearch

CPU = torch.device("cpu")
OPTIONS = {"space": {"max_layers": 2, "filters": "8,16"},
           "estimator": {"min_epochs": 1, "eta": 3, "bracket_size": 9}}
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "successive_halving", budget=9, epochs=9, seed=0, top_k=2,
                      options=OPTIONS)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(spec, store, root):
    runner = SearchRunner(spec, store, ArtifactStore(root, 1), CPU)
    runner.run()
    return runner


def test_rungs_and_hyperband_brackets_follow_the_paper():
    assert geometric_rungs(1, 9, 3) == [1, 3, 9] and geometric_rungs(2, 10, 3) == [2, 6, 10]
    space = ChainCNN(ChainCNNConfig())
    hb = HyperbandEstimator(space, load_digits(), HyperbandConfig(min_epochs=1, eta=3), CPU)
    # Li et al. 2018, Table 1 (R = 81, eta = 3): n = 81, 34, 15, 8, 5 starting at r = 1, 3, 9, 27, 81.
    brackets = [hb.bracket(i, 81) for i in range(6)]
    assert [n for n, _ in brackets[:5]] == [81, 34, 15, 8, 5]
    assert [r[0] for _, r in brackets[:5]] == [1, 3, 9, 27, 81]
    assert brackets[0][1] == [1, 3, 9, 27, 81] and brackets[4][1] == [81]
    assert brackets[5] == brackets[0]  # then the cycle starts again


class TellingRandom(RandomSearch):
    told: list = []

    def observe(self, arch, value):
        self.told.append((self.space.to_str(arch), value))


def test_the_best_third_is_promoted_resuming_from_its_checkpoint(tmp_path):
    store = MemoryStore()
    runner = SearchRunner(SPEC, store, ArtifactStore(tmp_path, 1), CPU)
    runner.strategy = TellingRandom(runner.space, runner.strategy.config, runner.strategy.seed)
    runner.strategy.told = []
    runner.run()
    trials = store.trials
    depth = {t.number: len(t.fidelity["rungs"]) for t in trials}
    assert len(trials) == 9 and sorted(depth.values()) == [1] * 6 + [2] * 2 + [3]
    first_rung = sorted(trials, key=lambda t: (-t.fidelity["rungs"][0]["val_acc"], t.number))
    assert {t.number for t in first_rung[:3]} == {n for n, d in depth.items() if d >= 2}
    top = next(t for t in trials if depth[t.number] == 3)
    assert [r["epochs"] for r in top.fidelity["rungs"]] == [1, 3, 9]
    assert top.fidelity["resumed_from_epoch"] == 3 and len(top.curve) == 9  # epochs are never repeated
    assert top.val_acc == top.fidelity["rungs"][-1]["val_acc"] == top.curve[-1]
    # Strategies see each trial once, with its last rung's figure.
    assert sorted(runner.strategy.told) == sorted((t.arch_key, t.val_acc) for t in trials)
    # A trial promoted to the top equals one trained straight through: the checkpoint resumes exactly.
    plain = TrainEstimator(runner.space, load_digits(), TrainConfig(), CPU).evaluate(
        runner.space.from_str(top.arch_key), 9, seed=runner.trial_seed(top.number))
    assert plain.curve == pytest.approx(top.curve)
    assert list((tmp_path / "experiment-1" / "estimator").glob("rung-checkpoint-*")) == []  # cleaned up
    assert store.best is not None and store.stop_reason == "budget"


class Killed(MemoryStore):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.saves = after, 0

    def record_trial(self, trial, state, kept):
        super().record_trial(trial, state, kept)
        self.saves += 1
        if self.saves == self.after:
            raise SystemExit("worker killed")


@pytest.mark.parametrize("after", [5, 10])  # in the first rung, and between promotions
def test_a_killed_bracket_resumes_to_the_same_result(tmp_path, after):
    reference = run(SPEC, MemoryStore(), tmp_path / "a").store
    killed = Killed(after)
    with pytest.raises(SystemExit):
        run(SPEC, killed, tmp_path / "b")
    resumed = MemoryStore(state=killed.state, trials=[t for t in killed.trials])
    run(SPEC, resumed, tmp_path / "b")
    summary = lambda s: [(t.arch_key, [r["epochs"] for r in t.fidelity["rungs"]]) for t in s.trials]  # noqa: E731
    assert summary(resumed) == summary(reference)
    assert resumed.best == pytest.approx(reference.best)


def test_hyperband_runs_its_brackets_in_a_search(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "hyperband", budget=12, epochs=4, seed=1, top_k=1,
                          options={"space": OPTIONS["space"], "estimator": {"min_epochs": 1, "eta": 2}})
    store = run(spec, MemoryStore(), tmp_path).store
    # R = 4, eta = 2, s_max = 2: brackets of 4 trials from 1 epoch, 3 from 2, 3 from 4, then again 4 from 1
    # (the budget stops that one at 2 trials).
    assert len(store.trials) == 12
    brackets = [t.fidelity["bracket"] for t in store.trials]
    assert brackets == [0] * 4 + [1] * 3 + [2] * 3 + [3] * 2
    assert [store.trials[i].fidelity["rungs"][0]["epochs"] for i in (0, 4, 7, 10)] == [1, 2, 4, 1]
    assert max(len(t.fidelity["rungs"]) for t in store.trials[:4]) == 3  # 1 -> 2 -> 4 epochs
    assert SuccessiveHalvingConfig().eta == 3


def test_a_bracket_planner_runs_a_rungs_members_side_by_side(tmp_path):
    """With parallelism 4, a bracket of 4 is filled at once; once all have rung 0, its 2 survivors go on to
    rung 1 together (eta 2), and the 2 others are told to the strategy."""
    from nasjobs.records import RUNG

    spec = ExperimentSpec("digits", "chain_cnn", "random", "successive_halving", budget=4, epochs=4, seed=2,
                          options={"estimator": {"min_epochs": 1, "eta": 2, "bracket_size": 4}}, parallelism=4)
    runner = SearchRunner(spec, MemoryStore(), ArtifactStore(tmp_path, 1), torch.device("cpu"))
    planner = runner.planner(parallelism=4)
    planner.restore(None, [])
    first = planner.plan(0.0)
    assert len(first.jobs) == 4 and first.finished is None
    for job, value in zip(first.jobs, (0.5, 0.9, 0.7, 0.6)):
        assert planner.plan(0.0).jobs == []  # the bracket is full: no promotion before all have rung 0
        job.fidelity["rungs"] = [{"epochs": 1, "val_acc": value}]
        job.val_acc, job.evaluations = value, [value]
        planner.tell(job)
    promoted = planner.plan(0.0)
    assert [t.number for t in promoted.jobs] == [1, 2] and all(t.job == RUNG for t in promoted.jobs)
    assert planner.loop["observed"] == [3, 0]  # the losers, best first
