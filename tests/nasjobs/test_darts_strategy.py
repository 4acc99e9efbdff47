"""DARTS as a strategy: the relaxation learns, both orders step, derivations are members of the space, a killed
search resumes to the same genotype, the skip-collapse remedies act, weights and alphas stay apart."""
from __future__ import annotations

import io
import random
from functools import lru_cache
from typing import Any

import pytest
import torch
from torch import nn

from nasjobs.darts_supernet import MixedOp, Supernet
from nasjobs.datasets import Dataset, Split, load_digits
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import ChainCNN, Darts, NB201
from nasjobs.spaces.chain_cnn import ChainCNNConfig
from nasjobs.spaces.nb201 import NB201Config
from nasjobs.strategies import STRATEGIES
from nasjobs.strategies.darts import (DartsConfig, DartsSearch, EpochRecord, Searcher, derive,
                                      param_free_fraction, skip_count)

CPU = torch.device("cpu")
TINY = {"init_channels": 4, "layers": 1, "batch_size": 32}  # nb201: one cell per stage
TINY_DARTS = {"init_channels": 4, "layers": 3, "batch_size": 32}  # cells: normal, reduce, reduce


@lru_cache(maxsize=None)
def digits(n_train: int = 256) -> Dataset:
    ds = load_digits()
    head = lambda split, n: Split(split.x[:n], split.y[:n])  # noqa: E731
    return Dataset("digits-subset", ds.input_shape, ds.num_classes, head(ds.train, n_train), head(ds.val, 128),
                   head(ds.test, 16))


def config(**options: Any) -> DartsConfig:
    return parse_config(DartsConfig, options)


def run(space: Any, options: dict, epochs: int, seed: int = 0,
        checkpoint: dict | None = None) -> tuple[Any, list[EpochRecord], list[dict]]:
    records: list[EpochRecord] = []
    checkpoints: list[dict] = []

    def on_epoch(record: EpochRecord, state: dict) -> None:
        records.append(record)
        checkpoints.append(state)

    arch = DartsSearch(space, config(**options), seed).search(digits(), epochs, CPU, checkpoint, on_epoch)
    return arch, records, checkpoints


