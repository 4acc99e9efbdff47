"""Every search strategy on the NAS-Bench-201 lookup and the chain CNN space: better than random, valid,
checkpointable, reproducible."""
from __future__ import annotations

import json
import random
import statistics
from functools import lru_cache
from typing import Any

import pytest

from nasjobs import nb201_table
from nasjobs.bench import make_strategy, run_search
from nasjobs.estimators.benchmark import BenchmarkConfig, BenchmarkEstimator
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import ChainCNN, NB201, SearchSpace
from nasjobs.spaces.chain_cnn import ChainCNNConfig
from nasjobs.spaces.nb201 import NB201Config
from nasjobs.strategies import STRATEGIES, Strategy
from nasjobs.strategies.evolution import EvolutionConfig
from nasjobs.strategies.reinforce import Reinforce, ReinforceConfig

LEARNING = ["evolution", "reinforce", "bo", "local_search"]
NB = NB201()
CHAIN = ChainCNN(ChainCNNConfig(max_layers=3))


def nb201_search(name: str, seed: int, budget: int = 100) -> float:
    estimator = BenchmarkEstimator(NB, None, BenchmarkConfig(count_flops=False))
    outcome = run_search(make_strategy(name, NB, seed), NB, estimator, budget, random.Random(seed))
    return float(nb201_table.load("cifar10").test200[outcome.reported[-1]])


@lru_cache(maxsize=None)
def mean_over_seeds(name: str) -> float:
    return statistics.fmean(nb201_search(name, seed) for seed in range(20))


@pytest.mark.parametrize("name", LEARNING)
def test_it_beats_random_search_on_nb201_at_100_trials(name: str) -> None:
    assert mean_over_seeds(name) > mean_over_seeds("random")


def fake_value(space: SearchSpace, arch: Any) -> float:
    """A deterministic stand-in for accuracy: a hash of the architecture's key, in [0, 1)."""
    return random.Random(space.to_str(arch)).random()


def drive(strategy: Strategy, space: SearchSpace, steps: int) -> list[str]:
    proposals = []
    for _ in range(steps):
        arch = strategy.propose()
        key = space.to_str(arch)
        assert space.from_str(key) == arch  # a valid member of the space
        proposals.append(key)
        strategy.observe(arch, fake_value(space, arch))
    return proposals


@pytest.mark.parametrize("space", [NB, CHAIN], ids=["nb201", "chain_cnn"])
@pytest.mark.parametrize("name", LEARNING + ["random"])
def test_it_proposes_valid_architectures_and_resumes_exactly(name: str, space: SearchSpace) -> None:
    steps = 30 if name != "bo" else 15
    uninterrupted = make_strategy(name, space, seed=7)
    expected = drive(uninterrupted, space, 2 * steps)

    first = make_strategy(name, space, seed=7)
    got = drive(first, space, steps)
    state = json.loads(json.dumps(first.state_dict()))  # what the database keeps
    resumed = make_strategy(name, space, seed=7)
    resumed.load_state_dict(state)
    got += drive(resumed, space, steps)
    assert got == expected


@pytest.mark.parametrize("name", LEARNING + ["random"])
def test_the_same_seed_gives_the_same_search_and_another_seed_another(name: str) -> None:
    a = drive(make_strategy(name, NB, seed=1), NB, 20)
    assert a == drive(make_strategy(name, NB, seed=1), NB, 20)
    assert a != drive(make_strategy(name, NB, seed=2), NB, 20)


def test_strategies_are_registered() -> None:
    assert set(LEARNING + ["random"]) <= set(STRATEGIES.names())


def test_options_are_validated() -> None:
    with pytest.raises(OptionError):
        parse_config(EvolutionConfig, {"population": 5, "sample_size": 10})
    with pytest.raises(OptionError):
        parse_config(ReinforceConfig, {"lr": 0})
    for name in LEARNING:
        parse_config(STRATEGIES.get(name).Config, {})


def test_a_repeated_proposal_answered_from_the_record_is_fine() -> None:
    """The platform loop answers an evaluated architecture with its stored value; evolution takes it as a
    new individual and goes on."""
    strategy = make_strategy("evolution", NB, seed=0, options={"population": 3, "sample_size": 2})
    arch = NB.from_index(6111)
    for _ in range(5):
        strategy.observe(arch, 0.9)
    assert NB.from_str(NB.to_str(strategy.propose()))


def test_the_controller_learns_the_rewarded_token() -> None:
    """On a toy space where token 1 is rewarded at every position, REINFORCE raises its probability."""
    space = NB201(NB201Config(ops=("none", "skip_connect", "nor_conv_3x3")))
    strategy = Reinforce(space, parse_config(ReinforceConfig, {"lr": 0.05, "batch_size": 4}), seed=0)
    before = [strategy.probabilities()[1]]
    for _ in range(120):
        arch = strategy.propose()
        strategy.observe(arch, sum(t == 1 for t in space.to_tokens(arch)) / 6)
    after = strategy.probabilities()[1]
    assert after > before[0] + 0.2
    assert strategy.probabilities(prefix=[1, 1])[1] > 0.5
