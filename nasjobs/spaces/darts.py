"""The DARTS cell space (Liu et al., ICLR 2019): a normal and a reduction cell stacked into the CIFAR network."""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nasjobs.options import coerce, option, option_specs
from nasjobs.spaces.base import ArchParseError, Graph, SearchSpace
from nasjobs.spaces.darts_ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN

STEPS = 4  # intermediate nodes per cell
CONCAT = tuple(range(2, 2 + STEPS))  # a cell outputs all its intermediate nodes, concatenated
STEM_MULTIPLIER = 3
CELL_TYPES = ("normal", "reduce")

Edge = tuple[str, int]  # (operation, input): input 0 is c_{k-2}, 1 is c_{k-1}, 2 + j is intermediate node j


def _canonical_cell(cell: str, edges: Sequence[Edge]) -> tuple[Edge, ...]:
    """Check one cell's edges (two per node, from distinct earlier nodes) and order each node's pair by input."""
    edges = tuple(tuple(e) for e in edges)
    if len(edges) != 2 * STEPS:
        raise ValueError(f"{cell} cell: expected {2 * STEPS} (operation, input) pairs, got {len(edges)}")
    out: list[Edge] = []
    for j in range(STEPS):
        pair = edges[2 * j:2 * j + 2]
        for edge in pair:
            if len(edge) != 2 or not isinstance(edge[0], str) or type(edge[1]) is not int:
                raise ValueError(f"{cell} cell, node {j}: {edge!r} is not an (operation, input) pair")
            if edge[0] not in OPS:
                raise ValueError(f"{cell} cell, node {j}: unknown operation {edge[0]!r}")
            if not 0 <= edge[1] < j + 2:
                raise ValueError(f"{cell} cell, node {j}: input {edge[1]} is not one of 0..{j + 1}")
        if pair[0][1] == pair[1][1]:
            raise ValueError(f"{cell} cell, node {j}: both inputs are {pair[0][1]}; they must be distinct")
        out += sorted(pair, key=lambda e: e[1])
    return tuple(out)


