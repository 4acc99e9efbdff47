"""Datasets: uploads decoded into the stored format (and every bad upload refused, leaving nothing behind), the
fixed splits, mnist1d generated offline, torchvision files on disk, and which space and estimator fit which kind."""
from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nasjobs.datasets import DATASETS, build_dataset, dataset_splits, load_decoded, load_mnist1d, save_decoded
from nasjobs.search import ExperimentSpec, SpecError, validate_spec
from nasjobs.uploads import DecodeError, DecodeLimits, dataset_preview, decode_csv, decode_image_zip
from nasjobs.vision import load_torchvision, torchvision_availability
from tests.datafiles import BAD_CSVS, BAD_ZIPS, blobs, image_folder, write_zip


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("NAS_DATA_DIR", str(root))
    return root


@pytest.fixture
def stored(data_dir):
    """Installs a resolver like the webapp's: `upload:<folder>` is the folder under NAS_DATA_DIR/uploads."""
    DATASETS.install_resolver(lambda name: data_dir / "uploads" / name.split(":", 1)[1]
                              if name.startswith("upload:") and (data_dir / "uploads" / name[7:]).exists() else None)
    yield data_dir / "uploads"
    DATASETS.install_resolver(None)


def assert_nothing_written(folder: Path) -> None:
    assert not folder.exists() or not any(folder.iterdir()), sorted(folder.rglob("*"))


# image zips ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "flowers/"])
def test_an_image_folder_zip_decodes_with_or_without_a_wrapping_folder(tmp_path, prefix):
    archive = write_zip(tmp_path / "u.zip", {**image_folder({"rose": 4, "tulip": 3}, prefix), "__MACOSX/._x": b"",
                                             f"{prefix}rose/.DS_Store": b"junk"})
    manifest = decode_image_zip(archive, tmp_path / "store" / "ds")
    assert manifest["kind"] == "image" and manifest["class_names"] == ["rose", "tulip"]
    assert manifest["input_shape"] == [1, 5, 6] and manifest["count"] == 7
    decoded = load_decoded(tmp_path / "store" / "ds")
    assert decoded.x.dtype == np.uint8 and decoded.y.tolist().count(0) == 4
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["ds"]  # no temporary folder left over


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "WEBP"])
def test_colour_images_of_each_format_become_three_channels(tmp_path, fmt):
    members = image_folder({"a": 3, "b": 3}, size=(4, 4), mode="RGB", fmt=fmt)
    manifest = decode_image_zip(write_zip(tmp_path / "u.zip", members), tmp_path / "ds")
    assert manifest["input_shape"] == [3, 4, 4]


def test_mixed_sizes_are_refused_with_a_resize_offer_and_accepted_with_a_resize(tmp_path):
    members = {**image_folder({"a": 3}, size=(8, 8)), **image_folder({"b": 3}, size=(10, 6))}
    archive = write_zip(tmp_path / "u.zip", members)
    with pytest.raises(DecodeError, match="resize"):
        decode_image_zip(archive, tmp_path / "store" / "ds")
    assert_nothing_written(tmp_path / "store")
    manifest = decode_image_zip(archive, tmp_path / "store" / "ds", resize=(8, 8))
    assert manifest["input_shape"] == [1, 8, 8] and manifest["resize"] == [8, 8]


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_a_bad_zip_is_one_readable_error_and_leaves_nothing_on_disk(tmp_path, case):
    make, message = BAD_ZIPS[case]
    archive = make(tmp_path / "upload.zip")
    with pytest.raises(DecodeError, match=message):
        decode_image_zip(archive, tmp_path / "store" / "ds")
    assert_nothing_written(tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]  # nothing extracted beside it either


def test_the_size_caps_are_parameters(tmp_path):
    archive = write_zip(tmp_path / "u.zip", image_folder({"a": 3, "b": 3}), zipfile.ZIP_STORED)
    with pytest.raises(DecodeError, match="MiB"):
        decode_image_zip(archive, tmp_path / "ds", limits=DecodeLimits(max_total_bytes=100))
    with pytest.raises(DecodeError, match="pixels"):
        decode_image_zip(archive, tmp_path / "ds", limits=DecodeLimits(max_pixels=10))
    assert not (tmp_path / "ds").exists()


