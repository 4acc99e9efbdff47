"""Architecture encodings for surrogate models: sparse feature counts, keyed by feature name."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from nasjobs.spaces.base import OpGraph


def one_hot_features(tokens: Sequence[int]) -> dict[str, float]:
    """One feature per (position, token): the one-hot encoding of `to_tokens`."""
    return {f"{position}={token}": 1.0 for position, token in enumerate(tokens)}


def wl_features(graph: OpGraph, iterations: int) -> dict[str, float]:
    """Weisfeiler-Lehman subtree features (Shervashidze et al. 2011, JMLR 12, Algorithm 2; for architectures,
    Ru, Wan, Dong & Osborne 2021, NAS-BOWL, Section 3.1): how often each node label occurs after 0, 1, ...,
    `iterations` relabellings, where one relabelling replaces a node's label by its label followed by the sorted
    labels of its inputs. Iteration 0 counts the operations; iteration 1 counts each operation together with
    what feeds it, and so on: a cell is described by its operations and how they connect, not by where they sit,
    so equivalent cells get equal features. Labels are kept as strings (no compression to integers is needed
    to compare them)."""
    labels = list(graph.labels)
    counts = Counter(labels)
    for _ in range(iterations):
        labels = [f"{label}({','.join(sorted(labels[i] for i in graph.inputs[node]))})"
                  for node, label in enumerate(labels)]
        counts.update(labels)
    return {feature: float(count) for feature, count in counts.items()}
