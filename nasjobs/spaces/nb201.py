"""The NAS-Bench-201 cell space (Dong & Yang 2020): 6 edges of a 4-node cell, each one of 5 operations."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nasjobs.options import OptionError, option
from nasjobs.spaces.base import ArchParseError, Graph, OpGraph, SearchSpace

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (to, from) of each edge, in the order of the benchmark's string: node 1; node 2; node 3.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_NODES = 4
SHORT = {"none": "-", "skip_connect": "skip", "nor_conv_1x1": "c1", "nor_conv_3x3": "c3", "avg_pool_3x3": "pool"}

NB201Arch = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class NB201Config:
    channels: int = option(16, "Channels of the first stage (doubled at each reduction)", min=1, max=512)
    cells: int = option(5, "Cells per stage, N (3 stages)", min=1, max=20)
    ops: tuple[str, ...] = option(OPS, "Operations an edge may use", choices=OPS)

    def __post_init__(self) -> None:
        if not self.ops:
            raise OptionError("ops", "choose at least one operation")
        for op in self.ops:
            if op not in OPS:
                raise OptionError("ops", f"{op!r} is not one of: {', '.join(OPS)}")


# operations -------------------------------------------------------------------------------------------------
class ReLUConvBN(nn.Sequential):
    """ReLU → Conv → BN, the benchmark's `nor_conv_kxk`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class Zero(nn.Module):
    """The `none` edge: contributes nothing (keeps the graph well-formed when every input edge is `none`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


OP_BUILDERS = {
    "none": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "nor_conv_1x1": lambda c: ReLUConvBN(c, c, 1, 1),
    "nor_conv_3x3": lambda c: ReLUConvBN(c, c, 3, 1),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}


class Cell(nn.Module):
    """Node j = sum over i < j of op_ij(node i); node 0 is the cell input, node 3 its output."""

    def __init__(self, arch: NB201Arch, channels: int) -> None:
        super().__init__()
        self.edges = list(EDGES)
        self.ops = nn.ModuleList(OP_BUILDERS[op](channels) for op in arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for node in range(1, NUM_NODES):
            nodes.append(sum(op(nodes[src]) for (dst, src), op in zip(self.edges, self.ops) if dst == node))
        return nodes[-1]


class ResNetBasicBlock(nn.Module):
    """The benchmark's reduction block: two 3x3 ReLU-Conv-BN (the first with stride 2) plus a pooled shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        # ceil_mode matches the stride-2 conv's output size on odd inputs (the benchmark only uses even ones)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2, ceil_mode=True),
                                        nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class TinyNetwork(nn.Module):
    """The benchmark's macro skeleton: stem, 3 stages of N cells with reductions between, BN-ReLU, pool, linear."""

    def __init__(self, arch: NB201Arch, in_channels: int, channels: int, cells: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c_prev = channels
        for stage in range(3):
            c = channels * 2 ** stage
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c))
            layers += [Cell(arch, c) for _ in range(cells)]
            c_prev = c
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


