"""Files in the real upload formats, written by the tests themselves: ImageFolder zips (good and bad), CSVs (good
and bad) and separable blobs of numbers."""
from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(size: tuple[int, int], mode: str = "L", value: int = 0, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def image_folder(classes: dict[str, int], prefix: str = "", size: tuple[int, int] = (6, 5), mode: str = "L",
                 fmt: str = "PNG") -> dict[str, bytes]:
    return {f"{prefix}{cls}/{i}.{fmt.lower()}": png(size, mode, 40 * k + i, fmt)
            for k, (cls, count) in enumerate(classes.items()) for i in range(count)}


def symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in image_folder({"a": 3, "b": 3}).items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return path


BAD_ZIPS = {
    "not a zip": (lambda p: (p.write_bytes(b"PK but not really a zip"), p)[1], "not a zip"),
    "parent escape": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}), "../evil/x.png": png((6, 5))}),
                      "outside"),
    "absolute path": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}), "/tmp/a/x.png": png((6, 5))}),
                      "outside"),
    "symlink": (symlink_zip, "symbolic link"),
    "zip bomb": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}), "a/big.png": bytes(8 * 1024**2)}),
                 "zip bomb"),
    "not an image": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}), "a/notes.txt": b"hello"}),
                     "not an image"),
    "image suffix, other content": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}),
                                                            "b/fake.png": b"not a png"}), "not a readable image"),
    "one class": (lambda p: write_zip(p, image_folder({"only": 5})), "at least 2 classes"),
    "class of two": (lambda p: write_zip(p, image_folder({"a": 3, "b": 2})), "at least 3 images"),
    "loose files": (lambda p: write_zip(p, {**image_folder({"a": 3, "b": 3}), "top.png": png((6, 5))}),
                    "class folder"),
}


BAD_CSVS = {
    "not utf-8": ("a,label\n1,caf\xe9\n".encode("latin-1"), "UTF-8"),
    "non-numeric feature": (b"a,b,label\n1,x,p\n2,3,q\n1,2,p\n2,3,q\n1,2,p\n2,3,q\n", "'b' is not numeric"),
    "missing label column": (b"a,b\n1,2\n", "no column 'label'"),
    "single class": (b"a,label\n1,p\n2,p\n3,p\n4,p\n", "at least 2 classes"),
}


def blobs(n_per_class: int = 40, classes: int = 3, features: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, features))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), features))).astype(np.float32), y