def through_storage(state: dict) -> dict:
    """What a checkpoint looks like after the artifact store: saved, then loaded with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# the relaxation learns ------------------------------------------------------------------------------------------
class Negate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


class ToyNet(Supernet):
    """One mixed edge whose output is the logits: the label is argmax(x), so `identity` is clearly the best."""

    cell_types = ("cell",)

    def __init__(self) -> None:
        super().__init__()
        self.candidates = ("identity", "negate", "zero")
        self.edges = {"cell": [(0, 1)]}
        self.edge = MixedOp([nn.Identity(), Negate(), Zero()], None)
        self.temperature = nn.Parameter(torch.ones(()))  # the one weight w

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor], beta: float = 0.0) -> torch.Tensor:
        return self.temperature * self.edge(x, weights["cell"][0], beta)


@pytest.mark.parametrize("order", ["first", "second"])
def test_alphas_move_towards_the_clearly_best_operation(order: str) -> None:
    g = torch.Generator().manual_seed(0)
    alphas = nn.ParameterDict({"cell": nn.Parameter(torch.zeros(1, 3))})
    searcher = Searcher(ToyNet(), alphas, config(order=order, alpha_lr=0.05, w_lr=0.01), CPU, epochs=1)
    for _ in range(60):
        x_train, x_val = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g)
        searcher.step((x_train, x_train.argmax(1)), (x_val, x_val.argmax(1)))
    weights = searcher.model.softmax()["cell"][0]
    assert weights[0] > 0.8 and weights.argmax() == 0


@pytest.mark.parametrize("order", ["first", "second"])
def test_a_search_step_changes_alphas_and_weights_of_a_darts_supernet(order: str) -> None:
    searcher = Searcher.for_space(Darts(), config(order=order, **TINY_DARTS), 0, (3, 8, 8), 10, CPU, epochs=1)
    alphas = {k: a.detach().clone() for k, a in searcher.model.alphas.items()}
    stem = searcher.net.stem[0].weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    batch = lambda: (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))  # noqa: E731
    loss, correct = searcher.step(batch(), batch())
    assert loss > 0 and 0 <= correct <= 8
    for kind in ("normal", "reduce"):
        assert not torch.equal(alphas[kind], searcher.model.alphas[kind])
    assert not torch.equal(stem, searcher.net.stem[0].weight)


def test_second_order_differs_from_first_order() -> None:
    """Same seed, same batches: the unrolled gradient (eq. 7) is not the first-order one (eq. 5)."""
    after = {}
    for order in ("first", "second"):
        searcher = Searcher.for_space(NB201(), config(order=order, **TINY), 0, (1, 8, 8), 10, CPU, epochs=1)
        g = torch.Generator().manual_seed(1)
        batch = lambda: (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))  # noqa: E731
        searcher.step(batch(), batch())
        after[order] = searcher.model.alphas["cell"].detach().clone()
    assert not torch.allclose(after["first"], after["second"])


# weights and alphas apart ---------------------------------------------------------------------------------------
def test_weights_and_alphas_have_separate_optimizers() -> None:
    searcher = Searcher.for_space(Darts(), config(**TINY_DARTS), 0, (1, 8, 8), 10, CPU, epochs=1)
    in_w = {id(p) for group in searcher.w_optimizer.param_groups for p in group["params"]}
    in_a = {id(p) for group in searcher.architect.optimizer.param_groups for p in group["params"]}
    assert in_w == {id(p) for p in searcher.net.parameters()}
    assert in_a == {id(p) for p in searcher.model.alphas.values()}
    assert not in_w & in_a
    assert isinstance(searcher.w_optimizer, torch.optim.SGD)
    assert isinstance(searcher.architect.optimizer, torch.optim.Adam)
    assert not any(n.startswith("alpha") for n, _ in searcher.net.named_parameters())


# derivation -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [Darts(), NB201(), NB201(NB201Config(ops=("skip_connect", "nor_conv_3x3")))],
                         ids=["darts", "nb201", "nb201-subset"])
def test_derived_architectures_are_members_of_the_space(space: Any) -> None:
    searcher = Searcher.for_space(space, config(**(TINY_DARTS if isinstance(space, Darts) else TINY)), 0,
                                  (1, 8, 8), 10, CPU, epochs=1)
    net = searcher.net
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        weights = {k: torch.softmax(torch.randn(len(net.edges[k]), len(net.candidates), generator=g) * 3, -1)
                   for k in net.cell_types}
        arch = derive(space, net, weights)
        assert space.from_str(space.to_str(arch)) == arch
        if isinstance(space, Darts):
            assert all(op != "none" for op, _ in arch.normal + arch.reduce)


def test_darts_derivation_keeps_each_nodes_two_strongest_non_none_edges() -> None:
    space = Darts()
    net = Searcher.for_space(space, config(**TINY_DARTS), 0, (1, 8, 8), 10, CPU, epochs=1).net
    ops = list(net.candidates)
    assert ops[0] == "none"
    w = torch.full((14, len(ops)), 0.01)
    w[:, 0] = 0.9  # `none` everywhere strongest: never chosen
    # node 0 (rows 0-1): input 1 via sep_conv_3x3, input 0 via max_pool; node 3 (rows 9-13): inputs 4 and 2
    w[0, ops.index("max_pool_3x3")] = 0.2
    w[1, ops.index("sep_conv_3x3")] = 0.3
    w[13, ops.index("dil_conv_5x5")] = 0.5
    w[11, ops.index("skip_connect")] = 0.4
    w[10, ops.index("avg_pool_3x3")] = 0.1
    arch = derive(space, net, {"normal": w, "reduce": w})
    assert arch.normal[0:2] == (("max_pool_3x3", 0), ("sep_conv_3x3", 1))
    assert arch.normal[6:8] == (("skip_connect", 2), ("dil_conv_5x5", 4))
    assert skip_count(arch) == 1
    assert param_free_fraction(arch) == sum(op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect")
                                            for op, _ in arch.normal + arch.reduce) / 16


def test_a_search_records_every_epoch_and_returns_a_member_of_the_space() -> None:
    space = Darts()
    arch, records, checkpoints = run(space, TINY_DARTS, epochs=1)
    assert space.from_str(space.to_str(arch)) == arch
    (record,) = records
    assert record.epoch == 1 and record.genotype == space.to_str(arch)
    assert set(record.alphas) == {"normal", "reduce"} and record.ops[0] == "none"
    for kind in ("normal", "reduce"):
        assert len(record.alphas[kind]) == len(record.edges[kind]) == 14
        assert all(abs(sum(row) - 1) < 1e-5 and len(row) == len(record.ops) for row in record.alphas[kind])
    assert record.edges["normal"][:3] == ["0→2", "1→2", "0→3"]
    assert 0 <= record.train_acc <= 1 and 0 <= record.val_acc <= 1 and record.train_loss > 0
    assert 0 <= record.param_free_fraction <= 1 and not record.stopped_early


# resumption -----------------------------------------------------------------------------------------------------
def test_a_killed_search_resumes_to_the_same_genotype() -> None:
    space = NB201()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    expected, records, checkpoints = run(space, TINY, epochs=2, seed=5)
    assert torch.equal(before, torch.rand(1))  # the global RNG was left as it was

    killed: list[dict] = []

    def on_epoch(record: EpochRecord, state: dict) -> None:
        killed.append(state)
        raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        DartsSearch(space, config(**TINY), 5).search(digits(), 2, CPU, None, on_epoch)
    resumed, resumed_records, resumed_checkpoints = run(space, TINY, epochs=2, seed=5,
                                                        checkpoint=through_storage(killed[-1]))
    assert resumed == expected
    assert [r.epoch for r in resumed_records] == [2]
    assert resumed_records[0].alphas == records[1].alphas  # bit for bit, not merely the same argmax
    assert resumed_records[0].train_loss == records[1].train_loss
    for key in ("weights", "alphas"):
        for name, tensor in checkpoints[-1][key].items():
            assert torch.equal(tensor, resumed_checkpoints[-1][key][name]), name


def test_a_checkpoint_holds_everything_and_is_not_changed_by_later_epochs() -> None:
    _, _, checkpoints = run(NB201(), TINY, epochs=2)
    first = checkpoints[0]
    assert {"weights", "alphas", "w_optimizer", "alpha_optimizer", "scheduler", "split", "order_rng", "torch_rng",
            "epoch"} <= set(first)
    assert first["epoch"] == 1 and checkpoints[1]["epoch"] == 2
    assert not torch.equal(first["alphas"]["cell"], checkpoints[1]["alphas"]["cell"])
    loaded = through_storage(first)
    assert torch.equal(loaded["alphas"]["cell"], first["alphas"]["cell"])
    split = torch.cat([first["split"]["weights"], first["split"]["alphas"]])
    assert sorted(split.tolist()) == list(range(len(digits().train)))


def test_a_finished_checkpoint_returns_its_architecture_without_searching() -> None:
    space = NB201()
    arch, _, checkpoints = run(space, TINY, epochs=1)
    again, records, _ = run(space, TINY, epochs=1, checkpoint=checkpoints[-1])
    assert again == arch and records == []
    with pytest.raises(ValueError, match="seed"):
        run(space, TINY, epochs=1, seed=9, checkpoint=checkpoints[-1])


def test_the_seed_decides_the_search() -> None:
    a = run(NB201(), TINY, epochs=1, seed=1)[1][0]
    assert a.alphas == run(NB201(), TINY, epochs=1, seed=1)[1][0].alphas
    assert a.alphas != run(NB201(), TINY, epochs=1, seed=2)[1][0].alphas


# remedies for the collapse onto skip connections ----------------------------------------------------------------
def test_early_stop_ends_the_search_once_skips_dominate_the_cell() -> None:
    """DARTS+: a cell of only skip connections trips the rule after the first epoch; without it all run."""
    space = NB201(NB201Config(ops=("skip_connect",)))
    arch, records, checkpoints = run(space, {**TINY, "remedy": "early_stop", "max_skips": 2}, epochs=3)
    assert [r.stopped_early for r in records] == [True] and arch == ("skip_connect",) * 6
    assert records[0].param_free_fraction == 1.0
    assert run(space, {**TINY, "remedy": "early_stop"}, epochs=3, checkpoint=checkpoints[-1])[1] == []
    _, plain, _ = run(space, TINY, epochs=3)
    assert [r.stopped_early for r in plain] == [False, False, False]


def test_early_stop_leaves_cells_with_few_skips_alone() -> None:
    space = NB201(NB201Config(ops=("nor_conv_1x1", "nor_conv_3x3")))
    _, records, _ = run(space, {**TINY, "remedy": "early_stop", "max_skips": 1}, epochs=2)
    assert [r.stopped_early for r in records] == [False, False]


def test_darts_minus_adds_a_decaying_auxiliary_skip() -> None:
    """DARTS-: every edge gets beta * x outside the softmax; beta falls linearly towards 0 over the search."""
    space = NB201()
    plain = Searcher.for_space(space, config(**TINY), 0, (1, 8, 8), 10, CPU, epochs=1)
    minus = Searcher.for_space(space, config(remedy="darts_minus", **TINY), 0, (1, 8, 8), 10, CPU, epochs=1)
    assert all(m.aux_skip is None for m in plain.net.modules() if isinstance(m, MixedOp))
    edges = [m for m in minus.net.modules() if isinstance(m, MixedOp)]
    assert edges and all(isinstance(m.aux_skip, nn.Identity) for m in edges)
    x = torch.randn(4, 4, 8, 8)
    w = torch.full((5,), 0.2)
    assert torch.allclose(edges[0](x, w, 0.7), edges[0](x, w, 0.0) + 0.7 * x)

    _, records_plain, _ = run(space, TINY, epochs=2)
    _, records_minus, checkpoints = run(space, {**TINY, "remedy": "darts_minus", "aux_skip_beta": 1.0}, epochs=2)
    assert records_minus[-1].alphas != records_plain[-1].alphas
    betas = [c["beta"] for c in checkpoints]
    assert 0 < betas[1] < betas[0] < 1.0  # the last step of each epoch: decaying, never above the start


def test_darts_minus_builds_striding_aux_skips_in_the_darts_space() -> None:
    searcher = Searcher.for_space(Darts(), config(remedy="darts_minus", **TINY_DARTS), 0, (1, 8, 8), 10, CPU, 1)
    searcher.model.beta = 0.5
    assert searcher.model.logits(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# the strategy as the platform sees it ---------------------------------------------------------------------------
def test_it_is_registered_as_a_differentiable_strategy_with_validated_options() -> None:
    cls = STRATEGIES.get("darts")
    assert cls is DartsSearch and cls.differentiable
    defaults = parse_config(DartsConfig, {})
    assert (defaults.order, defaults.w_lr, defaults.alpha_lr, defaults.batch_size) == ("first", 0.025, 3e-4, 64)
    assert defaults.final_train and defaults.remedy == "none"
    for bad in ({"order": "third"}, {"remedy": "magic"}, {"train_portion": 1.0}, {"w_lr": 0.01, "w_lr_min": 0.1}):
        with pytest.raises(OptionError):
            parse_config(DartsConfig, bad)


def test_it_searches_only_cell_spaces_and_never_proposes() -> None:
    with pytest.raises(ValueError, match="darts and nb201"):
        DartsSearch(ChainCNN(ChainCNNConfig()), DartsConfig(), 0)
    strategy = DartsSearch(NB201(), DartsConfig(), 0)
    with pytest.raises(NotImplementedError, match="search\\(\\)"):
        strategy.propose()
    with pytest.raises(NotImplementedError):
        strategy.observe(NB201().sample(random.Random(0)), 0.5)


def test_the_hook_is_called_and_can_cancel() -> None:
    calls = []

    def hook() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for the loop's SearchCancelled

    with pytest.raises(KeyboardInterrupt):
        DartsSearch(NB201(), config(**TINY), 0).search(digits(), 3, CPU, None, lambda r, c: None, hook)
    assert len(calls) == 2


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 7), (3, 32, 32), (2, 5, 9)])
@pytest.mark.parametrize("space", [Darts(), NB201()], ids=["darts", "nb201"])
def test_supernets_take_inputs_of_any_size(space: Any, shape: tuple[int, int, int]) -> None:
    options = TINY_DARTS if isinstance(space, Darts) else TINY
    searcher = Searcher.for_space(space, config(**options), 0, shape, 3, CPU, epochs=1)
    x, y = torch.randn(2, *shape), torch.tensor([0, 2])
    searcher.step((x, y), (x, y))
    assert searcher.model.logits(x).shape == (2, 3)


def test_the_supernet_is_scored_with_batch_statistics_without_moving_the_running_ones() -> None:
    searcher = Searcher.for_space(NB201(), config(**TINY), 0, (1, 8, 8), 10, CPU, epochs=1)
    before = {n: b.clone() for n, b in searcher.net.named_buffers()}
    split = Split(torch.randn(257, 1, 8, 8), torch.randint(0, 10, (257,)))  # 256 + a batch of one, merged
    loss, acc = searcher.evaluate(split)
    assert loss > 0 and 0 <= acc <= 1
    assert all(torch.equal(b, before[n]) for n, b in searcher.net.named_buffers())


def test_a_cell_whose_weights_stayed_near_uniform_is_told_apart_from_a_peaked_one():
    from nasjobs.strategies.darts import NEAR_UNIFORM_MARGIN, weight_spread

    uniform = {"normal": [[0.125] * 8] * 14, "reduce": [[0.125] * 8] * 14}
    spread = weight_spread(uniform)
    assert spread.near_uniform and spread.uniform == 0.125 and spread.largest == 0.125
    just_below = 0.125 * (1 + NEAR_UNIFORM_MARGIN) - 1e-3
    assert weight_spread({"cell": [[just_below] + [(1 - just_below) / 7] * 7]}).near_uniform
    peaked = {"normal": uniform["normal"], "reduce": [[0.3] + [0.1] * 7] + uniform["reduce"][1:]}
    spread = weight_spread(peaked)  # one edge that chose is enough: the argmax there is a choice
    assert not spread.near_uniform and spread.largest == 0.3
    # the edge furthest above its own uniform share is the one reported, whatever the op counts
    assert weight_spread({"a": [[0.6, 0.4]], "b": [[0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}).largest == 0.3
    assert weight_spread({}) is None and weight_spread({"cell": []}) is None
