"""Datasets the platform trains on, by name: built-in, torchvision and stored (uploaded) ones, split once into tensors."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nasjobs import nb201_table
from nasjobs.registry import Registry

log = logging.getLogger(__name__)

# What a sample is, and so which spaces can build for it. Input shapes per kind:
#   image   (channels, height, width)
#   signal  (channels, length): a 1-D series, e.g. one sensor channel of 40 steps is (1, 40)
#   table   (features,): one row of numeric columns
#   nb201   the input shape NAS-Bench-201 trained at; no samples, the figures are looked up in its table
KINDS = ("image", "signal", "table", "nb201")
BENCHMARK_KIND = "nb201"
# Stratified fractions (train, validation, test) when a dataset has no test split of its own, and (train,
# validation) of the training part when it has one; one seed for every experiment, so all share the split.
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
TRAIN_VAL_FRACTIONS = (0.8, 0.2)
SPLIT_SEED = 0
STORED_FORMAT = 1


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class RawFormat:
    """What one sample is as the dataset stores it, before the platform scales it: its dtype, the number it is
    divided by to reach the floats `build_dataset` is given (255 for 8-bit pixels, 16 for the digits' counts),
    and its range in words."""

    dtype: str = "float32"
    divisor: float = 1.0
    value_range: str = "any float"


@dataclass(frozen=True)
class Preprocessing:
    """How a raw sample becomes what the networks train on: cast to float32 and divided by `raw.divisor` (in
    float32), then standardised in float64 by the training split's `mean` and `std` per channel (images,
    signals) or per feature (tables) and cast back to float32, exactly the arithmetic of `build_dataset`, so a
    module that applies it (`nasjobs.export.RawInputNetwork`) sees bit for bit what training saw."""

    raw: RawFormat
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_json(self) -> dict[str, Any]:
        return {"dtype": self.raw.dtype, "divisor": self.raw.divisor, "value_range": self.raw.value_range,
                "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class Dataset:
    name: str
    input_shape: tuple[int, ...]  # one sample's shape, by kind (see KINDS)
    num_classes: int
    train: Split
    val: Split  # what the search sees
    test: Split  # touched once, for the final report
    kind: str = "image"
    class_names: tuple[str, ...] = ()
    lookup: str | None = None  # the NAS-Bench-201 table this dataset stands for (kind nb201), else None
    preprocessing: Preprocessing | None = None  # from raw samples to `train.x`; None: no samples (a table)
    feature_names: tuple[str, ...] = ()  # a table's columns, in input order, where known


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset by name, whose kind is known without loading it (a form checks the kind; a worker loads)."""

    name: str
    kind: str
    title: str
    load: Callable[[], Dataset]
    missing: Callable[[], str] | None = None  # why it cannot be loaded here ("" when it can); None: always can
    input_shape: tuple[int, ...] = ()  # one sample's shape and the number of classes, where known without loading
    num_classes: int = 0

    def __call__(self) -> Dataset:
        return self.load()

    def unavailable(self) -> str:
        return self.missing() if self.missing is not None else ""


Resolver = Callable[[str], "Path | None"]


class DatasetRegistry(Registry[DatasetEntry]):
    """The built-in datasets, and through one installed resolver the stored ones.

    A name that is not registered is asked of the resolver (`install_resolver`), which the webapp installs at
    start-up: it maps a stored dataset's name to the folder, under `data_dir()`, that `save_decoded` wrote, or
    returns None for a name it does not know. `names()` lists built-ins only; stored datasets are per team and the
    webapp lists its own.
    """

    def __init__(self) -> None:
        super().__init__("dataset", "nasjobs.datasets")
        self._resolver: Resolver | None = None

    def install_resolver(self, resolver: Resolver | None) -> None:
        self._resolver = resolver

    def _stored(self, name: str) -> DatasetEntry | None:
        folder = self._resolver(name) if self._resolver is not None else None
        if folder is None:
            return None
        folder = Path(folder).resolve()
        if not folder.is_relative_to(data_dir().resolve()):
            raise ValueError(f"stored dataset {name!r} resolves to {folder}, outside NAS_DATA_DIR ({data_dir()})")
        manifest = read_manifest(folder)
        return DatasetEntry(name, manifest["kind"], manifest.get("title") or name,
                            lambda: load_stored(name, folder), input_shape=tuple(manifest["input_shape"]),
                            num_classes=len(manifest.get("class_names") or ()))

    def get(self, name: str) -> DatasetEntry:
        try:
            return super().get(name)
        except KeyError:
            entry = self._stored(name)
            if entry is None:
                raise
            return entry

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and self._stored(name) is not None)


