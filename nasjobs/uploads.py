"""Decoders of uploaded datasets (an ImageFolder zip, a CSV) into the stored format, and their preview."""
from __future__ import annotations

import base64
import csv
import io
import math
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from nasjobs.datasets import dataset_splits, load_decoded, save_decoded

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
# Files an archiver adds beside the data (macOS resource forks, Finder and Explorer metadata); skipped.
JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


class DecodeError(ValueError):
    """An upload that cannot become a dataset; the message is for the person who uploaded it."""


@dataclass(frozen=True)
class DecodeLimits:
    max_total_bytes: int = 2 * 1024**3  # uncompressed size of all members together
    max_ratio: float = 200.0  # uncompressed / compressed, per member and overall (zip bombs exceed it by far)
    max_members: int = 200_000
    max_pixels: int = 4096 * 4096  # per image, checked before it is decoded
    min_classes: int = 2
    min_per_class: int = 3  # one sample each for train, validation and test


def _check_classes(labels: list[str] | np.ndarray, class_names: list[str], what: str, limits: DecodeLimits) -> None:
    if len(class_names) < limits.min_classes:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise DecodeError(f"a dataset needs at least {limits.min_classes} classes; found {found}")
    counts = Counter(labels)
    small = [(name, counts[i]) for i, name in enumerate(class_names) if counts[i] < limits.min_per_class]
    if small:
        listed = ", ".join(f"{n!r} ({c})" for n, c in small[:5])
        raise DecodeError(f"every class needs at least {limits.min_per_class} {what}; too few in {listed}")


# image folders in a zip -------------------------------------------------------------------------------------
def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.startswith("__MACOSX/") or (bool(parts) and (parts[-1] in JUNK or parts[-1].startswith("._")))


def _safe_members(archive: zipfile.ZipFile, limits: DecodeLimits) -> list[zipfile.ZipInfo]:
    """The archive's files, refusing anything that could escape a folder or exhaust memory when read."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise DecodeError(f"the zip holds {len(infos)} entries; at most {limits.max_members} are accepted")
    total = compressed = 0
    for info in infos:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        # An absolute path, a parent step or a drive letter (C:) could place a file outside any target folder.
        if name.startswith(("/", "\\")) or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise DecodeError(f"the zip member {name!r} points outside the archive's folder; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DecodeError(f"the zip member {name!r} is a symbolic link; links are refused")
        total += info.file_size
        compressed += info.compress_size
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) and info.file_size > 1024**2:
            raise DecodeError(f"the zip member {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                              f" times (at most {limits.max_ratio:g} is accepted); it looks like a zip bomb")
    if total > limits.max_total_bytes:
        raise DecodeError(f"the zip expands to {total / 1024**2:.0f} MiB; at most "
                          f"{limits.max_total_bytes / 1024**2:.0f} MiB is accepted")
    if total > limits.max_ratio * max(compressed, 1) and total > 1024**2:
        raise DecodeError(f"the zip expands {total / max(compressed, 1):.0f} times (at most {limits.max_ratio:g}"
                          " is accepted); it looks like a zip bomb")
    return [i for i in infos if not i.is_dir() and not _is_junk(i.filename)]


def _class_layout(files: list[zipfile.ZipInfo]) -> list[tuple[str, zipfile.ZipInfo]]:
    """(class name, member) for each file of an ImageFolder layout, `class/image`, also when one top-level folder
    wraps the class folders (`flowers/rose/1.jpg`)."""
    paths = [PurePosixPath(i.filename) for i in files]
    if not paths:
        raise DecodeError("the zip holds no files")
    depth = 2
    if len({p.parts[0] for p in paths}) == 1 and all(len(p.parts) == 3 for p in paths):
        depth = 3  # a single wrapping folder
    out = []
    for info, path in zip(files, paths):
        if len(path.parts) != depth:
            raise DecodeError(f"{info.filename!r} is not inside a class folder; expected one folder per class "
                              "holding its images (class/image.png), optionally inside one top-level folder")
        out.append((path.parts[-2], info))
    return out


def _open_image(source: Any, name: str, limits: DecodeLimits, load: bool = True) -> Any:
    """An image from bytes or a file object; with `load=False` only its header is read (size, mode), which is
    how an upload is checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > limits.max_pixels:
            raise DecodeError(f"{name!r} has {image.width}x{image.height} pixels; at most {limits.max_pixels} are "
                              "accepted per image")
        if load:
            image.load()
    except DecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"{name!r} is not a readable image ({exc})") from None
    return image


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # a CRC error, an encrypted member
        raise DecodeError(f"{info.filename!r} cannot be read from the zip ({exc})") from None


