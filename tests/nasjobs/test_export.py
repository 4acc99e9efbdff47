"""A trial exported as a torch.export zip or an ONNX file runs without the platform, takes raw samples and computes
what the platform's network computes on the preprocessed ones."""
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import dataset_splits, load_digits
from nasjobs.export import EXPORT_FORMATS, export_file
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner

CPU = torch.device("cpu")
SMALL = {
    "chain_cnn": {"max_layers": 3, "filters": "8,16", "strides": "1,2"},
    "nb201": {"channels": 4, "cells": 1},
    "darts": {"init_channels": 4, "layers": 3},
}


def unpack(path: Path) -> tuple[torch.nn.Module, dict, dict, str]:
    """What a user does with the zip: torch.export.load and torch.load, nothing of this platform."""
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["README.txt", "metadata.json", "model.pt2", "weights.pt"]
        with archive.open("model.pt2") as f:
            model = torch.export.load(f).module()
        with archive.open("weights.pt") as f:
            weights = torch.load(f, weights_only=True)
        return model, weights, json.loads(archive.read("metadata.json")), archive.read("README.txt").decode()


def train_one(spec: ExperimentSpec, tmp_path: Path):
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU).run()
    [trial] = store.trials
    return trial, torch.load(trial.weights_path, weights_only=True)


def reference_network(spec: ExperimentSpec, arch_key: str, state, tmp_path: Path) -> torch.nn.Module:
    runner = SearchRunner(spec, MemoryStore(), ArtifactStore(tmp_path, 2), CPU)
    network = runner.estimator.network(runner.space.from_str(arch_key))
    network.load_state_dict(state)
    return network.eval()


def raw_digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits' test split as scikit-learn ships the pixels (counts 0..16), indexed as the platform splits."""
    bunch = sklearn_digits()
    test = dataset_splits(bunch.target)[2]
    return torch.from_numpy(bunch.images[test, None].astype(np.float32)), torch.from_numpy(bunch.target[test])


def test_a_trained_trial_exported_reproduces_its_test_accuracy_from_raw_scikit_learn_pixels(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=3, seed=2, top_k=1,
                          options={"space": SMALL["chain_cnn"]})
    trial, state = train_one(spec, tmp_path)
    platform = reference_network(spec, trial.arch_key, state, tmp_path)
    test = load_digits().test
    with torch.no_grad():
        test_acc = (platform(test.x).argmax(1) == test.y).float().mean().item()
    assert test_acc > 0.5  # a real trained network, so a wrong preprocessing shows
    model, _, info, readme = unpack(export_file(spec, trial.arch_key, state, "torch", tmp_path / "m.zip"))
    x, y = raw_digits_test()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == test_acc
        assert torch.equal(model(x), platform(test.x))  # bit for bit the preprocessing training saw
        naive = (model(x / 16).argmax(1) == y).float().mean().item()  # scaled "as usual" by hand: wrong
    assert naive < test_acc - 0.2
    assert info["input"]["dtype"] == "float32" and info["input"]["shape"] == ["batch", 1, 8, 8]
    assert info["input"]["preprocessing"]["divisor"] == 16.0 and info["input"]["channels"] == ["grey"]
    assert info["classes"] == [str(d) for d in range(10)] and info["output"]["shape"] == ["batch", 10]
    assert "0..16" in readme and "float32 tensor of shape (batch, 1, 8, 8)" in readme and "do not scale" in readme


def test_an_image_of_uint8_pixels_is_divided_by_255_inside(tmp_path):
    from nasjobs.datasets import DATASETS, DatasetEntry, load_stored, save_decoded

    x = np.random.default_rng(0).integers(0, 256, size=(60, 3, 6, 6), dtype=np.uint8)
    labels = np.arange(60) % 3
    folder = save_decoded(tmp_path / "data" / "u8", "image", x, labels, ["cat", "dog", "owl"])
    entry = DatasetEntry("u8-test", "image", "u8", lambda: load_stored("u8-test", folder))
    DATASETS._items["u8-test"] = entry
    try:
        spec = ExperimentSpec("u8-test", "chain_cnn", "random", "train", budget=1, epochs=1, seed=0)
        key = sampled_key(spec)
        model, weights, info, readme = unpack(export_file(spec, key, None, "torch", tmp_path / "m.zip"))
        assert info["input"]["dtype"] == "uint8" and info["input"]["channels"] == ["red", "green", "blue"]
        assert info["classes"] == ["cat", "dog", "owl"] and "0..255" in readme
        network = reference_network(spec, key, weights, tmp_path)
        test = torch.from_numpy(x[dataset_splits(labels)[2]])
        with torch.no_grad():
            assert torch.equal(model(test), network(entry().test.x))
    finally:
        DATASETS._items.pop("u8-test", None)


