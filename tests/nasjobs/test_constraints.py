"""Deployment limits: proposals over max_params / max_macs are skipped without training, the budget goes to the rest."""
import dataclasses
import random

import pytest
import torch

from nasjobs import nb201_table
from nasjobs.artifacts import ArtifactStore
from nasjobs.constraints import Gate, Limits
from nasjobs.estimators import ESTIMATORS
from nasjobs.metrics import count_macs, count_params, network_cost
from nasjobs.options import parse_config
from nasjobs.planner import GATE_KEY
from nasjobs.search import ExperimentSpec, MemoryStore, SearchInfeasible, SearchRunner, SpecError, validate_spec
from nasjobs.spaces import SPACES

CPU = torch.device("cpu")
# On the CIFAR-10 table the parameters run from 0.073 to 1.53 million; 0.4 million leaves about a third of the cells.
TABLE = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=40, epochs=1, seed=3,
                       max_params=400_000)
TABLE_STRATEGIES = {"random": {}, "evolution": {"population": 10, "sample_size": 3},
                    "reinforce": {"batch_size": 4}, "bo": {"initial": 5, "random_candidates": 50},
                    "local_search": {"initial": 4}}


def run(spec, store, root):
    runner = SearchRunner(spec, store, ArtifactStore(root, 1), CPU)
    runner.run()
    return runner


def table_params(arch_key: str) -> int:
    table = nb201_table.load("cifar10")
    return round(float(table.params_m[nb201_table.index_of()[arch_key]]) * 1e6)


@pytest.mark.parametrize("strategy", sorted(TABLE_STRATEGIES))
def test_a_limited_search_never_evaluates_an_over_limit_network_and_spends_its_whole_budget(strategy, tmp_path):
    spec = dataclasses.replace(TABLE, strategy=strategy, options={"strategy": TABLE_STRATEGIES[strategy]})
    runner = run(spec, store := MemoryStore(), tmp_path)
    assert sum(len(t.evaluations) for t in store.trials) == spec.budget  # every evaluation on an in-limit network
    assert all(t.params <= spec.max_params for t in store.trials)
    assert all(t.params == table_params(t.arch_key) for t in store.trials)  # the limit counts as the trial does
    skipped = store.state[GATE_KEY]["skipped"]
    assert skipped > 0  # the strategies do propose larger cells: they were skipped, not trained
    # Every skipped proposal is a proposal: the last trial's count holds them with the trials' and the repeats.
    assert max(t.proposals for t in store.trials) >= len(store.trials) + skipped
    assert store.stop_reason == "budget"


def test_evolution_keeps_only_trained_networks_in_its_population(tmp_path):
    spec = dataclasses.replace(TABLE, strategy="evolution", budget=30,
                               options={"strategy": TABLE_STRATEGIES["evolution"]})
    run(spec, store := MemoryStore(), tmp_path)
    trained = {t.arch_key: t.val_acc for t in store.trials}
    population = store.state["population"]
    assert len(population) == 10
    assert all(key in trained and table_params(key) <= spec.max_params for key, _ in population)


def test_reinforce_told_the_worst_figure_learns_to_propose_fewer_large_networks():
    """Skipped proposals are rewarded with the worst figure so far (failure policy `worst`), so the controller
    proposes fewer over-limit networks than one told nothing (`ignore`), which learns only from what fits."""
    from nasjobs.planner import Planner
    from nasjobs.strategies import STRATEGIES

    space = SPACES.get("nb201")(parse_config(SPACES.get("nb201").Config, {}))
    table = nb201_table.load("cifar10")

    def skipped(policy: str) -> int:
        cls = STRATEGIES.get("reinforce")
        strategy = cls(space, parse_config(cls.Config, {"batch_size": 5, "lr": 0.05}), 11)
        gate = Gate(Limits(max_params=400_000), lambda arch: (table_params(space.to_str(arch)), 0), 10_000)
        planner = Planner(dataclasses.replace(TABLE, budget=40), space, strategy, 1, policy, gate)
        planner.restore(None, [])
        while (plan := planner.plan(0.0)).jobs:
            for trial in plan.jobs:
                trial.val_acc = float(table.val12[space.index(space.from_str(trial.arch_key))]) / 100
                trial.evaluations = [trial.val_acc]
                planner.tell(trial)
        assert planner.board.evaluations == 40
        return gate.skipped

    assert skipped("worst") * 2 < skipped("ignore")  # 14 against 43 with this seed


def test_a_resumed_limited_search_proposes_what_an_uninterrupted_one_would(tmp_path):
    from tests.nasjobs.test_search_loop import CrashingStore

    spec = dataclasses.replace(TABLE, strategy="bo", budget=16, options={"strategy": TABLE_STRATEGIES["bo"]})
    uninterrupted = MemoryStore()
    run(spec, uninterrupted, tmp_path / "a")
    crashed = CrashingStore(crash_after=9)
    with pytest.raises(SystemExit):
        run(spec, crashed, tmp_path / "b")
    resumed = MemoryStore(state=crashed.state, trials=list(crashed.trials))
    run(spec, resumed, tmp_path / "b")
    assert [t.arch_key for t in resumed.trials] == [t.arch_key for t in uninterrupted.trials]
    assert [t.proposals for t in resumed.trials] == [t.proposals for t in uninterrupted.trials]
    assert resumed.state[GATE_KEY] == uninterrupted.state[GATE_KEY]


