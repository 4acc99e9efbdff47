"""bo's encodings: Weisfeiler-Lehman features of the NAS-Bench-201 operations graph, and one-hot tokens where a
space has no graph."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasjobs.bench import make_strategy
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import ChainCNN, NB201, OpGraph
from nasjobs.spaces.chain_cnn import ChainCNNConfig
from nasjobs.spaces.nb201 import OPS
from nasjobs.strategies.bo import BOConfig
from nasjobs.strategies.encodings import one_hot_features, wl_features
from tests.nasjobs.test_strategies import resumed_and_uninterrupted

NB = NB201()
C3, C1, SK, AP, NO = "nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3", "none"
# edges in the benchmark's order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2
BEST = (C3, C3, C3, SK, C3, C1)
archs = st.tuples(*[st.sampled_from(OPS)] * 6)


def test_the_best_cell_as_an_operations_graph() -> None:
    graph = NB.op_graph(BEST)
    assert graph.labels == ("input", C3, C3, C3, SK, C3, C1, "output")
    #                       0        1<-0 2<-0 2<-1 3<-0 3<-1 3<-2 3
    assert graph.inputs == ((), (0,), (0,), (1,), (0,), (1,), (2, 3), (4, 5, 6))


def test_wl_features_count_operations_then_operations_with_their_inputs() -> None:
    graph = NB.op_graph(BEST)
    assert wl_features(graph, 0) == {"input": 1, C3: 4, SK: 1, C1: 1, "output": 1}
    one = wl_features(graph, 1)
    assert one[f"{C3}(input)"] == 2 and one[f"{C3}({C3})"] == 2 and one[f"{SK}(input)"] == 1
    assert one[f"{C1}({C3},{C3})"] == 1 and one[f"output({C1},{C3},{SK})"] == 1
    assert sum(one.values()) == 2 * sum(wl_features(graph, 0).values())  # every node relabelled once


def test_edges_on_no_input_to_output_path_leave_the_graph() -> None:
    # node 1 feeds nothing: its input edge is dead, as if it were none
    assert NB.op_graph((C3, C1, NO, SK, NO, C3)) == NB.op_graph((NO, C1, NO, SK, NO, C3))
    # node 2 gets nothing: its output edge only ever sees zeros
    assert NB.op_graph((C3, NO, NO, SK, C3, AP)) == NB.op_graph((C3, NO, NO, SK, C3, NO))
    # everything none: input and output, unconnected
    assert NB.op_graph((NO,) * 6) == OpGraph(("input", "output"), ((), ()))
    assert NB.op_graph((NO, NO, NO, C3, NO, NO)) == OpGraph(("input", C3, "output"), ((), (0,), (1,)))


@settings(max_examples=200, deadline=None)
@given(archs)
def test_swapping_the_two_middle_nodes_gives_equal_features(arch: tuple) -> None:
    """With no edge between nodes 1 and 2, exchanging them is the same network drawn differently."""
    a10, a20, _, a30, a31, a32 = arch
    cell = (a10, a20, NO, a30, a31, a32)
    swapped = (a20, a10, NO, a30, a32, a31)
    for h in range(3):
        assert wl_features(NB.op_graph(cell), h) == wl_features(NB.op_graph(swapped), h)


@settings(max_examples=200, deadline=None)
@given(archs)
def test_every_node_is_fed_by_earlier_nodes(arch: tuple) -> None:
    graph = NB.op_graph(arch)
    assert graph.labels[0] == "input" and graph.labels[-1] == "output"
    assert all(all(i < node for i in inputs) for node, inputs in enumerate(graph.inputs))
    assert all(inputs for inputs in graph.inputs[1:-1])  # a kept operation always has an input


def test_different_cells_get_different_features() -> None:
    assert wl_features(NB.op_graph(BEST), 1) != wl_features(NB.op_graph((C3, C3, C3, C3, C3, C1)), 1)
    assert wl_features(NB.op_graph(BEST), 1) != wl_features(NB.op_graph((C3, C3, C3, SK, C1, C3)), 1)
    # iteration 0 cannot tell where the skip sits; iteration 1 can
    moved = (C3, C3, C3, C3, SK, C1)
    assert wl_features(NB.op_graph(BEST), 0) == wl_features(NB.op_graph(moved), 0)
    assert wl_features(NB.op_graph(BEST), 1) != wl_features(NB.op_graph(moved), 1)


def test_bo_reads_the_graph_on_nb201_and_tokens_where_a_space_has_none() -> None:
    key = NB.to_str(BEST)
    graph_bo = make_strategy("bo", NB, seed=0)
    assert graph_bo.config.encoding == "graph"
    assert graph_bo._encode_one(key) == wl_features(NB.op_graph(BEST), 1)
    one_hot_bo = make_strategy("bo", NB, seed=0, options={"encoding": "one_hot"})
    assert one_hot_bo._encode_one(key) == one_hot_features(NB.to_tokens(BEST))
    chain = ChainCNN(ChainCNNConfig(max_layers=3))
    arch = chain.sample(random.Random(0))
    assert chain.op_graph(arch) is None
    assert make_strategy("bo", chain, seed=0)._encode_one(chain.to_str(arch)) == one_hot_features(
        chain.to_tokens(arch))


@pytest.mark.parametrize("options", [{"encoding": "one_hot"}, {"wl_iterations": 0}, {"wl_iterations": 2}])
def test_each_encoding_proposes_valid_architectures_and_resumes_exactly(options: dict) -> None:
    got, expected = resumed_and_uninterrupted("bo", NB, 5, options, 15, 15)
    assert got == expected
    assert len(set(expected)) == len(expected)


def test_bad_encoding_options_are_refused_with_the_option_named() -> None:
    with pytest.raises(OptionError) as error:
        parse_config(BOConfig, {"encoding": "paths"})
    assert error.value.key == "encoding"
    with pytest.raises(OptionError) as error:
        parse_config(BOConfig, {"wl_iterations": 5})
    assert error.value.key == "wl_iterations"


def test_the_log_error_target_applies_to_accuracies_only() -> None:
    """-log(1 - accuracy) by default; a figure outside [0, 1] (a zero-cost proxy's log score) is modelled as is."""
    bo = make_strategy("bo", NB, seed=0)
    assert bo.config.log_error
    assert bo._target([0.5, 0.9]).tolist() == pytest.approx([math.log(2.0), math.log(10.0)])
    assert bo._target([0.5, 3.0, -1.0]).tolist() == [0.5, 3.0, -1.0]
    assert make_strategy("bo", NB, seed=0, options={"log_error": False})._target([0.9]).tolist() == [0.9]


def test_bo_searches_zero_cost_figures_outside_the_unit_interval() -> None:
    """Driven with log-scale scores (tens, as synflow gives), the model still ranks: bo's proposals after the
    random start are never repeats and move towards higher scores than random sampling finds."""
    def score(arch: tuple) -> float:
        return 10.0 + 5.0 * arch.count(C3) - 3.0 * arch.count(NO)

    bo = make_strategy("bo", NB, seed=1, options={"final_race": 0})
    seen = []
    for _ in range(40):
        arch = bo.propose()
        seen.append(arch)
        bo.observe(arch, score(arch))
    rng = random.Random(1)
    sampled = [NB.sample(rng) for _ in range(40)]
    assert len(set(seen)) == len(seen)
    assert max(score(a) for a in seen) > max(score(a) for a in sampled)
    assert max(score(a) for a in seen) == 10.0 + 5.0 * 6  # all six edges 3x3 convolutions
