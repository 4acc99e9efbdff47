"""Image augmentation applied to whole batches on the training device, drawn from an injected torch.Generator."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding and horizontal flip (the standard CIFAR recipe of He et al. 2016), then
    cutout (DeVries & Taylor 2017): one square of side `cutout`, centred anywhere in the image and clipped at its
    borders, set to zero. Inputs are normalised, so zero is the training mean."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch (N, C, H, W); every random draw comes from `generator`, on `x`'s device."""
        n, _, h, w = x.shape
        dev = x.device
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            x = padded[torch.arange(n, device=dev)[:, None, None, None],
                       torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=dev) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        if self.cutout:
            cy = torch.randint(0, h, (n,), generator=generator, device=dev)[:, None]
            cx = torch.randint(0, w, (n,), generator=generator, device=dev)[:, None]
            top, left = cy - self.cutout // 2, cx - self.cutout // 2
            ys, xs = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
            in_rows = (ys >= top) & (ys < top + self.cutout)
            in_cols = (xs >= left) & (xs < left + self.cutout)
            x = x * ~(in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        return x
