"""The MLP space: representation, edits, tokens, networks and drawings, and a real tiny search on a CSV table."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import DATASETS
from nasjobs.options import OptionError
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner
from nasjobs.spaces import SPACES, ArchParseError
from nasjobs.spaces.mlp import MLP, MLPArch, MLPConfig
from nasjobs.uploads import decode_csv

SMALL = MLP(MLPConfig(max_layers=2, widths=(16, 32), activations=("relu",), dropouts=(0.0, 0.1)))


def test_it_is_registered_for_tables():
    assert SPACES.get("mlp") is MLP and "table" in MLP.kinds


def test_the_canonical_string_round_trips_and_is_unique():
    space = MLP()
    arch = MLPArch((128, 64), "relu", 0.1, True, True)
    assert space.to_str(arch) == "128-64:relu:d0.1:bn:res"
    assert space.from_str("128-64:relu:d0.1:bn:res") == arch
    assert space.to_str(MLPArch((32,), "gelu", 0.0, False, False)) == "32:gelu"
    for bad in ("128-64:relu:d0.10", "128-64:relu:d0:bn", "100:relu", "32-64-128-64:relu", "32:softmax", "32"):
        with pytest.raises(ArchParseError):
            space.from_str(bad)


def test_mutations_and_neighbours_stay_in_the_space_and_change_the_architecture():
    rng = random.Random(0)
    arch = SMALL.sample(rng)
    for _ in range(300):
        child = SMALL.mutate(arch, rng)
        assert child != arch and SMALL.from_str(SMALL.to_str(child)) == child
        assert child in SMALL.neighbours(arch)
        arch = child
    arch = MLPArch((16,), "relu", 0.0, False, False)
    # width 16->32 (1); a second layer, 16-16, 32-16 or 16-32 (3); dropout (1), batch norm (1), skip (1)
    assert len(SMALL.neighbours(arch)) == 7


def test_tokens_round_trip_and_size_counts_every_architecture():
    rng = random.Random(1)
    seen = set()
    for _ in range(2000):
        arch = SMALL.sample(rng)
        assert SMALL.from_tokens(SMALL.to_tokens(arch)) == arch
        seen.add(arch)
    assert len(seen) == SMALL.size() == (2 + 4) * 2 * 2 * 2
    with pytest.raises(ArchParseError):
        SMALL.from_tokens([0] * 3)


def test_options_are_validated():
    with pytest.raises(OptionError):
        MLPConfig(widths=(17,))
    with pytest.raises(OptionError):
        MLPConfig(dropouts=())


def test_networks_take_rows_and_have_projections_only_where_widths_change():
    net = MLP().build(MLPArch((64, 64, 32), "gelu", 0.3, True, True), (7,), 4)
    assert net(torch.randn(5, 7)).shape == (5, 4)
    shortcuts = [block.shortcut for block in net[1:-1]]
    assert isinstance(shortcuts[1], torch.nn.Identity)
    assert [(p.in_features, p.out_features) for p in (shortcuts[0], shortcuts[2])] == [(7, 64), (64, 32)]
    plain = MLP().build(MLPArch((32,), "relu", 0.0, False, False), (1, 8, 8), 10)  # images are flattened
    assert plain(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_the_drawing_shows_each_layer_and_its_skip():
    g = MLP().describe(MLPArch((64, 32), "relu", 0.0, True, True))
    labels = dict(g.nodes)
    assert labels["fc1"] == "linear 64 · relu · BN" and labels["fc2"] == "linear 32 · relu · BN"
    assert ("input", "add1", "skip") in g.edges and ("add2", "fc", "") in g.edges


def test_a_search_trains_real_networks_on_an_uploaded_table(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 6))
    y = np.repeat(np.arange(3), 60)
    x = centres[y] + rng.normal(0, 1, (len(y), 6))
    lines = ["f1,f2,f3,f4,f5,f6,species"] + [",".join(f"{v:.4f}" for v in row) + f",{['a', 'b', 'c'][c]}"
                                             for row, c in zip(x, y)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    folder = tmp_path / "data" / "uploads" / "1"
    decode_csv(tmp_path / "table.csv", folder, label="species")
    DATASETS.install_resolver(lambda name: folder if name == "upload:1" else None)
    try:
        spec = ExperimentSpec("upload:1", "mlp", "random", "train", budget=3, epochs=8, seed=0, top_k=1)
        store = MemoryStore()
        SearchRunner(spec, store, ArtifactStore(tmp_path / "art", 1), torch.device("cpu")).run()
    finally:
        DATASETS.install_resolver(None)
    assert len(store.trials) == 3
    assert max(t.val_acc for t in store.trials) > 0.9  # three well-separated blobs; chance is 1/3
    assert store.best[1] > 0.8
