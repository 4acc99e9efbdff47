"""The NAS-Bench-201 lookup estimator returns the table's figures, as fractions, with its fidelity recorded."""
from __future__ import annotations

from pathlib import Path

import pytest

from nasjobs import nb201_table
from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import DATASETS
from nasjobs.estimators import ESTIMATORS, BenchmarkEstimator
from nasjobs.estimators.benchmark import BenchmarkConfig
from nasjobs.options import OptionError, parse_config
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner, SpecError, validate_spec
from nasjobs.spaces import ChainCNN, NB201
from nasjobs.spaces.nb201 import NB201Config

SPACE = NB201()
BEST = SPACE.from_index(6111)


def table(name: str = "cifar10"):
    return DATASETS.get(f"nb201-{name}")()


def estimator(dataset: str = "cifar10", **options: object) -> BenchmarkEstimator:
    return BenchmarkEstimator(SPACE, table(dataset), parse_config(BenchmarkConfig, {"count_flops": False, **options}))


def test_it_is_registered_as_benchmark() -> None:
    assert ESTIMATORS.get("benchmark") is BenchmarkEstimator


def test_the_200_epoch_value_is_one_seed_of_the_table_drawn_from_the_trial_seed() -> None:
    table = nb201_table.load("cifar10")
    seeds = {round(v, 4) for v in table.val200[6111, :table.val200_count[6111]]}
    seen = set()
    for seed in range(40):
        result = estimator().evaluate(BEST, 200, seed=seed)
        assert 0.0 <= result.val_acc <= 1.0
        assert round(result.val_acc * 100, 4) in seeds
        assert result == estimator().evaluate(BEST, 200, seed=seed)
        seen.add(round(result.val_acc * 100, 4))
        assert result.fidelity["epochs"] == 200 and result.fidelity["estimator"] == "benchmark"
        assert result.state is None
    assert seen == seeds


@pytest.mark.parametrize("name", nb201_table.DATASETS)
def test_the_12_epoch_value_params_and_test_accuracy_come_from_the_datasets_table(name: str) -> None:
    est = estimator(name, fidelity="12")
    figures = nb201_table.load(name)
    result = est.evaluate(BEST, 12, seed=0)
    assert result.val_acc == pytest.approx(figures.val12[6111] / 100)
    assert result.params == round(figures.params_m[6111] * 1e6)
    assert result.train_seconds == pytest.approx(figures.train_time_s[6111] * 12 / 200)
    assert est.test_accuracy(BEST, None) == pytest.approx(figures.test200[6111] / 100)
    assert result.fidelity["table"] == name


def test_best_cifar10_cell_has_the_table_optimum_on_test() -> None:
    assert estimator().test_accuracy(BEST, None) == pytest.approx(0.943733)


def test_flops_are_counted_for_the_benchmark_input() -> None:
    est = BenchmarkEstimator(SPACE, table(), BenchmarkConfig())
    assert est.evaluate(BEST, 200, seed=0).flops == pytest.approx(153.27e6, rel=0.01)
    small = BenchmarkEstimator(SPACE, table("imagenet16-120"), BenchmarkConfig())
    assert small.evaluate(BEST, 200, seed=0).flops < est.evaluate(BEST, 200, seed=0).flops  # 16x16 inputs


def test_it_refuses_other_spaces_and_other_skeletons() -> None:
    with pytest.raises(ValueError, match="nb201"):
        BenchmarkEstimator(ChainCNN(), table(), BenchmarkConfig())
    with pytest.raises(ValueError, match="channels"):
        BenchmarkEstimator(NB201(NB201Config(channels=8)), table(), BenchmarkConfig())


def test_it_refuses_datasets_that_are_not_tables() -> None:
    with pytest.raises(ValueError, match="nb201-cifar10"):
        BenchmarkEstimator(SPACE, DATASETS.get("digits")(), BenchmarkConfig())
    with pytest.raises(SpecError, match="nb201-cifar100") as refused:
        validate_spec(ExperimentSpec("digits", "nb201", "random", "benchmark", budget=1, epochs=1, seed=0))
    assert refused.value.field == "estimator"


def test_the_table_is_no_longer_an_option() -> None:
    with pytest.raises(OptionError, match="table"):
        parse_config(BenchmarkConfig, {"table": "cifar100"})


def test_it_runs_in_the_search_loop_and_reports_the_table_test_accuracy(tmp_path: Path) -> None:
    spec = ExperimentSpec(dataset="nb201-cifar100", space="nb201", strategy="random", estimator="benchmark", budget=5,
                          epochs=200, seed=3, options={"estimator": {"count_flops": False}})
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, "exp"), device=None).run()
    assert len(store.trials) == 5
    best_number, test_acc = store.best
    best = max(store.trials, key=lambda t: (t.val_acc, -t.number))
    assert best.number == best_number
    index = SPACE.index(SPACE.from_str(best.arch_key))
    assert test_acc == pytest.approx(nb201_table.load("cifar100").test200[index] / 100)
    assert all(t.fidelity["table"] == "cifar100" for t in store.trials)



def test_params_and_macs_come_from_the_table_and_the_cell_once_per_architecture(monkeypatch) -> None:
    """No network is built to count, and a trial's figures are worked out once per architecture: an
    architecture evaluated again (a re-evaluation, a repeat) reuses them."""
    est = BenchmarkEstimator(SPACE, table(), BenchmarkConfig())
    monkeypatch.setattr(NB201, "build", lambda *args: pytest.fail("a network was built to count"))
    calls = []
    formula = NB201.cost
    monkeypatch.setattr(NB201, "cost", lambda self, *args: calls.append(args[0]) or formula(self, *args))
    other = SPACE.from_index(42)
    results = [est.evaluate(arch, 200, seed=seed) for seed, arch in enumerate([BEST, other, BEST, other, BEST])]
    assert calls == [BEST, other]
    assert results[0].flops == results[2].flops == pytest.approx(153.27e6, rel=0.01)
    assert results[1].params == round(nb201_table.load("cifar10").params_m[42] * 1e6)
