"""Trained weights on disk: one file per kept trial, the rest deleted so disk use stays bounded; built exports and
the partial checkpoints of trials under way beside them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

CHECKPOINT_SECONDS = 30.0  # a trial under way saves its progress at most this often, by default


class FileCheckpoint:
    """A trial's partial progress in one file (`nasjobs.training.TrialCheckpoint`): written to a temporary file and
    renamed over the last one, so a worker killed mid-write leaves the previous checkpoint whole."""

    def __init__(self, path: str | Path, every_seconds: float = CHECKPOINT_SECONDS) -> None:
        self.path = Path(path)
        self.every_seconds = every_seconds

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def discard(self) -> None:
        """Delete it: the trial finished (done or failed), so nothing is left to resume."""
        self.path.unlink(missing_ok=True)


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

    def partial_path(self, number: int) -> Path:
        """Where trial `number` keeps its progress while it trains (`trial_checkpoint`); gone once it finishes."""
        return self.dir / f"trial-{number:05d}.partial.pt"

    def trial_checkpoint(self, number: int, every_seconds: float = CHECKPOINT_SECONDS) -> FileCheckpoint:
        """Trial `number`'s partial checkpoint, saved at most every `every_seconds` (after every epoch at 0)."""
        return FileCheckpoint(self.partial_path(number), every_seconds)

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
        """Delete every trial's weights except those of `numbers` (idempotent). Partial checkpoints stay: each
        belongs to a trial under way, whose job deletes it when the trial finishes."""
        keep = {self.path(n).name for n in numbers}
        if not self.dir.exists():
            return
        for f in self.dir.glob("trial-*"):
            if f.name not in keep and not f.name.endswith((".partial.pt", ".partial.tmp")):
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