DATASETS = DatasetRegistry()


# settings ---------------------------------------------------------------------------------------------------
_REPO_VAR = Path(__file__).resolve().parent.parent / "var"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else default


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no environment variable; anything but 1/0, true/false, yes/no, on/off is an error."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def data_dir() -> Path:
    """Where decoded datasets live (`NAS_DATA_DIR`, default var/data): uploads and generated caches."""
    return _env_path("NAS_DATA_DIR", _REPO_VAR / "data")


# splits and normalisation -----------------------------------------------------------------------------------
def split_indices(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Stratified split into parts of the given fractions, fixed by `seed` so every experiment shares it."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for i, end in enumerate(bounds):
            parts[i].extend(idx[start:end])
            start = end
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def dataset_splits(y: np.ndarray, y_test: np.ndarray | None = None) -> list[np.ndarray]:
    """Indices of train, validation and test: SPLIT_FRACTIONS of `y`, or, when the data has a test split of its
    own (`y_test`), TRAIN_VAL_FRACTIONS of `y` and all of the test split."""
    if y_test is None:
        return split_indices(y, SPLIT_FRACTIONS, SPLIT_SEED)
    train, val = split_indices(y, TRAIN_VAL_FRACTIONS, SPLIT_SEED)
    return [train, val, np.arange(len(y_test), dtype=np.int64)]


def build_dataset(name: str, kind: str, x: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                  test: tuple[np.ndarray, np.ndarray] | None = None, raw: RawFormat = RawFormat(),
                  feature_names: Sequence[str] = ()) -> Dataset:
    """The one way every loader turns arrays into a Dataset: a fixed stratified split (`dataset_splits`), then
    normalisation by statistics of the training split alone, per channel (images, signals) or per feature
    (tables), so nothing of validation or test leaks into training. `x` is float, shaped (N, *input_shape):
    the raw samples divided by `raw.divisor`; the dataset's `preprocessing` records both steps, so an exported
    network can take raw samples."""
    if kind not in KINDS or kind == BENCHMARK_KIND:
        raise ValueError(f"kind {kind!r} has no samples; choose one of image, signal, table")
    y = np.asarray(y, dtype=np.int64)
    train, val, test_idx = dataset_splits(y, None if test is None else test[1])
    x_test, y_test = (x, y) if test is None else (test[0], np.asarray(test[1], dtype=np.int64))
    # Statistics over every axis but the channel (feature) axis 1, in float64 so large sets do not drift.
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x[train].mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x[train].std(axis=axes, dtype=np.float64, keepdims=True)
    std[std == 0] = 1.0  # a constant channel or column carries no information; leave it at zero

    def as_split(xs: np.ndarray, ys: np.ndarray, idx: np.ndarray) -> Split:
        xs = ((xs[idx] - mean) / std).astype(np.float32)
        return Split(torch.from_numpy(xs), torch.from_numpy(ys[idx].copy()))

    preprocessing = Preprocessing(raw, tuple(float(v) for v in mean.ravel()), tuple(float(v) for v in std.ravel()))
    return Dataset(name, tuple(int(d) for d in x.shape[1:]), len(class_names), as_split(x, y, train),
                   as_split(x, y, val), as_split(x_test, y_test, test_idx), kind, tuple(class_names),
                   preprocessing=preprocessing, feature_names=tuple(feature_names))


# the stored format ------------------------------------------------------------------------------------------
def save_decoded(folder: Path, kind: str, x: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                 meta: dict[str, Any] | None = None, test: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write decoded samples once, so workers never decode again: `x.npy`, `y.npy` (and `x_test.npy`,
    `y_test.npy` for a test split of its own) saved with `allow_pickle=False`, plus `manifest.json` (format,
    kind, class names, input shape, counts, dtype, `meta`).

    Images are uint8 (N, C, H, W); signals and tables float32. Everything is written into a temporary folder
    beside `folder` and renamed into place, so a folder either holds a whole dataset or does not exist, and a
    crash leaves nothing behind. Refuses to overwrite an existing folder.
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; a stored dataset is written once")
    if kind not in KINDS or kind == BENCHMARK_KIND:
        raise ValueError(f"cannot store a dataset of kind {kind!r}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        arrays = {"x": x, "y": np.asarray(y, dtype=np.int64)}
        if test is not None:
            arrays.update(x_test=test[0], y_test=np.asarray(test[1], dtype=np.int64))
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        manifest = {"format": STORED_FORMAT, "kind": kind, "class_names": list(class_names),
                    "input_shape": [int(d) for d in x.shape[1:]], "count": int(len(y)),
                    "test_count": None if test is None else int(len(test[1])), "dtype": str(x.dtype),
                    **(meta or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a stored dataset ({exc})") from None
    if manifest.get("format") != STORED_FORMAT or manifest.get("kind") not in KINDS:
        raise ValueError(f"{path}: unsupported format {manifest.get('format')!r} or kind {manifest.get('kind')!r}")
    return manifest


@dataclass(frozen=True)
class Decoded:
    """What `load_decoded` reads back: raw samples, before splitting and normalisation."""

    kind: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    manifest: dict[str, Any]
    test: tuple[np.ndarray, np.ndarray] | None = None


def load_decoded(folder: Path) -> Decoded:
    """Read a folder `save_decoded` wrote (never unpickling anything), checking arrays against the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    # Memory-mapped: a preview reads a few samples, not the whole file.
    load = lambda key: np.load(folder / f"{key}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
    x, y = load("x"), load("y")
    names = tuple(manifest["class_names"])
    test = (load("x_test"), load("y_test")) if manifest.get("test_count") is not None else None
    for xs, ys in [(x, y)] + ([test] if test else []):
        if list(xs.shape[1:]) != manifest["input_shape"] or len(xs) != len(ys) or ys.dtype != np.int64:
            raise ValueError(f"{folder}: arrays do not match the manifest")
        if len(ys) and not (0 <= ys.min() and ys.max() < len(names)):
            raise ValueError(f"{folder}: labels outside 0..{len(names) - 1}")
    return Decoded(manifest["kind"], x, y, names, manifest, test)


PIXELS = RawFormat("uint8", 255.0, "0..255")  # 8-bit images: uploads and torchvision's


def raw_format(decoded: Decoded) -> RawFormat:
    """How `as_float` scales these samples: 8-bit pixels by 255, floats not at all."""
    return PIXELS if decoded.x.dtype == np.uint8 else RawFormat()


def as_float(decoded: Decoded) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Samples as float32 in [0, 1] for images (stored as uint8), as stored otherwise (`raw_format`)."""
    divisor = raw_format(decoded).divisor

    def convert(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / divisor if divisor != 1.0 else x
    test = None if decoded.test is None else (convert(decoded.test[0]), decoded.test[1])
    return convert(decoded.x), test


@lru_cache(maxsize=8)
def load_stored(name: str, folder: Path) -> Dataset:
    """A stored dataset, split and normalised like every other (`build_dataset`)."""
    decoded = load_decoded(folder)
    x, test = as_float(decoded)
    return build_dataset(name, decoded.kind, x, decoded.y, decoded.class_names, test, raw_format(decoded),
                         decoded.manifest.get("feature_names") or ())


def cached(name: str, make: Callable[[], tuple[str, np.ndarray, np.ndarray, Sequence[str],
                                               tuple[np.ndarray, np.ndarray] | None]]) -> Decoded:
    """Arrays generated once and kept under `data_dir()/builtin/<name>`, so a worker generates them at most once;
    when the folder cannot be written they are regenerated in memory each time."""
    folder = data_dir() / "builtin" / name
    if not folder.exists():
        kind, x, y, names, test = make()
        try:
            save_decoded(folder, kind, x, y, names, {"title": name}, test)
        except FileExistsError:  # another worker finished first: its arrays are the same
            pass
        except OSError as exc:
            log.warning("could not cache %s in %s (%s); generating it in memory", name, folder, exc)
            return Decoded(kind, x, np.asarray(y, dtype=np.int64), tuple(names), {}, test)
    return load_decoded(folder)


# built-ins --------------------------------------------------------------------------------------------------
DIGITS_VERSION = "sklearn-digits-v1"  # x / 16 as float32, scikit-learn's order; other values need a new folder
# Raw digits are scikit-learn's own pixels, `load_digits().images`: counts 0..16 (exact in float32, and so is /16).
DIGITS_RAW = RawFormat("float32", 16.0, "0..16 (whole numbers: scikit-learn's load_digits().images)")


def generate_digits() -> tuple[str, np.ndarray, np.ndarray, list[str], None]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped inside the package, as floats
    in [0, 1] (its pixels count 0..16)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return ("image", (bunch.images.astype(np.float32) / 16.0)[:, None, :, :], bunch.target.astype(np.int64),
            [str(d) for d in range(10)], None)


@lru_cache(maxsize=None)
def load_digits() -> Dataset:
    """The digits as a dataset: 60/20/20 stratified train/validation/test split (`SPLIT_FRACTIONS`)."""
    decoded = cached(DIGITS_VERSION, generate_digits)
    x, _ = as_float(decoded)
    return build_dataset("digits", "image", x, decoded.y, decoded.class_names, raw=DIGITS_RAW)


MNIST1D_VERSION = "mnist1d-0.0.2-default-v1"  # a new generator or new arguments need a new cache folder


def generate_mnist1d() -> tuple[str, np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray]]:
    """MNIST-1D (Greydanus 2020) from the package's procedural generator with its default arguments (5,000
    signals of length 40, seed 42, its own 4,000 / 1,000 train/test split); never its download path. The generator
    seeds the global `random` and `numpy.random` states, so they are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    signals = lambda key: data[key].astype(np.float32)[:, None, :]  # noqa: E731  (N, 1 channel, 40 steps)
    return ("signal", signals("x"), data["y"].astype(np.int64), [str(d) for d in range(10)],
            (signals("x_test"), data["y_test"].astype(np.int64)))


@lru_cache(maxsize=None)
def load_mnist1d() -> Dataset:
    """MNIST-1D: 10 classes of 1-D signals of length 40, generated offline; the package's test split is the test
    split, its training split is divided 80/20 into train and validation."""
    decoded = cached(MNIST1D_VERSION, generate_mnist1d)
    x, test = as_float(decoded)
    return build_dataset("mnist1d", "signal", x, decoded.y, decoded.class_names, test,
                         RawFormat("float32", 1.0, "as the mnist1d package generates them (roughly -6..6)"))


# The built-ins whose samples are generated into `data_dir()/builtin` (a page previews them from there).
BUILTIN_CACHES = {"digits": (DIGITS_VERSION, generate_digits),
                  "mnist1d": (MNIST1D_VERSION, generate_mnist1d)}


def builtin_folder(name: str) -> Path | None:
    """The stored folder of a generated built-in (written on first use), or None for one without samples there
    (a NAS-Bench-201 table, a torchvision dataset) or when it cannot be written."""
    if name not in BUILTIN_CACHES:
        return None
    version, make = BUILTIN_CACHES[name]
    cached(version, make)
    folder = data_dir() / "builtin" / version
    return folder if folder.exists() else None


def benchmark_dataset(table: str) -> Dataset:
    """A NAS-Bench-201 table as a dataset: no samples, the input shape and classes the benchmark trained with."""
    shape, classes = nb201_table.INPUTS[table]
    empty = Split(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.int64))
    return Dataset(f"nb201-{table}", shape, classes, empty, empty, empty, BENCHMARK_KIND, (), table)


DATASETS.register("digits", DatasetEntry("digits", "image", "scikit-learn digits (8x8, 10 classes)", load_digits,
                                         input_shape=(1, 8, 8), num_classes=10))
DATASETS.register("mnist1d", DatasetEntry("mnist1d", "signal", "MNIST-1D (signals of length 40, 10 classes)",
                                          load_mnist1d, input_shape=(1, 40), num_classes=10))
for _table in nb201_table.DATASETS:
    DATASETS.register(f"nb201-{_table}", DatasetEntry(f"nb201-{_table}", BENCHMARK_KIND,
                                                      f"NAS-Bench-201 {_table} table (lookup only)",
                                                      lambda t=_table: benchmark_dataset(t),
                                                      input_shape=nb201_table.INPUTS[_table][0],
                                                      num_classes=nb201_table.INPUTS[_table][1]))


def _register_torchvision() -> None:
    from nasjobs.vision import TORCHVISION, load_torchvision, torchvision_missing

    for name, spec in TORCHVISION.items():
        DATASETS.register(name, DatasetEntry(name, "image", spec.title, lambda n=name: load_torchvision(n),
                                             lambda n=name: torchvision_missing(n), spec.input_shape, spec.classes))


_register_torchvision()
