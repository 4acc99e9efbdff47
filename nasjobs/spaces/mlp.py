"""A multilayer-perceptron space for tables: depth, width per layer, activation, dropout, batch norm, residuals."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from math import prod
from typing import Sequence

import torch
from torch import nn

from nasjobs.options import coerce, option, option_specs
from nasjobs.spaces.base import ArchParseError, EditSpace, Graph

WIDTH_CHOICES = (8, 16, 32, 64, 128, 256, 512, 1024)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
DROPOUT_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class MLPConfig:
    max_layers: int = option(3, "Maximum number of hidden layers", min=1, max=8)
    widths: tuple[int, ...] = option((32, 64, 128), "Widths a hidden layer may have", choices=WIDTH_CHOICES)
    activations: tuple[str, ...] = option(("relu", "gelu"), "Activations the network may use",
                                          choices=tuple(ACTIVATIONS))
    dropouts: tuple[float, ...] = option((0.0, 0.1, 0.3), "Dropout rates after each hidden layer",
                                         choices=DROPOUT_CHOICES)
    batch_norm: bool = option(True, "Search whether hidden layers use batch norm (off: never)")
    skips: bool = option(True, "Search whether hidden layers add their input back (residual connections; a "
                               "linear projection where the width changes)")

    def __post_init__(self) -> None:
        for spec in option_specs(type(self)):  # the same checks and normal forms as a submitted form
            object.__setattr__(self, spec.name, coerce(spec, getattr(self, spec.name)))


@dataclass(frozen=True)
class MLPArch:
    widths: tuple[int, ...]  # one per hidden layer
    activation: str
    dropout: float
    batch_norm: bool
    skip: bool


# `<w>-<w>...:<activation>[:d<rate>][:bn][:res]`, e.g. 64-32:relu:d0.1:bn:res
_ARCH_RE = re.compile(r"(\d{1,4}(?:-\d{1,4})*):([a-z]+)(?::d(0\.\d+))?(:bn)?(:res)?")


class Block(nn.Module):
    """Linear → [batch norm] → activation → [dropout], plus the input (projected if the width changes) with skip."""

    def __init__(self, c_in: int, c_out: int, arch: MLPArch) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(c_in, c_out, bias=not arch.batch_norm)]
        layers += [nn.BatchNorm1d(c_out)] if arch.batch_norm else []
        layers += [ACTIVATIONS[arch.activation]()]
        layers += [nn.Dropout(arch.dropout)] if arch.dropout else []
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if arch.skip:
            self.shortcut = nn.Identity() if c_in == c_out else nn.Linear(c_in, c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + self.shortcut(x) if self.shortcut is not None else out


class MLP(EditSpace[MLPArch]):
    """Fully connected networks for tabular data (flattened input: images and signals work too).

    An architecture is 1 to `max_layers` hidden layers, each of its own width, sharing one activation, one
    dropout rate, batch norm or not and residual connections or not (He et al. 2016, with a linear projection
    where widths differ, their option B); a linear layer classifies. The searched choices follow the MLP spaces of
    tabular NAS and hyperparameter benchmarks (e.g. Zimmer et al. 2021, Auto-PyTorch Tabular).

    Canonical string: widths joined by '-', then `:activation`, `:d<rate>` for a dropout above 0, `:bn`, `:res`,
    e.g. `128-64:relu:d0.1:bn:res` or `32:gelu`. A mutation is one edit (`EditSpace`): one layer's width, a layer
    added or removed, or the activation, dropout rate, batch norm or residuals changed.
    """

    name = "mlp"
    title = "MLP (tables)"
    Config = MLPConfig
    kinds = ("table", "signal", "image")

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__(config or MLPConfig())
        self._bns = (False, True) if self.config.batch_norm else (False,)
        self._skips = (False, True) if self.config.skips else (False,)

    def _choices(self) -> dict[str, tuple]:
        """The values of each architecture-wide choice."""
        c = self.config
        return {"activation": c.activations, "dropout": c.dropouts, "batch_norm": self._bns, "skip": self._skips}

    def sample(self, rng: random.Random) -> MLPArch:
        depth = rng.randint(1, self.config.max_layers)
        widths = tuple(rng.choice(self.config.widths) for _ in range(depth))
        return MLPArch(widths, **{k: rng.choice(v) for k, v in self._choices().items()})

    def smallest(self) -> MLPArch:
        """One hidden layer of the smallest width, without batch norm or residuals (neither adds anything for
        free: batch norm costs two parameters a unit for the one bias it saves, a projection a whole matrix)."""
        c = self.config
        return MLPArch((min(c.widths),), c.activations[0], min(c.dropouts), False, False)

    def _changes(self, arch: MLPArch, kind: str, position: int) -> list[MLPArch]:
        """Every architecture one edit of `kind` away (`position`: the layer edited, added or removed)."""
        w, allowed = list(arch.widths), self.config.widths
        if kind == "width":
            return [replace(arch, widths=tuple(w[:position] + [v] + w[position + 1:])) for v in allowed
                    if v != w[position]]
        if kind == "add":
            return [replace(arch, widths=tuple(w[:position] + [v] + w[position:])) for v in allowed]
        if kind == "remove":
            return [replace(arch, widths=tuple(w[:position] + w[position + 1:]))]
        return [replace(arch, **{kind: v}) for v in self._choices()[kind] if v != getattr(arch, kind)]

    def _edit_sites(self, arch: MLPArch) -> dict[str, list[int]]:
        n, c = len(arch.widths), self.config
        sites = {"width": list(range(n)) if len(c.widths) > 1 else [],
                 "add": list(range(n + 1)) if n < c.max_layers else [], "remove": list(range(n)) if n > 1 else []}
        sites.update({k: [0] for k, v in self._choices().items() if len(v) > 1})
        return {k: v for k, v in sites.items() if v}

    def to_str(self, arch: MLPArch) -> str:
        text = "-".join(map(str, arch.widths)) + f":{arch.activation}"
        text += f":d{arch.dropout:g}" if arch.dropout else ""
        return text + (":bn" if arch.batch_norm else "") + (":res" if arch.skip else "")

    def from_str(self, text: str) -> MLPArch:
        m = _ARCH_RE.fullmatch(text.strip())
        if not m:
            raise ArchParseError(f"bad architecture {text!r}; expected e.g. 128-64:relu:d0.1:bn:res")
        widths, activation, dropout, bn, res = m.groups()
        arch = MLPArch(tuple(int(w) for w in widths.split("-")), activation, float(dropout or 0.0), bool(bn),
                       bool(res))
        self._check(arch)
        if self.to_str(arch) != text:  # one string per architecture: it is the database key
            raise ArchParseError(f"{text!r} is not in canonical form; write {self.to_str(arch)}")
        return arch

    def _check(self, arch: MLPArch) -> None:
        c = self.config
        if not 1 <= len(arch.widths) <= c.max_layers:
            raise ArchParseError(f"{len(arch.widths)} hidden layers; this space allows 1 to {c.max_layers}")
        bad = [w for w in arch.widths if w not in c.widths]
        if bad:
            raise ArchParseError(f"width {bad[0]} is not one of {c.widths}")
        for kind, values in self._choices().items():
            if getattr(arch, kind) not in values:
                raise ArchParseError(f"{kind} {getattr(arch, kind)!r} is not one of {values}")

    def vocabulary(self) -> list[list[str]]:
        """The depth, one width per layer position, then activation, dropout, batch norm and residuals."""
        c = self.config
        vocab = [[str(n) for n in range(1, c.max_layers + 1)]]
        vocab += [[f"w{w}" for w in c.widths] for _ in range(c.max_layers)]
        return vocab + [[f"{k}={v}" for v in values] for k, values in self._choices().items()]

    def to_tokens(self, arch: MLPArch) -> list[int]:
        self._check(arch)
        c = self.config
        widths = [c.widths.index(w) for w in arch.widths]
        tokens = [len(arch.widths) - 1] + widths + [0] * (c.max_layers - len(widths))  # 0 past the depth
        return tokens + [values.index(getattr(arch, k)) for k, values in self._choices().items()]

    def from_tokens(self, tokens: Sequence[int]) -> MLPArch:
        vocab = self.vocabulary()
        if len(tokens) != len(vocab) or any(not 0 <= t < len(v) for t, v in zip(tokens, vocab)):
            raise ArchParseError(f"token sequence {list(tokens)} does not fit this space's vocabulary")
        c, depth = self.config, int(tokens[0]) + 1
        widths = tuple(c.widths[int(t)] for t in tokens[1:1 + depth])
        rest = tokens[1 + c.max_layers:]
        return MLPArch(widths, **{k: values[int(t)] for (k, values), t in zip(self._choices().items(), rest)})

    def size(self) -> int:
        c = self.config
        shared = prod(len(v) for v in self._choices().values())
        return shared * sum(len(c.widths) ** d for d in range(1, c.max_layers + 1))

    def build(self, arch: MLPArch, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
        self._check(arch)
        widths = [prod(input_shape), *arch.widths]
        blocks = [Block(a, b, arch) for a, b in zip(widths, widths[1:])]
        return nn.Sequential(nn.Flatten(), *blocks, nn.Linear(widths[-1], num_classes))

    def describe(self, arch: MLPArch) -> Graph:
        g = Graph(nodes=[("input", "input")])
        extras = (" · BN" if arch.batch_norm else "") + (f" · dropout {arch.dropout:g}" if arch.dropout else "")
        previous = "input"
        for k, width in enumerate(arch.widths, start=1):
            node = f"fc{k}"
            g.nodes.append((node, f"linear {width} · {arch.activation}{extras}"))
            g.edges.append((previous, node, ""))
            if arch.skip:
                g.nodes.append((f"add{k}", "+"))
                g.edges += [(node, f"add{k}", ""), (previous, f"add{k}", "skip")]
                node = f"add{k}"
            previous = node
        g.nodes.append(("fc", "linear"))
        g.edges.append((previous, "fc", ""))
        return g

    def display(self, arch: MLPArch) -> str:
        return " → ".join(map(str, arch.widths)) + f" ({self.to_str(arch).split(':', 1)[1].replace(':', ', ')})"