# the space --------------------------------------------------------------------------------------------------
class NB201(SearchSpace[NB201Arch]):
    """The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020): 5^6 = 15,625 cells in a fixed ResNet-like skeleton.

    An architecture is the tuple of the 6 edges' operations, in the order of the benchmark's string
    (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2). Its canonical string is the benchmark's own, so `index` finds it in
    the shipped lookup table (`nasjobs.nb201_table`).
    """

    name = "nb201"
    kinds = ("image", "nb201")  # nb201: the benchmark's own tables, for the benchmark estimator
    title = "NAS-Bench-201 cell"
    Config = NB201Config

    def __init__(self, config: NB201Config | None = None) -> None:
        super().__init__(config or NB201Config())
        self.ops: tuple[str, ...] = tuple(op for op in OPS if op in self.config.ops)

    # representation -------------------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> NB201Arch:
        return tuple(rng.choice(self.ops) for _ in EDGES)  # type: ignore[return-value]

    def mutate(self, arch: NB201Arch, rng: random.Random) -> NB201Arch:
        if len(self.ops) < 2:
            raise ValueError("this space has a single architecture; nothing to mutate")
        edge = rng.randrange(len(EDGES))
        new = list(arch)
        new[edge] = rng.choice([op for op in self.ops if op != arch[edge]])
        return tuple(new)  # type: ignore[return-value]

    def neighbours(self, arch: NB201Arch) -> list[NB201Arch]:
        return [arch[:e] + (op,) + arch[e + 1:] for e in range(len(EDGES)) for op in self.ops  # type: ignore[misc]
                if op != arch[e]]

    def to_str(self, arch: NB201Arch) -> str:
        nodes = []
        for node in range(1, NUM_NODES):
            nodes.append("|" + "|".join(f"{op}~{src}" for (dst, src), op in zip(EDGES, arch) if dst == node) + "|")
        return "+".join(nodes)

    def from_str(self, text: str) -> NB201Arch:
        nodes = text.strip().split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ArchParseError(f"{text!r}: expected {NUM_NODES - 1} nodes separated by '+'")
        ops: list[str] = []
        for node, part in enumerate(nodes, start=1):
            if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
                raise ArchParseError(f"{text!r}: node {node} must be written |op~i|...|")
            edges = part[1:-1].split("|")
            if len(edges) != node:
                raise ArchParseError(f"{text!r}: node {node} needs {node} inputs, got {len(edges)}")
            for src, edge in enumerate(edges):
                op, sep, source = edge.partition("~")
                if not sep or source != str(src):
                    raise ArchParseError(f"{text!r}: expected '<op>~{src}', got {edge!r}")
                if op not in self.ops:
                    raise ArchParseError(f"{text!r}: operation {op!r} is not one of {', '.join(self.ops)}")
                ops.append(op)
        return tuple(ops)  # type: ignore[return-value]

    def vocabulary(self) -> list[list[str]]:
        return [list(self.ops) for _ in EDGES]

    def to_tokens(self, arch: NB201Arch) -> list[int]:
        return [self.ops.index(op) for op in arch]

    def from_tokens(self, tokens: Sequence[int]) -> NB201Arch:
        if len(tokens) != len(EDGES) or any(not 0 <= t < len(self.ops) for t in tokens):
            raise ArchParseError(f"token sequence {list(tokens)} does not fit this space's vocabulary")
        return tuple(self.ops[t] for t in tokens)  # type: ignore[return-value]

    def size(self) -> int:
        return len(self.ops) ** len(EDGES)

    def all(self) -> list[NB201Arch]:
        """Every architecture of the space (15,625 at most), in token order."""
        return [tuple(ops) for ops in itertools.product(self.ops, repeat=len(EDGES))]  # type: ignore[misc]

    # the benchmark's index ------------------------------------------------------------------------------------
    def index(self, arch: NB201Arch) -> int:
        """The benchmark's index (0..15624) of `arch`, the row of the lookup table."""
        from nasjobs import nb201_table

        return nb201_table.index_of()[self.to_str(arch)]

    def from_index(self, index: int) -> NB201Arch:
        from nasjobs import nb201_table

        if not 0 <= index < nb201_table.NUM_ARCHS:
            raise ArchParseError(f"benchmark index {index} is outside 0..{nb201_table.NUM_ARCHS - 1}")
        return self.from_str(nb201_table.arch_strings()[index])

    # networks -------------------------------------------------------------------------------------------------
    def build(self, arch: NB201Arch, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return TinyNetwork(arch, input_shape[0], self.config.channels, self.config.cells, num_classes)

    def cost(self, arch: NB201Arch, input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
        """`TinyNetwork`'s parameters and multiply-adds, layer by layer as `nasjobs.metrics` counts them (weights
        and BatchNorm affine parameters; convolutions and the linear layer). Every edge runs, so a cell costs its
        convolutions whatever the `none` edges cut off."""
        c_in, height, width = input_shape
        c = self.config.channels
        params, macs = 9 * c_in * c + 2 * c, 9 * c_in * c * height * width  # stem: conv 3x3 + BN
        per_cell = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}  # weights per channel pair of each convolution
        kernel = sum(per_cell.get(op, 0) for op in arch)
        convs = sum(op in per_cell for op in arch)
        c_prev = c
        for stage in range(3):
            c = self.config.channels * 2 ** stage
            if stage > 0:  # ResNetBasicBlock: conv 3x3 stride 2 + BN, conv 3x3 + BN, avg-pool + conv 1x1
                height, width = (height + 1) // 2, (width + 1) // 2
                params += 9 * c_prev * c + 2 * c + 9 * c * c + 2 * c + c_prev * c
                macs += (9 * c_prev * c + 9 * c * c + c_prev * c) * height * width
            params += self.config.cells * (kernel * c * c + 2 * c * convs)
            macs += self.config.cells * kernel * c * c * height * width
            c_prev = c
        params += 2 * c + c * num_classes + num_classes  # last BN, classifier
        macs += c * num_classes
        return params, macs

    def smallest(self) -> NB201Arch:
        """Every edge the cheapest operation allowed: one without weights (none, skip, pooling) where there is one,
        else the 1x1 convolution; the stem, the reduction blocks and the classifier are the same for every cell."""
        weights = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}
        cheapest = min(self.ops, key=lambda op: (weights.get(op, 0), self.ops.index(op)))
        return tuple(cheapest for _ in EDGES)  # type: ignore[return-value]

    def describe(self, arch: NB201Arch) -> Graph:
        """The cell DAG; `none` edges are left out, since they carry nothing."""
        labels = {0: "input", NUM_NODES - 1: "output"}
        g = Graph(nodes=[(str(n), f"{n} ({labels[n]})" if n in labels else str(n)) for n in range(NUM_NODES)])
        g.edges = [(str(src), str(dst), op) for (dst, src), op in zip(EDGES, arch) if op != "none"]
        return g

    def op_graph(self, arch: NB201Arch) -> OpGraph:
        """The cell with each live edge's operation as a node (NAS-Bench-101's operations-on-nodes form, as
        NAS-BOWL reads NAS-Bench-201 cells), between an "input" and an "output" node. `none` edges carry nothing
        and are left out, and so is every edge that lies on no input-to-output path (its result is never
        used), so cells that differ only in such edges give equal graphs."""
        live = [(dst, src, op) for (dst, src), op in zip(EDGES, arch) if op != "none"]
        reached = {0}  # nodes with a path from the input; EDGES is in order of the destination node
        for dst, src, _ in live:
            if src in reached:
                reached.add(dst)
        used = {NUM_NODES - 1}  # nodes with a path to the output
        for dst, src, _ in reversed(live):
            if dst in used:
                used.add(src)
        live = [(dst, src, op) for dst, src, op in live if src in reached and dst in used]
        labels = ["input"] + [op for _, _, op in live] + ["output"]
        position = {(dst, src): i + 1 for i, (dst, src, _) in enumerate(live)}
        inputs: list[tuple[int, ...]] = [()]
        for dst, src, _ in live:
            inputs.append((0,) if src == 0 else tuple(position[d, s] for d, s, _ in live if d == src))
        inputs.append(tuple(position[d, s] for d, s, _ in live if d == NUM_NODES - 1))
        return OpGraph(tuple(labels), tuple(inputs))

    def display(self, arch: NB201Arch) -> str:
        short = [SHORT[op] for op in arch]
        return f"{short[0]} | {' '.join(short[1:3])} | {' '.join(short[3:])}"
