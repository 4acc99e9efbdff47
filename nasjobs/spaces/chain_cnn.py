"""A chain-structured CNN space: how many conv layers, and per layer filters, kernel size and pooling."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from nasjobs.options import OptionError, option
from nasjobs.spaces.base import ArchParseError, Graph, SearchSpace

FILTER_CHOICES = (8, 16, 24, 32, 48, 64, 96, 128, 256)
KERNEL_CHOICES = (1, 3, 5, 7)


@dataclass(frozen=True)
class ChainCNNConfig:
    max_layers: int = option(4, "Maximum number of conv layers", min=1, max=12)
    filters: tuple[int, ...] = option((16, 32, 64), "Filter counts a layer may use", choices=FILTER_CHOICES)
    kernels: tuple[int, ...] = option((3, 5), "Kernel sizes a layer may use", choices=KERNEL_CHOICES)
    pooling: bool = option(True, "Allow 2x2 max pooling after a layer")

    def __post_init__(self) -> None:
        if not self.filters:
            raise OptionError("filters", "choose at least one filter count")
        if not self.kernels:
            raise OptionError("kernels", "choose at least one kernel size")


@dataclass(frozen=True)
class ConvLayer:
    filters: int
    kernel: int
    pool: bool


@dataclass(frozen=True)
class ChainArch:
    layers: tuple[ConvLayer, ...]


_LAYER_RE = re.compile(r"c(\d+)k(\d+)(p?)")


class ChainCNN(SearchSpace[ChainArch]):
    """Conv → BN → ReLU blocks (optionally followed by max pooling), global average pooling, a linear head.

    These are the choices a person makes by hand when designing a plain CNN: depth, width, receptive field and
    where to downsample (the CNN space of Zoph & Le 2017, without skip connections).
    """

    name = "chain_cnn"
    title = "Chain CNN"
    Config = ChainCNNConfig

    def __init__(self, config: ChainCNNConfig | None = None) -> None:
        super().__init__(config or ChainCNNConfig())
        self._pools = (False, True) if self.config.pooling else (False,)

    # representation -------------------------------------------------------------------------------------------
    def _random_layer(self, rng: random.Random) -> ConvLayer:
        c = self.config
        return ConvLayer(rng.choice(c.filters), rng.choice(c.kernels), rng.choice(self._pools))

    def sample(self, rng: random.Random) -> ChainArch:
        depth = rng.randint(1, self.config.max_layers)
        return ChainArch(tuple(self._random_layer(rng) for _ in range(depth)))

    def _edits(self, arch: ChainArch) -> list[str]:
        c, n = self.config, len(arch.layers)
        kinds = []
        if len(c.filters) > 1:
            kinds.append("filters")
        if len(c.kernels) > 1:
            kinds.append("kernel")
        if len(self._pools) > 1:
            kinds.append("pool")
        if n < c.max_layers:
            kinds.append("add")
        if n > 1:
            kinds.append("remove")
        return kinds

    def mutate(self, arch: ChainArch, rng: random.Random) -> ChainArch:
        kinds = self._edits(arch)
        if not kinds:
            raise ValueError("this space has a single architecture; nothing to mutate")
        kind = rng.choice(kinds)
        layers = list(arch.layers)
        if kind == "add":
            layers.insert(rng.randint(0, len(layers)), self._random_layer(rng))
            return ChainArch(tuple(layers))
        i = rng.randrange(len(layers))
        old = layers[i]
        if kind == "remove":
            del layers[i]
        elif kind == "filters":
            layers[i] = ConvLayer(rng.choice([f for f in self.config.filters if f != old.filters]), old.kernel, old.pool)
        elif kind == "kernel":
            layers[i] = ConvLayer(old.filters, rng.choice([k for k in self.config.kernels if k != old.kernel]), old.pool)
        else:
            layers[i] = ConvLayer(old.filters, old.kernel, not old.pool)
        return ChainArch(tuple(layers))

    def neighbours(self, arch: ChainArch) -> list[ChainArch]:
        c, layers = self.config, list(arch.layers)
        out: list[ChainArch] = []
        for i, old in enumerate(layers):
            variants = [ConvLayer(f, old.kernel, old.pool) for f in c.filters if f != old.filters]
            variants += [ConvLayer(old.filters, k, old.pool) for k in c.kernels if k != old.kernel]
            variants += [ConvLayer(old.filters, old.kernel, p) for p in self._pools if p != old.pool]
            out += [ChainArch(tuple(layers[:i] + [v] + layers[i + 1:])) for v in variants]
            if len(layers) > 1:
                out.append(ChainArch(tuple(layers[:i] + layers[i + 1:])))
        if len(layers) < c.max_layers:
            for i in range(len(layers) + 1):
                for f in c.filters:
                    for k in c.kernels:
                        for p in self._pools:
                            out.append(ChainArch(tuple(layers[:i] + [ConvLayer(f, k, p)] + layers[i:])))
        unique = list(dict.fromkeys(a for a in out if a != arch))
        return unique

    def to_str(self, arch: ChainArch) -> str:
        return "-".join(f"c{l.filters}k{l.kernel}{'p' if l.pool else ''}" for l in arch.layers)

    def from_str(self, text: str) -> ChainArch:
        parts = text.strip().split("-")
        layers = []
        for part in parts:
            m = _LAYER_RE.fullmatch(part)
            if not m:
                raise ArchParseError(f"bad layer {part!r} in {text!r}; expected e.g. c32k3p-c64k5")
            layers.append(ConvLayer(int(m.group(1)), int(m.group(2)), m.group(3) == "p"))
        arch = ChainArch(tuple(layers))
        self._check(arch)
        return arch

    def _check(self, arch: ChainArch) -> None:
        c = self.config
        if not 1 <= len(arch.layers) <= c.max_layers:
            raise ArchParseError(f"{len(arch.layers)} layers; this space allows 1 to {c.max_layers}")
        for l in arch.layers:
            if l.filters not in c.filters:
                raise ArchParseError(f"filter count {l.filters} is not one of {c.filters}")
            if l.kernel not in c.kernels:
                raise ArchParseError(f"kernel size {l.kernel} is not one of {c.kernels}")
            if l.pool not in self._pools:
                raise ArchParseError("pooling is not allowed in this space")

    def vocabulary(self) -> list[list[str]]:
        c = self.config
        vocab = [[str(n) for n in range(1, c.max_layers + 1)]]
        for _ in range(c.max_layers):
            vocab += [[f"f{f}" for f in c.filters], [f"k{k}" for k in c.kernels],
                      ["pool" if p else "nopool" for p in self._pools]]
        return vocab

    def to_tokens(self, arch: ChainArch) -> list[int]:
        c = self.config
        tokens = [len(arch.layers) - 1]
        for i in range(c.max_layers):
            if i < len(arch.layers):
                l = arch.layers[i]
                tokens += [c.filters.index(l.filters), c.kernels.index(l.kernel), self._pools.index(l.pool)]
            else:  # positions past the depth carry no information; 0 keeps the encoding canonical
                tokens += [0, 0, 0]
        return tokens

    def from_tokens(self, tokens: Sequence[int]) -> ChainArch:
        c, vocab = self.config, self.vocabulary()
        if len(tokens) != len(vocab) or any(not 0 <= t < len(v) for t, v in zip(tokens, vocab)):
            raise ArchParseError(f"token sequence {list(tokens)} does not fit this space's vocabulary")
        depth = tokens[0] + 1
        layers = tuple(ConvLayer(c.filters[tokens[1 + 3 * i]], c.kernels[tokens[2 + 3 * i]],
                                 self._pools[tokens[3 + 3 * i]]) for i in range(depth))
        return ChainArch(layers)

    def size(self) -> int:
        per_layer = len(self.config.filters) * len(self.config.kernels) * len(self._pools)
        return sum(per_layer ** n for n in range(1, self.config.max_layers + 1))

    # networks -------------------------------------------------------------------------------------------------
    def build(self, arch: ChainArch, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for l in arch.layers:
            blocks += [nn.Conv2d(channels, l.filters, l.kernel, padding=l.kernel // 2, bias=False),
                       nn.BatchNorm2d(l.filters), nn.ReLU(inplace=True)]
            # Pooling a 1-pixel map is impossible; skipping it keeps every architecture valid for any input size.
            if l.pool and min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = l.filters
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        return nn.Sequential(*blocks)

    def describe(self, arch: ChainArch) -> Graph:
        g = Graph()
        g.nodes.append(("input", "input"))
        prev = "input"
        for i, l in enumerate(arch.layers):
            node = f"conv{i}"
            g.nodes.append((node, f"conv {l.kernel}x{l.kernel}, {l.filters}"))
            g.edges.append((prev, node, ""))
            prev = node
            if l.pool:
                pool = f"pool{i}"
                g.nodes.append((pool, "max pool 2x2"))
                g.edges.append((prev, pool, ""))
                prev = pool
        g.nodes += [("gap", "global avg pool"), ("fc", "linear")]
        g.edges += [(prev, "gap", ""), ("gap", "fc", "")]
        return g

    def display(self, arch: ChainArch) -> str:
        return " → ".join(f"{l.kernel}x{l.kernel}·{l.filters}{' ▸pool' if l.pool else ''}" for l in arch.layers)