@dataclass(frozen=True)
class ImageZipPlan:
    """What `scan_image_zip` found: every member checked, nothing decoded yet."""

    members: tuple[tuple[str, zipfile.ZipInfo], ...]
    class_names: tuple[str, ...]
    labels: tuple[int, ...]
    grey: bool
    shape: tuple[int, int, int]  # (channels, height, width) once decoded


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DecodeError(f"the upload is not a zip archive ({exc})") from None


def scan_image_zip(zip_path: Path, *, resize: tuple[int, int] | None = None,
                   limits: DecodeLimits = DecodeLimits()) -> ImageZipPlan:
    """Every check of an ImageFolder zip that can be made without decoding pixels (the layout, the members'
    paths and sizes, their suffixes, the classes and their counts, each image's header: format, mode and size),
    so that a web request refuses a bad upload at once and decoding is left to a worker. Raises DecodeError."""
    with _open_zip(zip_path) as archive:
        members = _class_layout(_safe_members(archive, limits))
        for _, info in members:
            if not info.filename.lower().endswith(IMAGE_SUFFIXES):
                raise DecodeError(f"{info.filename!r} is not an image; accepted: "
                                  f"{', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}")
        class_names = sorted({c for c, _ in members})
        labels = [class_names.index(c) for c, _ in members]
        _check_classes(labels, class_names, "images", limits)
        modes, sizes = set(), Counter()
        for _, info in members:
            with _open_image(_read_member(archive, info), info.filename, limits, load=False) as image:
                modes.add(image.mode)
                sizes[(image.height, image.width)] += 1
    if resize is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for (h, w), _ in sizes.most_common(3))
        (h, w), _ = sizes.most_common(1)[0]
        raise DecodeError(f"the images have {len(sizes)} different sizes ({shown}, ...); choose a resize size "
                          f"(for example {w}x{h}) to bring them to one")
    grey = modes <= GREY_MODES
    height, width = resize if resize is not None else next(iter(sizes))
    return ImageZipPlan(tuple(members), tuple(class_names), tuple(labels), grey, (1 if grey else 3, height, width))


