"""torchvision's image datasets read from `NAS_DATA_ROOT`, never downloaded unless that is explicitly allowed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nasjobs.datasets import PIXELS, Dataset, build_dataset, data_dir, env_flag


@dataclass(frozen=True)
class TorchvisionSpec:
    title: str
    load: Callable[[Path, bool, bool], Any]  # (root, train, download) -> a torchvision dataset
    expected: Callable[[Path], list[Path]]  # the files that must be under root
    classes: int
    input_shape: tuple[int, int, int] = (3, 32, 32)


def _train_flag(cls_name: str) -> Callable[[Path, bool, bool], Any]:
    """A loader for the torchvision classes that pick their split with `train=`."""
    def load(root: Path, train: bool, download: bool) -> Any:
        from torchvision import datasets
        return getattr(datasets, cls_name)(str(root), train=train, download=download)

    return load


def _mnist_files(cls_name: str) -> Callable[[Path], list[Path]]:
    def expected(root: Path) -> list[Path]:
        from torchvision import datasets
        # The raw idx files, uncompressed, as torchvision's own check looks for them.
        resources = getattr(datasets, cls_name).resources
        return [root / cls_name / "raw" / os.path.splitext(os.path.basename(url))[0] for url, _ in resources]

    return expected


def _cifar_files(cls_name: str) -> Callable[[Path], list[Path]]:
    def expected(root: Path) -> list[Path]:
        from torchvision import datasets
        cls = getattr(datasets, cls_name)
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / name for name in names]

    return expected


def _svhn_load(root: Path, train: bool, download: bool) -> Any:
    from torchvision import datasets
    return datasets.SVHN(str(root), split="train" if train else "test", download=download)


def _svhn_expected(root: Path) -> list[Path]:
    from torchvision import datasets
    return [root / datasets.SVHN.split_list[split][1] for split in ("train", "test")]


TORCHVISION: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST (28x28 greyscale, 10 classes)", _train_flag("MNIST"), _mnist_files("MNIST"), classes=10,
                             input_shape=(1, 28, 28)),
    "fashion-mnist": TorchvisionSpec("Fashion-MNIST (28x28 greyscale, 10 classes)", _train_flag("FashionMNIST"),
                                     _mnist_files("FashionMNIST"), classes=10, input_shape=(1, 28, 28)),
    "cifar10": TorchvisionSpec("CIFAR-10 (32x32 colour, 10 classes)", _train_flag("CIFAR10"), _cifar_files("CIFAR10"), classes=10),
    "cifar100": TorchvisionSpec("CIFAR-100 (32x32 colour, 100 classes)", _train_flag("CIFAR100"),
                                _cifar_files("CIFAR100"), classes=100),
    "svhn": TorchvisionSpec("SVHN (32x32 colour house numbers, 10 classes)", _svhn_load, _svhn_expected,
                            classes=10),
}


def data_root() -> Path:
    """Where torchvision's files are (`NAS_DATA_ROOT`, default NAS_DATA_DIR/torchvision)."""
    value = os.environ.get("NAS_DATA_ROOT", "").strip()
    return Path(value) if value else data_dir() / "torchvision"


@dataclass(frozen=True)
class Availability:
    name: str
    title: str
    available: bool
    reason: str  # why not, naming the missing files; "" when available
    root: str


def torchvision_availability(root: Path | None = None) -> list[Availability]:
    """Which torchvision datasets are on disk under `root` and, for those that are not, which files are missing.

    Presence is checked, not checksums: torchvision verifies those when the dataset is loaded."""
    root = Path(root) if root is not None else data_root()
    out = []
    for name, spec in TORCHVISION.items():
        missing = [p for p in spec.expected(root) if not p.is_file()]
        reason = ""
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            reason = f"missing {missing[0]}{more}"
        out.append(Availability(name, spec.title, not missing, reason, str(root)))
    return out


def torchvision_missing(name: str, root: Path | None = None) -> str:
    """Why `name` cannot be loaded now (its files are missing and downloading is off), or "" when it can."""
    (status,) = [a for a in torchvision_availability(root) if a.name == name]
    if status.available or env_flag("NAS_DATA_DOWNLOAD"):
        return ""
    return f"{name} is not under {status.root}: {status.reason} (set NAS_DATA_DOWNLOAD=1 to let the platform " \
           "download it)"


def _arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images as (N, C, H, W) and int64 labels from a torchvision dataset's in-memory fields."""
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    labels = ds.labels if labels is None else labels
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    if data.ndim == 3:  # MNIST-style (N, H, W) greyscale
        data = data[:, None]
    elif data.shape[-1] == 3 and data.shape[1] != 3:  # CIFAR stores (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data), labels.astype(np.int64)


@lru_cache(maxsize=None)
def load_torchvision(name: str, root: Path | None = None, download: bool | None = None) -> Dataset:
    """One of TORCHVISION from `root` (default `data_root()`). Downloading happens only with `download=True`, or
    with `NAS_DATA_DOWNLOAD=1` when `download` is None; otherwise a missing file is a FileNotFoundError that says
    which. The official test split is the test split; the training split is divided 80/20 into train and
    validation, stratified, and normalised by the training part's statistics (`build_dataset`)."""
    spec = TORCHVISION[name]
    root = Path(root) if root is not None else data_root()
    download = env_flag("NAS_DATA_DOWNLOAD") if download is None else download
    if not download and (reason := torchvision_missing(name, root)):
        raise FileNotFoundError(reason)
    train, test = spec.load(root, True, download), spec.load(root, False, download)
    (x, y), (x_test, y_test) = _arrays(train), _arrays(test)
    classes = getattr(test, "classes", None) or [str(c) for c in range(spec.classes)]
    return build_dataset(name, "image", x.astype(np.float32) / 255.0, y, [str(c) for c in classes],
                         (x_test.astype(np.float32) / 255.0, y_test), PIXELS)