def test_a_limited_search_with_successive_halving_trains_no_over_limit_network(tmp_path):
    spec = ExperimentSpec("digits", "mlp", "random", "successive_halving", budget=4, epochs=2, seed=0,
                          options={"space": {"max_layers": 2, "widths": "32,128"},
                                   "estimator": {"eta": 2, "min_epochs": 1}}, max_params=5_000)
    runner = run(spec, store := MemoryStore(), tmp_path)
    assert store.trials and all(t.params <= 5_000 for t in store.trials)
    assert sum(1 for t in store.trials) == 4  # a bracket's architectures: the budget counts them
    assert store.state["gate"]["skipped"] > 0
    model = runner.space.build(runner.space.from_str(store.trials[0].arch_key), (1, 8, 8), 10)
    assert store.trials[0].params == count_params(model)


def test_limits_that_exclude_nearly_every_architecture_fail_the_search_saying_why(tmp_path):
    # With convolutions only, one cell of the 64 (every edge a 1x1 convolution) has at most 241,306 parameters:
    # once it is evaluated, every new proposal is over the limit, and the budget of 5 can never be spent.
    spec = dataclasses.replace(TABLE, budget=5, max_params=241_306,
                               options={"space": {"ops": "nor_conv_3x3,nor_conv_1x1"}})
    store = MemoryStore()
    with pytest.raises(SearchInfeasible) as caught:
        SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU, max_skipped_in_a_row=40).run()
    assert str(caught.value) == (
        "40 proposals in a row were over the deployment limits (max_params 241,306): the limits exclude (nearly) "
        "every architecture of the nb201 space the strategy proposes; the smallest network proposed over them had "
        "456,346 parameters, the cheapest 62,833,280 MACs")
    assert len(store.trials) <= 1 and all(t.params <= 241_306 for t in store.trials)


def test_limits_no_architecture_can_meet_are_refused_at_submission():
    with pytest.raises(SpecError) as caught:
        validate_spec(dataclasses.replace(TABLE, max_params=50_000))
    assert caught.value.field == "max_params"
    assert "smallest network on nb201-cifar10" in caught.value.message and "73,306 parameters" in caught.value.message
    with pytest.raises(SpecError) as caught:
        validate_spec(ExperimentSpec("digits", "chain_cnn", "random", "train", 3, 1, 0, max_macs=100))
    assert caught.value.field == "max_macs" and "1,184 MACs" in caught.value.message
    validate_spec(ExperimentSpec("digits", "chain_cnn", "random", "train", 3, 1, 0, max_macs=1_184))


@pytest.mark.parametrize("value", [0, -5, 2.5, "12", True, 10**16])
def test_a_limit_is_a_positive_whole_number(value):
    for name in ("max_params", "max_macs"):
        with pytest.raises(SpecError) as caught:
            validate_spec(dataclasses.replace(TABLE, **{"max_params": None, name: value}))
        assert caught.value.field == name and "whole number" in caught.value.message


def test_a_differentiable_search_takes_no_limits():
    with pytest.raises(SpecError) as caught:
        validate_spec(ExperimentSpec("digits", "nb201", "darts", "train", 1, 1, 0, max_params=10**6))
    assert caught.value.field == "max_params" and "differentiable" in caught.value.message


@pytest.mark.parametrize("space, shape, classes, options", [
    ("chain_cnn", (1, 8, 8), 10, {}), ("chain_cnn", (1, 40), 10, {"square_kernels": True}),
    ("mlp", (20,), 3, {}), ("darts", (3, 16, 16), 10, {})])
def test_the_meta_device_counts_what_a_cpu_network_has(space, shape, classes, options):
    cls = SPACES.get(space)
    s = cls(parse_config(cls.Config, options))
    rng = random.Random(0)
    for _ in range(5):
        arch = s.sample(rng)
        model = s.build(arch, shape, classes)
        assert network_cost(s, arch, shape, classes) == (count_params(model), count_macs(model, shape))


@pytest.mark.parametrize("space, shape, classes, options", [
    ("chain_cnn", (1, 8, 8), 10, {}), ("chain_cnn", (1, 40), 10, {"square_kernels": True, "strides": "1,2"}),
    ("mlp", (20,), 3, {"widths": "64,16"}), ("nb201", (3, 32, 32), 10, {}),
    ("nb201", (3, 32, 32), 10, {"ops": "nor_conv_3x3,nor_conv_1x1"})])
def test_a_space_names_its_smallest_network(space, shape, classes, options):
    cls = SPACES.get(space)
    s = cls(parse_config(cls.Config, options))
    smallest = s.smallest()
    assert s.from_str(s.to_str(smallest)) == smallest
    params, macs = network_cost(s, smallest, shape, classes)
    rng = random.Random(1)
    for arch in (s.sample(rng) for _ in range(100)):
        p, m = network_cost(s, arch, shape, classes)
        assert p >= params and m >= macs


def test_the_benchmark_table_agrees_that_the_empty_cell_is_smallest():
    estimator = ESTIMATORS.get("benchmark")
    assert estimator.own_cost
    table = nb201_table.load("cifar10")
    space = SPACES.get("nb201")(parse_config(SPACES.get("nb201").Config, {}))
    assert table_params(space.to_str(space.smallest())) == round(float(table.params_m.min()) * 1e6)