def decode_image_zip(zip_path: Path, target: Path, *, resize: tuple[int, int] | None = None,
                     limits: DecodeLimits = DecodeLimits(), title: str = "",
                     check: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Decode an ImageFolder zip (one folder per class) into `target` in the stored format; returns the manifest.

    PNG, JPEG, BMP and WebP are read with Pillow; if every image is greyscale the dataset has one channel, else
    all are converted to RGB. `resize` (height, width) resizes every image (bilinear); without it all images must
    have one size. Class names are the folder names, sorted. Any problem raises DecodeError and leaves nothing
    on disk; nothing is extracted, members are read from the archive into memory. `check` runs before each image
    (a worker's lease: it raises to stop, leaving nothing on disk either).
    """
    from PIL import Image

    plan = scan_image_zip(zip_path, resize=resize, limits=limits)
    arrays = []
    with _open_zip(zip_path) as archive:
        for _, info in plan.members:
            check()
            im = _open_image(_read_member(archive, info), info.filename, limits)
            im = im.convert("L" if plan.grey else "RGB")
            if resize is not None and (im.height, im.width) != tuple(resize):
                im = im.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
            arrays.append(a[None] if plan.grey else a.transpose(2, 0, 1))
    x = np.stack(arrays)
    meta = {"title": title, "source": "image zip", "resize": list(resize) if resize else None}
    save_decoded(target, "image", x, np.asarray(plan.labels, dtype=np.int64), plan.class_names, meta)
    return load_decoded(target).manifest


# CSV tables -------------------------------------------------------------------------------------------------
def _label_order(values: list[str]) -> list[str]:
    """Class names sorted as numbers when every label is one (2 before 10), as text otherwise."""
    unique = sorted(set(values))
    try:
        numbers = {v: float(v) for v in unique}
    except ValueError:
        return unique
    return sorted(unique, key=lambda v: numbers[v])


@dataclass(frozen=True)
class ParsedCsv:
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    features: list[str]


def parse_csv(csv_path: Path, *, label: str, limits: DecodeLimits = DecodeLimits(),
              max_bytes: int = 512 * 1024**2, check: Callable[[], None] = lambda: None) -> ParsedCsv:
    """Read a CSV with a header row as a table: the column named `label` holds the classes (numbers or text);
    every other column must be a finite number in every row. Writes nothing; raises DecodeError. `check` runs
    every 1024 rows (it may raise to stop)."""
    path = Path(csv_path)
    if path.stat().st_size > max_bytes:
        raise DecodeError(f"the CSV is {path.stat().st_size / 1024**2:.0f} MiB; at most "
                          f"{max_bytes / 1024**2:.0f} MiB is accepted")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"the CSV is not UTF-8 text (byte {exc.start}); save it as UTF-8 and upload again") \
            from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise DecodeError(f"the CSV cannot be parsed ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DecodeError("the CSV is empty")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise DecodeError(f"there is no column {label!r}; the columns are {', '.join(map(repr, header))}")
    col = header.index(label)
    features = [h for i, h in enumerate(header) if i != col]
    if not features:
        raise DecodeError("the CSV has no feature columns besides the label")
    x = np.empty((len(rows) - 1, len(features)), dtype=np.float32)
    labels = []
    for r, row in enumerate(rows[1:], start=2):
        if r % 1024 == 0:
            check()
        if len(row) != len(header):
            raise DecodeError(f"row {r} has {len(row)} values; the header has {len(header)}")
        labels.append(row[col].strip())
        values = [v for i, v in enumerate(row) if i != col]
        for j, value in enumerate(values):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DecodeError(f"column {features[j]!r} is not numeric: row {r} holds {value!r}; feature columns"
                                  " must hold numbers in every row")
            x[r - 2, j] = number
    class_names = _label_order(labels)
    y = np.asarray([class_names.index(v) for v in labels], dtype=np.int64)
    _check_classes(list(y), class_names, "rows", limits)
    return ParsedCsv(x, y, class_names, features)


def decode_csv(csv_path: Path, target: Path, *, label: str, limits: DecodeLimits = DecodeLimits(),
               title: str = "", max_bytes: int = 512 * 1024**2, check: Callable[[], None] = lambda: None
               ) -> dict[str, Any]:
    """Decode a CSV (`parse_csv`) into `target` as a table dataset; returns the manifest. Any problem raises
    DecodeError and leaves nothing on disk; so does `check` raising (`parse_csv`)."""
    parsed = parse_csv(csv_path, label=label, limits=limits, max_bytes=max_bytes, check=check)
    meta = {"title": title, "source": "csv", "label_column": label, "feature_names": parsed.features}
    save_decoded(target, "table", parsed.x, parsed.y, parsed.class_names, meta)
    return load_decoded(target).manifest


# preview ----------------------------------------------------------------------------------------------------
def _sample_view(kind: str, x: np.ndarray, feature_names: list[str] | None) -> Any:
    """One sample as a page shows it: a PNG data URI for an image, values for a signal or a row."""
    if kind == "image":
        from PIL import Image

        if x.dtype != np.uint8:  # a generated built-in keeps floats in [0, 1]
            x = np.clip(np.asarray(x, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    if kind == "table" and feature_names:
        return {name: float(v) for name, v in zip(feature_names, x)}
    return np.round(x.astype(np.float64), 4).tolist()


def dataset_preview(folder: Path, samples_per_class: int = 3) -> dict[str, Any]:
    """What a dataset page shows: kind, shape, classes, counts per class in each split (the split every
    experiment uses) and a few training samples of each class. JSON-safe."""
    decoded = load_decoded(folder)
    names = list(decoded.class_names)
    train, val, test = dataset_splits(decoded.y, None if decoded.test is None else decoded.test[1])
    test_y = decoded.y if decoded.test is None else decoded.test[1]
    count = lambda ys: [int(c) for c in np.bincount(ys, minlength=len(names))]  # noqa: E731
    feature_names = decoded.manifest.get("feature_names")
    samples = {name: [_sample_view(decoded.kind, decoded.x[i], feature_names)
                      for i in train[decoded.y[train] == c][:samples_per_class]] for c, name in enumerate(names)}
    return {"kind": decoded.kind, "input_shape": decoded.manifest["input_shape"], "class_names": names,
            "counts": {"train": count(decoded.y[train]), "val": count(decoded.y[val]), "test": count(test_y[test])},
            "feature_names": feature_names, "samples": samples}
