import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import SPACES, ArchParseError
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig

SPACE = ChainCNN(ChainCNNConfig(max_layers=5, filters=(8, 16, 32), kernels=(1, 3, 5), pooling=True))
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def sample(seed: int):
    return SPACE.sample(random.Random(seed))


def test_it_is_registered():
    assert SPACES.get("chain_cnn") is ChainCNN


@given(seeds)
def test_string_round_trips(seed):
    arch = sample(seed)
    assert SPACE.from_str(SPACE.to_str(arch)) == arch


@given(seeds)
def test_tokens_round_trip_within_the_vocabulary(seed):
    arch = sample(seed)
    tokens = SPACE.to_tokens(arch)
    vocab = SPACE.vocabulary()
    assert len(tokens) == len(vocab)
    assert all(0 <= t < len(v) for t, v in zip(tokens, vocab))
    assert SPACE.from_tokens(tokens) == arch


@given(seeds, seeds)
def test_mutate_gives_a_valid_different_architecture(seed, mutation_seed):
    arch = sample(seed)
    child = SPACE.mutate(arch, random.Random(mutation_seed))
    assert child != arch
    assert SPACE.from_str(SPACE.to_str(child)) == child
    assert child in SPACE.neighbours(arch)


def test_neighbours_are_valid_distinct_and_exclude_the_origin():
    arch = SPACE.from_str("c16k3p-c32k5")
    neighbours = SPACE.neighbours(arch)
    assert arch not in neighbours
    assert len(set(neighbours)) == len(neighbours)
    for n in neighbours:
        SPACE.from_str(SPACE.to_str(n))


def test_size_counts_every_depth():
    per_layer = 3 * 3 * 2
    assert SPACE.size() == sum(per_layer ** n for n in range(1, 6))


@settings(max_examples=8, deadline=None)
@given(seeds, st.sampled_from([(1, 8, 8), (3, 32, 32), (1, 1, 1), (3, 5, 7)]))
def test_every_architecture_builds_and_trains_for_any_input_size(seed, shape):
    arch = sample(seed)
    model = SPACE.build(arch, shape, num_classes=10)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_describe_draws_every_layer_and_pool():
    arch = SPACE.from_str("c16k3p-c32k5-c8k1p")
    graph = SPACE.describe(arch)
    labels = [label for _, label in graph.nodes]
    assert "conv 3x3, 16" in labels and "conv 5x5, 32" in labels and "conv 1x1, 8" in labels
    assert labels.count("max pool 2x2") == 2
    assert len(graph.edges) == len(graph.nodes) - 1  # a chain


@pytest.mark.parametrize("text", ["", "c16", "c16k3-x", "c999k3", "c16k9", "c16k3-" * 6 + "c16k3", "__import__('os')"])
def test_bad_strings_are_rejected_with_a_message(text):
    with pytest.raises(ArchParseError):
        SPACE.from_str(text)


def test_impossible_options_are_errors():
    with pytest.raises(OptionError) as err:
        parse_config(ChainCNNConfig, {"max_layers": 0})
    assert err.value.key == "max_layers"
    with pytest.raises(OptionError) as err:
        parse_config(ChainCNNConfig, {"filters": ""})
    assert err.value.key == "filters"
    with pytest.raises(OptionError):
        parse_config(ChainCNNConfig, {"kernels": "3,4"})
    assert parse_config(ChainCNNConfig, {"filters": "64,16", "pooling": "false"}) == ChainCNNConfig(
        filters=(16, 64), pooling=False)