# CSV tables ---------------------------------------------------------------------------------------------------
def test_a_csv_decodes_with_text_or_number_labels(tmp_path):
    rows = "".join(f"{i},{i * 0.5},{['cat', 'dog'][i % 2]}\n" for i in range(8))
    (tmp_path / "t.csv").write_text("a,b,kind\n" + rows)
    manifest = decode_csv(tmp_path / "t.csv", tmp_path / "ds", label="kind")
    assert manifest["kind"] == "table" and manifest["class_names"] == ["cat", "dog"]
    assert manifest["input_shape"] == [2] and manifest["feature_names"] == ["a", "b"]
    decoded = load_decoded(tmp_path / "ds")
    assert decoded.x[3].tolist() == [3.0, 1.5] and decoded.y[3] == 1
    (tmp_path / "n.csv").write_text("y,f\n" + "".join(f"{[10, 2][i % 2]},{i}\n" for i in range(6)))
    assert decode_csv(tmp_path / "n.csv", tmp_path / "n", label="y")["class_names"] == ["2", "10"]


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_a_bad_csv_is_one_readable_error_and_leaves_nothing_on_disk(tmp_path, case):
    content, message = BAD_CSVS[case]
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(DecodeError, match=message):
        decode_csv(tmp_path / "t.csv", tmp_path / "store" / "ds", label="label")
    assert_nothing_written(tmp_path / "store")


# the stored format, splits and the resolver ------------------------------------------------------------------
def test_splits_are_stratified_disjoint_and_fixed():
    _, y = blobs(50, 4)
    parts = dataset_splits(y)
    assert [len(p) for p in parts] == [120, 40, 40]
    assert sum(map(len, parts)) == len(set(np.concatenate(parts)))  # disjoint and covering
    for part in parts:
        assert np.bincount(y[part]).tolist() == [len(part) // 4] * 4
    assert all((a == b).all() for a, b in zip(parts, dataset_splits(y)))


def test_normalisation_uses_the_training_split_alone():
    x, y = blobs()
    ds = build_dataset("t", "table", x, y, ["a", "b", "c"])
    assert torch.allclose(ds.train.x.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(ds.train.x.std(0, unbiased=False), torch.ones(5), atol=1e-4)
    train = dataset_splits(y)[0]
    expected_val = (x[dataset_splits(y)[1]] - x[train].mean(0)) / x[train].std(0)
    assert np.allclose(ds.val.x.numpy(), expected_val, atol=1e-4)


def test_a_stored_dataset_reaches_the_engine_through_the_resolver(stored, data_dir):
    x, y = blobs()
    save_decoded(stored / "7", "table", x, y, ["a", "b", "c"], {"title": "Blobs"})
    entry = DATASETS.get("upload:7")
    assert entry.kind == "table" and entry.title == "Blobs" and "upload:7" in DATASETS
    ds = entry()
    assert ds.input_shape == (5,) and ds.num_classes == 3 and (len(ds.train), len(ds.val), len(ds.test)) == (72, 24, 24)
    assert "upload:8" not in DATASETS and "upload:7" not in DATASETS.names()
    with pytest.raises(FileExistsError):
        save_decoded(stored / "7", "table", x, y, ["a", "b", "c"])


def test_a_resolver_may_not_point_outside_the_data_folder(data_dir, tmp_path):
    outside = save_decoded(tmp_path / "elsewhere", "table", *blobs(), ["a", "b", "c"])
    DATASETS.install_resolver(lambda name: outside)
    try:
        with pytest.raises(ValueError, match="outside NAS_DATA_DIR"):
            DATASETS.get("upload:1")
    finally:
        DATASETS.install_resolver(None)


def test_the_preview_counts_each_class_in_each_split_and_shows_samples(tmp_path):
    decode_image_zip(write_zip(tmp_path / "u.zip", image_folder({"a": 5, "b": 10})), tmp_path / "ds")
    preview = dataset_preview(tmp_path / "ds", samples_per_class=2)
    assert preview["class_names"] == ["a", "b"]
    assert preview["counts"] == {"train": [3, 6], "val": [1, 2], "test": [1, 2]}
    assert [len(v) for v in preview["samples"].values()] == [2, 2]
    assert preview["samples"]["a"][0].startswith("data:image/png;base64,")


# built-ins and torchvision -----------------------------------------------------------------------------------
def test_mnist1d_is_generated_offline_and_cached(data_dir, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    load_mnist1d.cache_clear()
    ds = load_mnist1d()
    assert ds.kind == "signal" and ds.input_shape == (1, 40) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3200, 800, 1000)
    assert (data_dir / "builtin").is_dir()
    load_mnist1d.cache_clear()
    again = load_mnist1d()  # read back from the cache
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    load_mnist1d.cache_clear()


def idx_file(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = {3: 0x0803, 1: 0x0801}[array.ndim]
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_mnist_is_read_from_its_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 30), ("t10k", 10)):
        idx_file(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        idx_file(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 3).astype(np.uint8))
    ds = load_torchvision("mnist", tmp_path, download=False)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.class_names[0].startswith("0")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 10)
    assert ds.test.y.tolist() == [i % 3 for i in range(10)]
    (mnist,) = [a for a in torchvision_availability(tmp_path) if a.name == "mnist"]
    assert mnist.available and mnist.reason == ""


