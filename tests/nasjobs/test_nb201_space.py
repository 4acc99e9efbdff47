"""The NAS-Bench-201 cell space: representation, the benchmark's index, networks and drawings."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasjobs import nb201_table
from nasjobs.metrics import count_macs, count_params
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import SPACES, ArchParseError
from nasjobs.spaces.nb201 import NB201, OPS, NB201Config

BEST_CIFAR10 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
SPACE = NB201()
archs = st.tuples(*[st.sampled_from(OPS)] * 6)


def test_it_is_registered_as_nb201() -> None:
    assert SPACES.get("nb201") is NB201


@given(archs)
def test_string_and_tokens_round_trip(arch: tuple) -> None:
    assert SPACE.from_str(SPACE.to_str(arch)) == arch
    tokens = SPACE.to_tokens(arch)
    assert len(tokens) == len(SPACE.vocabulary()) == 6
    assert all(0 <= t < len(v) for t, v in zip(tokens, SPACE.vocabulary()))
    assert SPACE.from_tokens(tokens) == arch
    assert SPACE.from_index(SPACE.index(arch)) == arch


@given(archs, st.integers(0, 2**32))
def test_mutate_gives_a_valid_different_architecture(arch: tuple, seed: int) -> None:
    child = SPACE.mutate(arch, random.Random(seed))
    assert child != arch
    assert SPACE.distance(arch, child) == 1
    assert SPACE.from_str(SPACE.to_str(child)) == child


@given(archs)
def test_neighbours_are_the_24_single_edge_changes(arch: tuple) -> None:
    neighbours = SPACE.neighbours(arch)
    assert len(neighbours) == len(set(neighbours)) == 24
    assert all(SPACE.distance(arch, n) == 1 for n in neighbours)


@given(st.integers(0, 2**32))
def test_sample_respects_the_allowed_operations(seed: int) -> None:
    space = NB201(NB201Config(ops=("skip_connect", "nor_conv_3x3")))
    arch = space.sample(random.Random(seed))
    assert set(arch) <= {"skip_connect", "nor_conv_3x3"}
    assert len(space.neighbours(arch)) == 6
    assert space.size() == 2**6


def test_index_6111_is_the_best_cifar10_cell() -> None:
    assert SPACE.to_str(SPACE.from_index(6111)) == BEST_CIFAR10
    assert SPACE.index(SPACE.from_str(BEST_CIFAR10)) == 6111


def test_all_15625_strings_are_distinct_and_map_back_to_their_index() -> None:
    assert SPACE.size() == 15625
    strings = [SPACE.to_str(SPACE.from_index(i)) for i in range(15625)]
    assert len(set(strings)) == 15625
    assert strings == nb201_table.arch_strings()
    assert all(SPACE.index(SPACE.from_str(s)) == i for i, s in enumerate(strings))
    assert {SPACE.to_str(a) for a in SPACE.all()} == set(strings)


@pytest.mark.parametrize("text", ["", "|nor_conv_3x3~0|", BEST_CIFAR10.replace("~1", "~2", 1),
                                  BEST_CIFAR10.replace("nor_conv_1x1", "conv_7x7"), "__import__('os')",
                                  BEST_CIFAR10 + "+|none~0|"])
def test_bad_strings_are_rejected(text: str) -> None:
    with pytest.raises(ArchParseError):
        SPACE.from_str(text)


def test_operations_outside_the_allowed_subset_are_rejected() -> None:
    with pytest.raises(ArchParseError):
        NB201(NB201Config(ops=("skip_connect", "nor_conv_3x3"))).from_str(BEST_CIFAR10)


def test_an_empty_operation_subset_is_a_form_error() -> None:
    with pytest.raises(OptionError):
        parse_config(NB201Config, {"ops": []})
    assert parse_config(NB201Config, {"ops": "nor_conv_3x3,none"}).ops == ("none", "nor_conv_3x3")


@settings(max_examples=6, deadline=None)
@given(archs, st.sampled_from([(1, 8, 8), (3, 32, 32), (3, 7, 7)]))
def test_build_runs_forward_and_backward(arch: tuple, shape: tuple) -> None:
    model = NB201(NB201Config(channels=4, cells=1)).build(arch, shape, 10)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_parameter_count_matches_the_table() -> None:
    model = SPACE.build(SPACE.from_index(6111), (3, 32, 32), 10)
    expected = nb201_table.load("cifar10").params_m[6111] * 1e6
    assert count_params(model) == pytest.approx(expected, rel=0.02)


@given(archs)
def test_describe_draws_every_edge_that_carries_data(arch: tuple) -> None:
    graph = SPACE.describe(arch)
    assert [n for n, _ in graph.nodes] == ["0", "1", "2", "3"]
    labels = [label for _, _, label in graph.edges]
    assert sorted(labels) == sorted(op for op in arch if op != "none")
    assert all(int(src) < int(dst) for src, dst, _ in graph.edges)
    assert SPACE.display(arch)


@pytest.mark.parametrize("shape, classes, config", [
    ((3, 32, 32), 10, NB201Config()), ((3, 16, 16), 120, NB201Config()),
    ((1, 8, 8), 10, NB201Config(channels=4, cells=1)), ((3, 7, 9), 5, NB201Config(channels=3, cells=2))])
def test_the_cost_formula_counts_what_the_built_network_holds(shape: tuple, classes: int,
                                                             config: NB201Config) -> None:
    """Parameters and multiply-adds by formula equal those counted on the network, odd input sizes included."""
    space = NB201(config)
    rng = random.Random(0)
    for arch in [space.from_str(BEST_CIFAR10), ("none",) * 6, ("skip_connect",) * 6] + [
            space.sample(rng) for _ in range(5)]:
        model = space.build(arch, shape, classes)
        assert space.cost(arch, shape, classes) == (count_params(model), count_macs(model, shape))
