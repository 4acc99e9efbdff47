import json
import random

from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig
from nasjobs.strategies import STRATEGIES, Observed
from nasjobs.strategies.random_search import RandomSearch, RandomSearchConfig

SPACE = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16), kernels=(3,), pooling=True))


def test_it_is_registered():
    assert STRATEGIES.get("random") is RandomSearch


def test_it_is_reproducible_for_a_seed():
    a = RandomSearch(SPACE, RandomSearchConfig(), seed=3)
    b = RandomSearch(SPACE, RandomSearchConfig(), seed=3)
    assert [SPACE.to_str(a.propose()) for _ in range(10)] == [SPACE.to_str(b.propose()) for _ in range(10)]


def test_state_dict_round_trips_through_json_and_resumes_the_same_proposals():
    original = RandomSearch(SPACE, RandomSearchConfig(), seed=11)
    trials = []
    for _ in range(5):
        arch = original.propose()
        original.observe(arch, 0.5)
        trials.append(Observed(SPACE.to_str(arch), (0.5,)))
    restored = RandomSearch(SPACE, RandomSearchConfig(), seed=999)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())), trials)
    assert [SPACE.to_str(original.propose()) for _ in range(5)] == [SPACE.to_str(restored.propose()) for _ in range(5)]


def test_it_never_repeats_until_the_space_is_exhausted():
    size = SPACE.size()
    strategy = RandomSearch(SPACE, RandomSearchConfig(no_repeats=True), seed=0)
    proposals = [SPACE.to_str(strategy.propose()) for _ in range(size)]
    assert len(set(proposals)) == size


def test_it_does_not_propose_an_architecture_in_flight_again():
    strategy = RandomSearch(SPACE, RandomSearchConfig(no_repeats=True), seed=0)
    strategy.set_parallelism(8)
    first = [strategy.propose() for _ in range(8)]
    strategy.observe(first[3], 0.5)
    proposals = [SPACE.to_str(a) for a in first + [strategy.propose() for _ in range(7)]]
    assert len(set(proposals)) == 15


def test_with_repeats_allowed_it_samples_independently():
    strategy = RandomSearch(SPACE, RandomSearchConfig(no_repeats=False), seed=0)
    proposals = [SPACE.to_str(strategy.propose()) for _ in range(200)]
    assert len(set(proposals)) < 200
    assert random  # the module under test takes its generator from the seed, never the global one