def test_cifar10_is_read_from_its_python_batches(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": [i % 2 for i in range(10)]}
        (folder / name).write_bytes(pickle.dumps(batch))
        sums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    # The files are the test's own, so their checksums stand in for the published ones.
    monkeypatch.setattr(CIFAR10, "train_list", [[n, sums[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, sums[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": hashlib.md5(pickle.dumps(meta)).hexdigest()})
    ds = load_torchvision("cifar10", tmp_path, download=False)
    assert ds.input_shape == (3, 32, 32) and ds.class_names[:2] == ("class0", "class1")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 10)


def test_missing_torchvision_files_are_named_and_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.delenv("NAS_DATA_DOWNLOAD", raising=False)
    status = {a.name: a for a in torchvision_availability(tmp_path)}
    assert set(status) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"}
    assert not any(a.available for a in status.values())
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in status["cifar10"].reason
    assert str(tmp_path / "train_32x32.mat") in status["svhn"].reason
    with pytest.raises(FileNotFoundError, match="FashionMNIST"):
        load_torchvision("fashion-mnist", tmp_path, download=False)
    assert not any(tmp_path.iterdir())


# kinds -------------------------------------------------------------------------------------------------------
def spec(dataset: str, space: str, estimator: str = "train", strategy: str = "random",
         options: dict | None = None) -> ExperimentSpec:
    return ExperimentSpec(dataset, space, strategy, estimator, budget=1, epochs=1, seed=0, options=options or {})


@pytest.mark.parametrize("experiment, field, message", [
    (spec("mnist1d", "nb201"), "space", "nb201 space builds networks for image or nb201 data; 'mnist1d' is signal"),
    (spec("mnist1d", "darts"), "space", "darts space builds networks for image data"),
    (spec("mnist1d", "chain_cnn"), "space", "square_kernels"),
    (spec("nb201-cifar10", "mlp"), "space", "'nb201-cifar10' is nb201 data"),
    (spec("nb201-cifar10", "nb201"), "estimator", "only the benchmark estimator"),
    (spec("digits", "nb201", "benchmark"), "estimator", "nb201-cifar10"),
    (spec("nb201-cifar10", "nb201", "benchmark", "darts"), "strategy", "lookup table"),
    (spec("mnist1d", "mlp", options={"estimator": {"flip": True}}), "estimator", "augment images"),
    (spec("svhn", "chain_cnn"), "dataset", "train_32x32.mat"),
    (spec("mnist1d", "chain_cnn", "weight_sharing", options={"space": {"square_kernels": True}}), "estimator",
     "image supernet"),
])
def test_incompatible_pairs_are_refused_naming_the_conflict(experiment, field, message, monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_DATA_ROOT", str(tmp_path))
    with pytest.raises(SpecError, match=message.replace("(", r"\(")) as refused:
        validate_spec(experiment)
    assert refused.value.field == field


def test_a_stored_table_is_refused_by_image_spaces_and_accepted_by_mlp(stored):
    save_decoded(stored / "3", "table", *blobs(), ["a", "b", "c"])
    with pytest.raises(SpecError, match="chain_cnn space builds networks for image or signal data; 'upload:3' is "
                                        "table data"):
        validate_spec(spec("upload:3", "chain_cnn"))
    assert validate_spec(spec("upload:3", "mlp")).dataset == "upload:3"
    assert validate_spec(spec("mnist1d", "chain_cnn", options={"space": {"square_kernels": True}})).dataset == "mnist1d"
