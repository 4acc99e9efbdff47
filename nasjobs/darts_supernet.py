"""Continuous relaxations (supernets) of the darts and nb201 cell spaces, searched by DARTS (Liu et al. 2019)."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from nasjobs.spaces import darts as darts_space
from nasjobs.spaces import nb201 as nb201_space
from nasjobs.spaces.darts_ops import OPS as DARTS_OPS
from nasjobs.spaces.darts_ops import FactorizedReduce, ReLUConvBN

# Operations without weights: the ones DARTS collapses onto (Zela et al. 2020; Chu et al. 2021).
PARAM_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})


def without_affine(module: nn.Module) -> nn.Module:
    """Drop the learnable scale and shift of every batch norm in `module`.

    The paper (section 3.1.1) searches with affine-free batch norm, so that an operation cannot rescale its
    output and so win or lose weight in the softmax by scale alone.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.affine = False
            m.weight = None
            m.bias = None
    return module


class MixedOp(nn.Module):
    """One edge of the relaxed cell, eq. 2: o(x) = sum over candidates o of softmax(alpha)_o * o(x).

    With DARTS-'s auxiliary skip (Chu et al., ICLR 2021, eq. 4) `beta * skip(x)` is added outside the softmax,
    so a skip connection no longer needs a large alpha to let gradients through.
    """

    def __init__(self, candidates: list[nn.Module], aux_skip: nn.Module | None) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.aux_skip = aux_skip

    def forward(self, x: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
        out = sum(w * op(x) for w, op in zip(weights, self.candidates))
        if self.aux_skip is not None and beta > 0:
            out = out + beta * self.aux_skip(x)
        return out


class Supernet(nn.Module):
    """A network whose cells are mixtures of every candidate; `forward(x, weights, beta)` takes the softmaxed
    alphas per cell type (rows = edges in `edges[cell]`, columns = `candidates`)."""

    cell_types: ClassVar[tuple[str, ...]]
    candidates: tuple[str, ...]
    edges: dict[str, list[tuple[int, int]]]  # cell type -> (source, target) per row of its alpha matrix

    def edge_labels(self) -> dict[str, list[str]]:
        return {kind: [f"{src}→{dst}" for src, dst in self.edges[kind]] for kind in self.cell_types}


# the darts space -----------------------------------------------------------------------------------------------
def darts_candidate(op: str, channels: int, stride: int) -> nn.Module:
    module = without_affine(DARTS_OPS[op](channels, stride))
    if "pool" in op:  # pools have no batch norm; the reference search adds one so all candidates share a scale
        module = nn.Sequential(module, nn.BatchNorm2d(channels, affine=False))
    return module


class DartsSearchCell(nn.Module):
    """Section 2.1: node j sums mixed edges from both cell inputs and all earlier nodes; the cell outputs the
    concatenation of its intermediate nodes. In a reduction cell the edges that read the inputs stride by 2."""

    def __init__(self, candidates: tuple[str, ...], c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool, aux_skip: bool) -> None:
        super().__init__()
        self.reduction = reduction
        pre0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess0 = without_affine(pre0)
        self.preprocess1 = without_affine(ReLUConvBN(c_prev, c, 1, 1, 0))
        edges = []
        for j in range(darts_space.STEPS):
            for i in range(j + 2):
                stride = 2 if reduction and i < 2 else 1
                aux = (nn.Identity() if stride == 1 else without_affine(FactorizedReduce(c, c))) if aux_skip else None
                edges.append(MixedOp([darts_candidate(op, c, stride) for op in candidates], aux))
        self.edges = nn.ModuleList(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(darts_space.STEPS):
            node = sum(self.edges[offset + i](h, weights[offset + i], beta) for i, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DartsSupernet(Supernet):
    """The search network of section 3.1.1: stem, `layers` cells (reductions at 1/3 and 2/3 of the depth, sharing
    the `reduce` alphas; all others share `normal`), global pooling and a linear classifier."""

    cell_types = darts_space.CELL_TYPES

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, init_channels: int, layers: int,
                 candidates: tuple[str, ...], aux_skip: bool = False) -> None:
        super().__init__()
        self.candidates = candidates
        cell_edges = [(i, j + 2) for j in range(darts_space.STEPS) for i in range(j + 2)]
        self.edges = {kind: list(cell_edges) for kind in self.cell_types}
        c_stem = darts_space.STEM_MULTIPLIER * init_channels
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, c = c_stem, c_stem, init_channels
        reductions = {layers // 3, 2 * layers // 3}
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in reductions
            c = c * 2 if reduction else c
            cells.append(DartsSearchCell(candidates, c_prev_prev, c_prev, c, reduction, reduction_prev, aux_skip))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, darts_space.STEPS * c
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor], beta: float = 0.0) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"], beta)
        return self.classifier(self.global_pooling(s1).flatten(1))


# the nb201 space -----------------------------------------------------------------------------------------------
class NB201SearchCell(nn.Module):
    """The benchmark's 4-node cell with a mixed operation on each of its 6 edges (Dong & Yang 2020, section 3)."""

    def __init__(self, candidates: tuple[str, ...], channels: int, aux_skip: bool) -> None:
        super().__init__()
        self.edges = nn.ModuleList(
            MixedOp([without_affine(nb201_space.OP_BUILDERS[op](channels)) for op in candidates],
                    nn.Identity() if aux_skip else None)
            for _ in nb201_space.EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
        nodes = [x]
        for node in range(1, nb201_space.NUM_NODES):
            nodes.append(sum(edge(nodes[src], weights[e], beta)
                             for e, ((dst, src), edge) in enumerate(zip(nb201_space.EDGES, self.edges))
                             if dst == node))
        return nodes[-1]


class NB201Supernet(Supernet):
    """The benchmark's skeleton (stem, 3 stages of N cells, residual reductions) with search cells that all share
    one alpha matrix, as in the benchmark's own DARTS baseline."""

    cell_types = ("cell",)

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: int, cells: int,
                 candidates: tuple[str, ...], aux_skip: bool = False) -> None:
        super().__init__()
        self.candidates = candidates
        self.edges = {"cell": [(src, dst) for dst, src in nb201_space.EDGES]}
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c_prev = channels
        for stage in range(3):
            c = channels * 2 ** stage
            if stage > 0:
                layers.append(nb201_space.ResNetBasicBlock(c_prev, c))
            layers += [NB201SearchCell(candidates, c, aux_skip) for _ in range(cells)]
            c_prev = c
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor], beta: float = 0.0) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, weights["cell"], beta) if isinstance(layer, NB201SearchCell) else layer(x)
        return self.classifier(self.pool(self.lastact(x)).flatten(1))


def init_alphas(supernet: Supernet, generator: torch.Generator) -> nn.ParameterDict:
    """Architecture parameters, one (edges x candidates) matrix per cell type, drawn as 1e-3 * N(0, 1) like the
    reference code, so the first softmax is nearly uniform."""
    return nn.ParameterDict({
        kind: nn.Parameter(1e-3 * torch.randn(len(supernet.edges[kind]), len(supernet.candidates),
                                              generator=generator))
        for kind in supernet.cell_types})

