"""The DARTS cell space: representation, mutations, the evaluation network and its drawing."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasjobs.metrics import count_macs, count_params
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import SPACES, ArchParseError
from nasjobs.spaces.darts import DARTS_V2, STEPS, Darts, DartsConfig, Genotype, genotype
from nasjobs.spaces.darts_ops import PRIMITIVES

TINY = DartsConfig(init_channels=2, layers=3)  # a normal cell and both reduction cells, in milliseconds
SPACE = Darts(TINY)
DEFAULT_OPS = tuple(op for op in PRIMITIVES if op != "none")
DARTS_V2_STR = ("normal=sep_conv_3x3~0,sep_conv_3x3~1|sep_conv_3x3~0,sep_conv_3x3~1|skip_connect~0,sep_conv_3x3~1|"
                "skip_connect~0,dil_conv_3x3~2;reduce=max_pool_3x3~0,max_pool_3x3~1|max_pool_3x3~1,skip_connect~2|"
                "max_pool_3x3~0,skip_connect~2|max_pool_3x3~1,skip_connect~2")


@st.composite
def cells(draw: st.DrawFn, ops: tuple[str, ...]) -> list[tuple[str, int]]:
    edges = []
    for j in range(STEPS):
        inputs = draw(st.lists(st.integers(0, j + 1), min_size=2, max_size=2, unique=True))
        edges += [(draw(st.sampled_from(ops)), i) for i in inputs]  # either order: Genotype sorts them
    return edges


def genotypes(ops: tuple[str, ...] = DEFAULT_OPS) -> st.SearchStrategy[Genotype]:
    return st.builds(genotype, cells(ops), cells(ops))


def test_it_is_registered_as_darts() -> None:
    assert SPACES.get("darts") is Darts


@given(genotypes())
def test_string_and_tokens_round_trip(arch: Genotype) -> None:
    text = SPACE.to_str(arch)
    assert SPACE.from_str(text) == arch
    assert SPACE.to_str(SPACE.from_str(text)) == text
    tokens, vocab = SPACE.to_tokens(arch), SPACE.vocabulary()
    assert len(tokens) == len(vocab) == 2 * STEPS * 4
    assert all(0 <= t < len(v) for t, v in zip(tokens, vocab))
    assert SPACE.from_tokens(tokens) == arch


@given(genotypes(), st.integers(0, 2**32))
def test_mutate_gives_a_valid_different_architecture(arch: Genotype, seed: int) -> None:
    child = SPACE.mutate(arch, random.Random(seed))
    assert child != arch
    assert SPACE.from_str(SPACE.to_str(child)) == child
    assert child in SPACE.neighbours(arch)


@given(genotypes())
def test_neighbours_are_all_single_operation_and_input_changes(arch: Genotype) -> None:
    neighbours = SPACE.neighbours(arch)
    # per cell: 8 edges x 6 other operations, plus 0 + 2 + 4 + 6 other inputs for nodes 0..3
    assert len(neighbours) == len(set(neighbours)) == 2 * (8 * 6 + 12)
    assert arch not in neighbours


@given(st.integers(0, 2**32))
def test_sample_respects_the_allowed_operations(seed: int) -> None:
    space = Darts(DartsConfig(ops=("skip_connect", "max_pool_3x3")))
    arch = space.sample(random.Random(seed))
    assert {op for kind in ("normal", "reduce") for op, _ in arch.cell(kind)} <= {"skip_connect", "max_pool_3x3"}
    assert space.from_str(space.to_str(arch)) == arch
    assert space.size() == (1 * 3 * 6 * 10 * 2**8) ** 2


def test_with_a_single_operation_mutation_still_changes_an_input() -> None:
    space = Darts(DartsConfig(ops=("skip_connect",)))
    arch = space.sample(random.Random(0))
    assert len(space.neighbours(arch)) == 2 * 12
    assert space.mutate(arch, random.Random(1)) != arch


def test_size_counts_input_pairs_and_operations_of_both_cells() -> None:
    assert SPACE.size() == (1 * 3 * 6 * 10 * 7**8) ** 2
    assert Darts(DartsConfig(ops=PRIMITIVES)).size() == (180 * 8**8) ** 2


def test_darts_v2_is_the_published_genotype() -> None:
    assert SPACE.to_str(DARTS_V2) == DARTS_V2_STR
    assert SPACE.from_str(DARTS_V2_STR) == DARTS_V2
    assert DARTS_V2.normal_concat == DARTS_V2.reduce_concat == (2, 3, 4, 5)
    # node 2 of the normal cell is listed as (sep_conv_3x3, 1), (skip_connect, 0) in the paper's code
    assert DARTS_V2 == Genotype(list(DARTS_V2.normal[:4]) + [("sep_conv_3x3", 1), ("skip_connect", 0)]
                                + list(DARTS_V2.normal[6:]), [2, 3, 4, 5], list(DARTS_V2.reduce), [2, 3, 4, 5])
    assert hash(DARTS_V2) == hash(SPACE.from_str(DARTS_V2_STR))


@pytest.mark.parametrize("text, message", [
    (DARTS_V2_STR.replace("skip_connect~0,sep_conv_3x3~1", "sep_conv_3x3~1,skip_connect~0"), "canonical"),
    (DARTS_V2_STR.replace("dil_conv_3x3~2", "dil_conv_3x3~02"), "canonical"),
    (DARTS_V2_STR.replace("sep_conv_3x3~1|", "sep_conv_3x3~0|", 1), "distinct"),
    (DARTS_V2_STR.replace("dil_conv_3x3~2", "dil_conv_3x3~5"), "input 5"),
    (DARTS_V2_STR.replace("dil_conv_3x3", "conv_7x7"), "unknown operation"),
    (DARTS_V2_STR.replace("dil_conv_3x3", "none"), "not allowed"),
    (DARTS_V2_STR.replace("|skip_connect~0,dil_conv_3x3~2", ""), "3 nodes"),
    (DARTS_V2_STR.replace(",sep_conv_3x3~1", "", 1), "two inputs"),
    ("__import__('os').system('true')", "expected normal="),
    ("", "expected normal="),
])
def test_from_str_rejects_strings_outside_the_space(text: str, message: str) -> None:
    with pytest.raises(ArchParseError, match=message):
        SPACE.from_str(text)


def test_from_tokens_accepts_either_input_order() -> None:
    tokens = SPACE.to_tokens(DARTS_V2)
    assert tokens[:4] == [0, DEFAULT_OPS.index("sep_conv_3x3"), 0, DEFAULT_OPS.index("sep_conv_3x3")]
    # node 3 of the normal cell: skip_connect from 0, dil_conv_3x3 from 2 (the 2nd input other than 0)
    assert tokens[12:16] == [0, DEFAULT_OPS.index("skip_connect"), 1, DEFAULT_OPS.index("dil_conv_3x3")]
    assert SPACE.from_tokens(tokens[:12] + [2, tokens[15], 0, tokens[13]] + tokens[16:]) == DARTS_V2
    with pytest.raises(ArchParseError, match="vocabulary"):
        SPACE.from_tokens(tokens[:-1])
    with pytest.raises(ArchParseError, match="vocabulary"):
        SPACE.from_tokens([2] + tokens[1:])


@given(st.data())
def test_every_token_sequence_in_the_vocabulary_is_an_architecture(data: st.DataObject) -> None:
    tokens = [data.draw(st.integers(0, len(v) - 1)) for v in SPACE.vocabulary()]
    arch = SPACE.from_tokens(tokens)
    assert SPACE.from_str(SPACE.to_str(arch)) == arch
    assert SPACE.from_tokens(SPACE.to_tokens(arch)) == arch


def test_options_are_validated_with_the_option_name() -> None:
    assert "none" not in DartsConfig().ops
    assert parse_config(DartsConfig, {"ops": "sep_conv_3x3,none"}).ops == ("none", "sep_conv_3x3")
    for raw, key in [({"ops": ""}, "ops"), ({"ops": "conv_9x9"}, "ops"), ({"layers": 0}, "layers"),
                     ({"init_channels": 1}, "init_channels"), ({"drop_path_prob": 0.95}, "drop_path_prob")]:
        with pytest.raises(OptionError) as err:
            parse_config(DartsConfig, raw)
        assert err.value.key == key
    with pytest.raises(OptionError, match="ops"):
        DartsConfig(ops=())


def _train_step(model: torch.nn.Module, shape: tuple[int, int, int], classes: int = 3) -> torch.Tensor:
    model.train()
    out = model(torch.randn(2, *shape))
    logits = out[0] if isinstance(out, tuple) else out
    loss = sum(o.logsumexp(1).mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    assert logits.shape == (2, classes)
    assert all(p.grad is not None for n, p in model.named_parameters() if "cells" in n or "stem" in n)
    return logits


@settings(max_examples=4, deadline=None)
@given(genotypes(PRIMITIVES), st.sampled_from([(1, 8, 8), (3, 32, 32)]))
def test_build_runs_forward_and_backward(arch: Genotype, shape: tuple[int, int, int]) -> None:
    space = Darts(DartsConfig(init_channels=2, layers=3, ops=PRIMITIVES))
    _train_step(space.build(arch, shape, 3), shape)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 5, 7), (1, 2, 2), (1, 1, 1)])
def test_tiny_maps_survive_every_depth(shape: tuple[int, int, int]) -> None:
    arch = Darts(DartsConfig(ops=PRIMITIVES)).sample(random.Random(sum(shape)))
    for layers in range(1, 9):
        _train_step(Darts(DartsConfig(init_channels=2, layers=layers, ops=PRIMITIVES)).build(arch, shape, 3), shape)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_auxiliary_head_and_drop_path_in_training_only(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    space = Darts(DartsConfig(init_channels=4, layers=3, auxiliary=True, drop_path_prob=0.5))
    model = space.build(DARTS_V2, shape, 3)
    _train_step(model, shape)
    assert all(p.grad is not None for p in model.auxiliary_head.parameters())
    model.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert isinstance(first, torch.Tensor) and first.shape == (2, 3)
    assert torch.equal(first, second)  # no drop-path outside training
    assert count_macs(model, shape) > 0


@given(genotypes(PRIMITIVES))
def test_describe_draws_both_cells_with_every_operation(arch: Genotype) -> None:
    graph = Darts(DartsConfig(ops=PRIMITIVES)).describe(arch)
    node_ids = {n for n, _ in graph.nodes}
    assert len(graph.clusters) == 2 and all(len(ids) == STEPS + 3 for ids in graph.clusters.values())
    assert all(src in node_ids and dst in node_ids for src, dst, _ in graph.edges)
    labelled = [label for _, _, label in graph.edges if label]
    assert sorted(labelled) == sorted(op for kind in ("normal", "reduce") for op, _ in arch.cell(kind))
    assert {label for _, label in graph.nodes} >= {"c_{k-2}", "c_{k-1}", "0", "3", "c_{k}"}


def test_display_is_short_and_readable() -> None:
    assert SPACE.display(DARTS_V2).startswith("N: sep3~0+sep3~1 | sep3~0+sep3~1 | skip~0+sep3~1 | skip~0+dil3~2 ; R:")


def test_darts_v2_on_cifar_has_the_papers_3_3_million_parameters() -> None:
    space = Darts(DartsConfig(init_channels=36, layers=20, auxiliary=True))
    model = space.build(DARTS_V2, (3, 32, 32), 10)
    # The paper (and its code) counts parameters without the auxiliary head, which is only used in training.
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head."))
    assert params == count_params(Darts(DartsConfig(init_channels=36, layers=20)).build(DARTS_V2, (3, 32, 32), 10))
    assert params == pytest.approx(3.3e6, rel=0.03)