def sampled_key(spec: ExperimentSpec) -> str:
    import random

    space = spec.component_class("space")()
    return space.to_str(space.sample(random.Random(0)))


@pytest.mark.parametrize("space", ["chain_cnn", "darts"])
def test_the_onnx_file_passes_the_checker_and_matches_pytorch_for_any_batch(space, tmp_path):
    spec = ExperimentSpec("digits", space, "random", "train", budget=1, epochs=1, seed=2, top_k=1,
                          options={"space": SMALL[space]})
    trial, state = train_one(spec, tmp_path)
    path = export_file(spec, trial.arch_key, state, "onnx", tmp_path / "m.onnx", {"val_acc": trial.val_acc})
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    [given], [out] = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("raw", "tensor(float)", [1, 8, 8]) and out.name == "logits"
    info = json.loads(session.get_modelmeta().custom_metadata_map["nasboard"])
    assert info["arch"] == trial.arch_key and info["trained"] is True and info["val_acc"] == trial.val_acc
    platform = reference_network(spec, trial.arch_key, state, tmp_path)
    x, _ = raw_digits_test()
    for batch in (1, 7, len(x)):
        [logits] = session.run(None, {"raw": x[:batch].numpy()})
        with torch.no_grad():
            expected = platform(load_digits().test.x[:batch]).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert (np.argmax(session.run(None, {"raw": x.numpy()})[0], 1) == platform(load_digits().test.x).argmax(1)
            .numpy()).mean() == 1.0


@pytest.mark.parametrize("space", sorted(SMALL))
def test_a_trained_trial_exports_to_a_program_that_matches_it_for_any_batch(space, tmp_path):
    spec = ExperimentSpec("digits", space, "random", "train", budget=1, epochs=1, seed=2, top_k=1,
                          options={"space": SMALL[space]})
    trial, state = train_one(spec, tmp_path)
    model, weights, info, readme = unpack(export_file(spec, trial.arch_key, state, "torch", tmp_path / "m.zip",
                                                      {"val_acc": trial.val_acc}))
    assert info["arch"] == trial.arch_key and info["trained"] is True and info["val_acc"] == trial.val_acc
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10
    assert "torch.export.load" in readme and trial.arch_key in readme
    reference = reference_network(spec, trial.arch_key, state, tmp_path)
    assert all(torch.equal(weights[k], state[k]) for k in state)
    x, _ = raw_digits_test()
    test = load_digits().test
    for batch in (1, 7):
        with torch.no_grad():
            assert torch.allclose(model(x[:batch]), reference(test.x[:batch]), atol=1e-5)


def test_a_proxy_trained_at_lower_width_exports_at_that_width(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "low_fidelity", budget=1, epochs=2, seed=0, top_k=1,
                          options={"space": {"max_layers": 2, "filters": "16,32"},
                                   "estimator": {"width_multiplier": 0.5}})
    trial, state = train_one(spec, tmp_path)
    model, _, info, _ = unpack(export_file(spec, trial.arch_key, state, "torch", tmp_path / "m.zip"))
    assert info["trained"] is True and model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == trial.fidelity["trained_params"] < trial.params


def test_without_weights_the_export_is_a_fresh_network_and_says_so(tmp_path):
    spec = ExperimentSpec("nb201-cifar100", "nb201", "random", "benchmark", budget=1, epochs=1, seed=0)  # a lookup
    key = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    model, _, info, readme = unpack(export_file(spec, key, None, "torch", tmp_path / "m.zip"))
    assert info["trained"] is False and "NOT trained" in readme and "looked its figures up in nb201-cifar100" in readme
    assert info["input_shape"] == [3, 32, 32] and "(batch, 3, 32, 32)" in readme
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_an_unknown_format_is_refused_and_writes_nothing(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=1, seed=0)
    with pytest.raises(KeyError, match="unknown export format 'tflite'"):
        export_file(spec, sampled_key(spec), None, "tflite", tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == [] and sorted(EXPORT_FORMATS) == ["onnx", "torch"]