@dataclass(frozen=True)
class Genotype:
    """A discrete DARTS architecture, shaped like the paper's `Genotype(normal, normal_concat, reduce, reduce_concat)`.

    `normal` and `reduce` list (operation, input) pairs, two per intermediate node. Each node's pair is stored in
    increasing input order, so two genotypes that describe the same cells compare (and hash) equal.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in CELL_TYPES:
            object.__setattr__(self, cell, _canonical_cell(cell, getattr(self, cell)))
            concat = tuple(getattr(self, f"{cell}_concat"))
            if not concat or len(set(concat)) != len(concat) or not all(2 <= i < 2 + STEPS for i in concat):
                raise ValueError(f"{cell}_concat must be distinct intermediate nodes 2..{STEPS + 1}, got {concat}")
            object.__setattr__(self, f"{cell}_concat", concat)

    def cell(self, kind: str) -> tuple[Edge, ...]:
        return self.normal if kind == "normal" else self.reduce


def genotype(normal: Sequence[Edge], reduce: Sequence[Edge]) -> Genotype:
    """A genotype of this space: both cells output the concatenation of all intermediate nodes."""
    return Genotype(tuple(normal), CONCAT, tuple(reduce), CONCAT)


# The cells DARTS found with second-order search on CIFAR-10 (the paper's figures 4 and 5; 2.76% test error).
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=CONCAT,
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=CONCAT,
)


@dataclass(frozen=True)
class DartsConfig:
    init_channels: int = option(16, "Channels of the first cells (the stem has 3x as many; doubled at each "
                                    "reduction)", min=2, max=256)
    layers: int = option(8, "Number of cells; the reduction cells sit at 1/3 and 2/3 of the depth", min=1, max=50)
    ops: tuple[str, ...] = option(tuple(op for op in PRIMITIVES if op != "none"),
                                  "Operations an edge may use ('none' is left out by default, as in the paper)",
                                  choices=PRIMITIVES)
    auxiliary: bool = option(False, "Auxiliary classifier at 2/3 depth (the network then returns (logits, "
                                    "aux_logits) in training mode)")
    drop_path_prob: float = option(0.0, "Probability of dropping each non-identity edge while training (0 = off)",
                                   min=0.0, max=0.9)

    def __post_init__(self) -> None:
        # The same checks and normal forms as a submitted form, also for configs built in code.
        for spec in option_specs(type(self)):
            object.__setattr__(self, spec.name, coerce(spec, getattr(self, spec.name)))


# networks -------------------------------------------------------------------------------------------------------
def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples of an edge's output with probability p, rescaling the rest (FractalNet's drop-path)."""
    keep = 1.0 - p
    mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """One cell: preprocess both inputs to C channels, then each node sums its two operations' outputs."""

    def __init__(self, edges: tuple[Edge, ...], concat: tuple[int, ...], c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        # After a reduction c_{k-2} has twice the resolution of c_{k-1}; factorized reduction aligns them.
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        # In a reduction cell only the edges that read the cell's inputs stride; later nodes are already reduced.
        self.ops = nn.ModuleList(OPS[op](c, 2 if reduction and i < 2 else 1) for op, i in edges)
        self.indices = tuple(i for _, i in edges)
        self.concat = concat
        self.multiplier = len(concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for j in range(len(self.ops) // 2):
            node = 0
            for e in (2 * j, 2 * j + 1):
                h = self.ops[e](states[self.indices[e]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[e], nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _paper_pool_size(n: int) -> int:
    return (n - 5) // 3 + 1 if n >= 5 else 0


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier of the paper (from NASNet), placed after the cell at 2/3 depth.

    The paper pools its 8x8 map with 5x5 windows at stride 3 down to 2x2; for maps where that does not give
    2x2 an adaptive pool to 2x2 takes its place, so the head works for any input size with the same parameters.
    """

    def __init__(self, c: int, num_classes: int, size: tuple[int, int]) -> None:
        super().__init__()
        if _paper_pool_size(size[0]) == 2 and _paper_pool_size(size[1]) == 2:
            pool: nn.Module = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        else:
            pool = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), pool,
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """The paper's evaluation network (section 3.2): stem, `layers` cells, global pooling and a linear classifier.

    Reduction cells sit at 1/3 and 2/3 of the depth and double the channels. With the auxiliary head, a module in
    training mode returns `(logits, aux_logits)` (the paper adds 0.4 x the auxiliary loss); in eval mode, and
    always without the head, it returns `logits`. `drop_path_prob` is an attribute so a trainer can schedule it
    (the paper raises it linearly over the epochs).
    """

    def __init__(self, arch: Genotype, input_shape: tuple[int, int, int], num_classes: int, init_channels: int,
                 layers: int, auxiliary: bool = False, drop_path_prob: float = 0.0) -> None:
        super().__init__()
        channels, height, width = input_shape
        c_stem = STEM_MULTIPLIER * init_channels
        self.stem = nn.Sequential(nn.Conv2d(channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, c = c_stem, c_stem, init_channels
        reductions = {layers // 3, 2 * layers // 3}
        self.aux_position = 2 * layers // 3
        cells: list[Cell] = []
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c *= 2
                height, width = math.ceil(height / 2), math.ceil(width / 2)
            kind = "reduce" if reduction else "normal"
            cell = Cell(arch.cell(kind), getattr(arch, f"{kind}_concat"), c_prev_prev, c_prev, c, reduction,
                        reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c
            if i == self.aux_position:
                c_aux, aux_size = c_prev, (height, width)
        self.cells = nn.ModuleList(cells)
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, aux_size) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.drop_path_prob = drop_path_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits if aux_logits is None else (logits, aux_logits)


# the space ------------------------------------------------------------------------------------------------------
_SPACE_RE = re.compile(r"normal=([^;=]*);reduce=([^;=]*)")
_EDGE_RE = re.compile(r"([a-z0-9_]+)~(\d+)")
_SHORT = {"none": "none", "max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip",
          "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5"}
_INPUT_LABELS = ("c_{k-2}", "c_{k-1}")


class Darts(SearchSpace[Genotype]):
    """The DARTS space: two cells of 4 nodes, each node summing two operations on distinct earlier nodes.

    String form, one `|`-separated group per node, each node's inputs in increasing order:
    `normal=sep_conv_3x3~0,sep_conv_3x3~1|...;reduce=max_pool_3x3~0,max_pool_3x3~1|...`.
    """

    name = "darts"
    title = "DARTS cells"
    Config = DartsConfig

    def __init__(self, config: DartsConfig | None = None) -> None:
        super().__init__(config or DartsConfig())
        self.ops: tuple[str, ...] = self.config.ops

    # representation -------------------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Genotype:
        cells = []
        for _ in CELL_TYPES:
            edges: list[Edge] = []
            for j in range(STEPS):
                edges += [(rng.choice(self.ops), i) for i in rng.sample(range(j + 2), 2)]
            cells.append(edges)
        return genotype(*cells)

    def neighbours(self, arch: Genotype) -> list[Genotype]:
        """Every change of one operation or one input of one node of one cell."""
        self._check(arch)
        out: list[Genotype] = []
        for kind in CELL_TYPES:
            edges = list(arch.cell(kind))
            for e, (op, i) in enumerate(edges):
                other = edges[e ^ 1][1]  # the node's other input
                changes = [(o, i) for o in self.ops if o != op]
                changes += [(op, k) for k in range(e // 2 + 2) if k not in (i, other)]
                for change in changes:
                    new = edges[:e] + [change] + edges[e + 1:]
                    cells = {"normal": arch.normal, "reduce": arch.reduce, kind: new}
                    out.append(genotype(cells["normal"], cells["reduce"]))
        return list(dict.fromkeys(out))

    def mutate(self, arch: Genotype, rng: random.Random) -> Genotype:
        """A uniformly chosen single change: one operation or one input of one node of one cell."""
        # Nodes 1..3 always have a spare input to switch to, so there is always a neighbour.
        return rng.choice(self.neighbours(arch))

    def to_str(self, arch: Genotype) -> str:
        return ";".join(f"{kind}={self._cell_str(arch.cell(kind))}" for kind in CELL_TYPES)

    @staticmethod
    def _cell_str(edges: tuple[Edge, ...]) -> str:
        return "|".join(",".join(f"{op}~{i}" for op, i in edges[2 * j:2 * j + 2]) for j in range(STEPS))

    def from_str(self, text: str) -> Genotype:
        text = text.strip()
        m = _SPACE_RE.fullmatch(text)
        if not m:
            raise ArchParseError(f"expected normal=<cell>;reduce=<cell>, got {text!r}")
        cells = []
        for kind, cell_text in zip(CELL_TYPES, m.groups()):
            nodes = cell_text.split("|")
            if len(nodes) != STEPS:
                raise ArchParseError(f"{kind} cell has {len(nodes)} nodes; expected {STEPS} separated by '|'")
            edges: list[Edge] = []
            for j, node in enumerate(nodes):
                pair = node.split(",")
                if len(pair) != 2:
                    raise ArchParseError(f"{kind} cell, node {j}: expected two inputs like sep_conv_3x3~0,"
                                         f"skip_connect~1, got {node!r}")
                for edge in pair:
                    em = _EDGE_RE.fullmatch(edge)
                    if not em:
                        raise ArchParseError(f"{kind} cell, node {j}: expected operation~input, got {edge!r}")
                    edges.append((em.group(1), int(em.group(2))))
            cells.append(edges)
        try:
            arch = genotype(*cells)
        except ValueError as exc:
            raise ArchParseError(str(exc)) from None
        self._check(arch)
        canonical = self.to_str(arch)
        if canonical != text:  # one string per architecture: it is the database key
            raise ArchParseError(f"not in canonical form (each node's inputs in increasing order); write {canonical}")
        return arch

    def _check(self, arch: Genotype) -> None:
        for kind in CELL_TYPES:
            if getattr(arch, f"{kind}_concat") != CONCAT:
                raise ArchParseError(f"{kind} cell must output all intermediate nodes {CONCAT}")
            for op, _ in arch.cell(kind):
                if op not in self.ops:
                    raise ArchParseError(f"operation {op!r} is not allowed in this space "
                                         f"(allowed: {', '.join(self.ops)})")

    def vocabulary(self) -> list[list[str]]:
        """Per node of each cell: input, operation, second input, operation.

        Node j reads from inputs 0..j+1. The second input is counted among the inputs other than the first, so
        every token sequence (an RNN controller samples each position freely) names two distinct inputs; for the
        canonical tokens, where the first input is the smaller, its labels are the input itself (1..j+1).
        """
        vocab: list[list[str]] = []
        for _ in CELL_TYPES:
            for j in range(STEPS):
                vocab += [[str(i) for i in range(j + 2)], list(self.ops),
                          [str(i) for i in range(1, j + 2)], list(self.ops)]
        return vocab

    def to_tokens(self, arch: Genotype) -> list[int]:
        self._check(arch)
        tokens: list[int] = []
        for kind in CELL_TYPES:
            edges = arch.cell(kind)
            for (op1, i1), (op2, i2) in zip(edges[0::2], edges[1::2]):  # i1 < i2, so i2 is the (i2-1)th other
                tokens += [i1, self.ops.index(op1), i2 - 1, self.ops.index(op2)]
        return tokens

    def from_tokens(self, tokens: Sequence[int]) -> Genotype:
        """Decode any token sequence that fits the vocabulary (a node's inputs may come in either order)."""
        vocab = self.vocabulary()
        if len(tokens) != len(vocab) or any(not 0 <= t < len(v) for t, v in zip(tokens, vocab)):
            raise ArchParseError(f"token sequence {list(tokens)} does not fit this space's vocabulary")
        edges: list[Edge] = []
        for p in range(0, len(tokens), 4):
            i1, op1, other, op2 = (int(t) for t in tokens[p:p + 4])
            i2 = other if other < i1 else other + 1
            edges += [(self.ops[op1], i1), (self.ops[op2], i2)]
        return genotype(edges[:2 * STEPS], edges[2 * STEPS:])

    def size(self) -> int:
        per_cell = math.prod(math.comb(j + 2, 2) for j in range(STEPS)) * len(self.ops) ** (2 * STEPS)
        return per_cell ** len(CELL_TYPES)

    # networks -------------------------------------------------------------------------------------------------
    def build(self, arch: Genotype, input_shape: tuple[int, int, int], num_classes: int) -> DartsNetwork:
        self._check(arch)
        c = self.config
        return DartsNetwork(arch, input_shape, num_classes, c.init_channels, c.layers, c.auxiliary,
                            c.drop_path_prob)

    def describe(self, arch: Genotype) -> Graph:
        g = Graph()
        for kind, title in zip(CELL_TYPES, ("normal cell", "reduction cell")):
            ids = [f"{kind}:in0", f"{kind}:in1"] + [f"{kind}:{j}" for j in range(STEPS)]
            labels = list(_INPUT_LABELS) + [str(j) for j in range(STEPS)]
            out = f"{kind}:out"
            g.nodes += list(zip(ids, labels)) + [(out, "c_{k}")]
            g.clusters[title] = ids + [out]
            for e, (op, i) in enumerate(arch.cell(kind)):
                g.edges.append((ids[i], ids[2 + e // 2], op))
            g.edges += [(ids[i], out, "") for i in getattr(arch, f"{kind}_concat")]
        return g

    def display(self, arch: Genotype) -> str:
        def cell(edges: tuple[Edge, ...]) -> str:
            return " | ".join("+".join(f"{_SHORT.get(op, op)}~{i}" for op, i in edges[2 * j:2 * j + 2])
                              for j in range(STEPS))
        return f"N: {cell(arch.normal)} ; R: {cell(arch.reduce)}"
