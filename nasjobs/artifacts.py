"""Trained weights on disk: one file per kept trial, the rest deleted so disk use stays bounded; built exports beside them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch


class ArtifactStore:
    def __init__(self, root: str | Path, experiment_id: int | str) -> None:
        self.dir = Path(root) / f"experiment-{experiment_id}"

    def path(self, number: int) -> Path:
        return self.dir / f"trial-{number:05d}.pt"

    def save(self, number: int, state: dict[str, torch.Tensor]) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(number)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a killed worker never leaves half a file under the real name
        return str(path)

    def export_path(self, number: int, suffix: str) -> Path:
        """Where a trial's built export in one format is kept: a folder of its own, which `keep_only` leaves
        alone (an export outlives the weights it was built from); deleted with the experiment's folder."""
        return self.dir / "exports" / f"trial-{number:05d}.{suffix}"

    def load(self, number: int) -> dict[str, torch.Tensor] | None:
        path = self.path(number)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def keep_only(self, numbers: Iterable[int]) -> None:
        """Delete every trial's weights except those of `numbers` (idempotent)."""
        keep = {self.path(n).name for n in numbers}
        if not self.dir.exists():
            return
        for f in self.dir.glob("trial-*"):
            if f.name not in keep:
                f.unlink(missing_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "search-checkpoint.pt"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """A differentiable search's resume point (weights, alphas, optimizers, RNG states), replaced atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
