"""A trial exported as a zip runs with PyTorch alone and computes what the platform's network computes."""
import io
import json
import zipfile

import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.export import export_archive
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner

CPU = torch.device("cpu")
SMALL = {
    "chain_cnn": {"max_layers": 3, "filters": "8,16", "strides": "1,2"},
    "nb201": {"channels": 4, "cells": 1},
    "darts": {"init_channels": 4, "layers": 3},
}


def unpack(data: bytes) -> tuple[torch.nn.Module, dict, dict, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["README.txt", "architecture.json", "model.pt2", "weights.pt"]
        model = torch.export.load(io.BytesIO(archive.read("model.pt2"))).module()
        weights = torch.load(io.BytesIO(archive.read("weights.pt")), weights_only=True)
        return model, weights, json.loads(archive.read("architecture.json")), archive.read("README.txt").decode()


@pytest.mark.parametrize("space", sorted(SMALL))
def test_a_trained_trial_exports_to_a_program_that_matches_it_for_any_batch(space, tmp_path):
    spec = ExperimentSpec("digits", space, "random", "train", budget=1, epochs=1, seed=2, top_k=1,
                          options={"space": SMALL[space]})
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU).run()
    [trial] = store.trials
    state = torch.load(trial.weights_path, weights_only=True)
    model, weights, info, readme = unpack(export_archive(spec, trial.arch_key, state, {"val_acc": trial.val_acc}))
    assert info["arch"] == trial.arch_key and info["trained"] is True and info["val_acc"] == trial.val_acc
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10
    assert "torch.export.load" in readme and trial.arch_key in readme
    runner = SearchRunner(spec, MemoryStore(), ArtifactStore(tmp_path, 2), CPU)
    reference = runner.estimator.network(runner.space.from_str(trial.arch_key))
    reference.load_state_dict(state)
    reference.eval()
    assert all(torch.equal(weights[k], state[k]) for k in state)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_a_proxy_trained_at_lower_width_exports_at_that_width(tmp_path):
    spec = ExperimentSpec("digits", "chain_cnn", "random", "low_fidelity", budget=1, epochs=2, seed=0, top_k=1,
                          options={"space": {"max_layers": 2, "filters": "16,32"},
                                   "estimator": {"width_multiplier": 0.5}})
    store = MemoryStore()
    SearchRunner(spec, store, ArtifactStore(tmp_path, 1), CPU).run()
    [trial] = store.trials
    state = torch.load(trial.weights_path, weights_only=True)
    model, _, info, _ = unpack(export_archive(spec, trial.arch_key, state))
    assert info["trained"] is True and model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == trial.fidelity["trained_params"] < trial.params


def test_without_weights_the_export_is_a_fresh_network_and_says_so():
    spec = ExperimentSpec("nb201-cifar100", "nb201", "random", "benchmark", budget=1, epochs=1, seed=0)  # a lookup
    key = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    model, _, info, readme = unpack(export_archive(spec, key, None))
    assert info["trained"] is False and "NOT trained" in readme and "looked its figures up in nb201-cifar100" in readme
    assert info["input_shape"] == [3, 32, 32] and "(batch, 3, 32, 32)" in readme
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
