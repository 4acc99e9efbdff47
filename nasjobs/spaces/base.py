"""The search-space interface: how architectures are represented, sampled, changed, keyed, built and drawn."""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Hashable, Sequence, TypeVar

from torch import nn

A = TypeVar("A", bound=Hashable)


class ArchParseError(ValueError):
    """An architecture string or token sequence that does not name a member of the space."""


@dataclass
class Graph:
    """A drawable description of an architecture: nodes with labels, edges with optional labels."""

    nodes: list[tuple[str, str]] = field(default_factory=list)  # (id, label)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (src, dst, label)
    clusters: dict[str, list[str]] = field(default_factory=dict)  # title -> node ids

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [list(n) for n in self.nodes], "edges": [list(e) for e in self.edges],
                "clusters": {k: list(v) for k, v in self.clusters.items()}}


@dataclass(frozen=True)
class OpGraph:
    """An architecture as a DAG with an operation on each node, the view graph-aware surrogates read
    (`nasjobs.strategies.encodings.wl_features`): `labels[i]` is node i's operation (or a role such as "input"),
    `inputs[i]` the nodes feeding node i. Unlike `Graph`, which is for drawing, it carries no positions or
    names, so two architectures that compute the same thing give equal graphs."""

    labels: tuple[str, ...]
    inputs: tuple[tuple[int, ...], ...]


class SearchSpace(ABC, Generic[A]):
    """One search space. Architectures are immutable, hashable values; `to_str` is their database key.

    Each space declares its options as a frozen dataclass `Config` (see `nasjobs.options`).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]
    kinds: ClassVar[tuple[str, ...]] = ("image",)  # the dataset kinds it can build for (`nasjobs.datasets.KINDS`)

    def __init__(self, config: Any) -> None:
        self.config = config

    def check_dataset(self, dataset: str, kind: str) -> None:
        """Raise ValueError naming the conflict if this space (with its config) cannot build for `dataset`."""
        if kind not in self.kinds:
            raise ValueError(f"the {self.name} space builds networks for {' or '.join(self.kinds)} data; "
                             f"{dataset!r} is {kind} data")

    @abstractmethod
    def sample(self, rng: random.Random) -> A: ...

    @abstractmethod
    def mutate(self, arch: A, rng: random.Random) -> A:
        """A small change that always gives a valid architecture different from `arch`."""

    @abstractmethod
    def neighbours(self, arch: A) -> list[A]:
        """All architectures one mutation away (finite spaces)."""

    @abstractmethod
    def to_str(self, arch: A) -> str: ...

    @abstractmethod
    def from_str(self, text: str) -> A:
        """Parse a canonical string; raises ArchParseError. Never uses eval."""

    @abstractmethod
    def vocabulary(self) -> list[list[str]]:
        """The token choices at each position of `to_tokens`."""

    @abstractmethod
    def to_tokens(self, arch: A) -> list[int]: ...

    @abstractmethod
    def from_tokens(self, tokens: Sequence[int]) -> A: ...

    @abstractmethod
    def size(self) -> int:
        """Number of architectures in the space (exact)."""

    @abstractmethod
    def build(self, arch: A, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A trainable network for inputs of `input_shape`: (channels, height, width) for images, (channels,
        length) for signals, (features,) for tables."""

    @abstractmethod
    def describe(self, arch: A) -> Graph: ...

    def op_graph(self, arch: A) -> OpGraph | None:
        """The architecture as an operations-on-nodes DAG for graph-aware surrogates; None (the default) when the
        space offers no such view, and a strategy then reads `to_tokens` instead."""
        return None

    def cost(self, arch: A, input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int] | None:
        """Parameters and multiply-adds (one input) of `build(arch, input_shape, num_classes)` by formula, without
        building it; None (the default) where the space has no formula, and an estimator counts them on a network
        (`Estimator.cost`)."""
        return None

    def smallest(self) -> A | None:
        """An architecture whose network has both the fewest parameters and the fewest multiply-adds the space
        can build with its options, on any input, so that submission can refuse deployment limits no architecture
        meets; None (the default) where the space cannot tell cheaply."""
        return None

    def display(self, arch: A) -> str:
        """A short human-readable form for tables (defaults to the canonical string)."""
        return self.to_str(arch)

    def distance(self, a: A, b: A) -> int:
        """Edit distance between two architectures: differing token positions."""
        ta, tb = self.to_tokens(a), self.to_tokens(b)
        return sum(x != y for x, y in zip(ta, tb)) + abs(len(ta) - len(tb))


class EditSpace(SearchSpace[A]):
    """A space whose mutations are edits: `_edit_sites` names the kinds of edit possible on an architecture and
    where each applies, `_changes` lists the architectures one edit of a kind at a site away. `mutate` picks the
    kind uniformly among those possible, then a site, then a result; `neighbours` are all results."""

    @abstractmethod
    def _check(self, arch: A) -> None:
        """Raise ArchParseError unless `arch` is a member of the space."""

    @abstractmethod
    def _edit_sites(self, arch: A) -> dict[str, list[int]]: ...

    @abstractmethod
    def _changes(self, arch: A, kind: str, site: int) -> list[A]: ...

    def mutate(self, arch: A, rng: random.Random) -> A:
        self._check(arch)
        sites = self._edit_sites(arch)
        if not sites:
            raise ValueError("this space has a single architecture; nothing to mutate")
        kind = rng.choice(sorted(sites))
        return rng.choice(self._changes(arch, kind, rng.choice(sites[kind])))

    def neighbours(self, arch: A) -> list[A]:
        self._check(arch)
        out = [n for kind, sites in sorted(self._edit_sites(arch).items()) for site in sites
               for n in self._changes(arch, kind, site)]
        return list(dict.fromkeys(a for a in out if a != arch))
