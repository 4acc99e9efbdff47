"""The worked example of docs/extending.md, installed as a real package and run through the platform."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"


def write_example(dest: Path) -> Path:
    text = DOC.read_text()
    files = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    assert {name for name, _ in files} == {"myteam_nas/myteam_nas/__init__.py", "myteam_nas/pyproject.toml"}
    for name, body in files:
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return dest / "myteam_nas"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("extending")
    package = write_example(tmp)
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True)
    return site


def test_an_installed_package_adds_a_strategy_that_searches(installed_example):
    code = """
import tempfile, torch
from nasjobs.strategies import STRATEGIES
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner
from nasjobs.artifacts import ArtifactStore
assert "hill_climb" in STRATEGIES.names(), STRATEGIES.names()
spec = ExperimentSpec("digits", "chain_cnn", "hill_climb", "train", budget=4, epochs=1, seed=0,
                      options={"strategy": {"restart": "0.2"}})
store = MemoryStore()
with tempfile.TemporaryDirectory() as tmp:
    SearchRunner(spec, store, ArtifactStore(tmp, 0), torch.device("cpu")).run()
assert len(store.trials) == 4 and store.best is not None
print("ok", [t.arch_key for t in store.trials])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{installed_example}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_the_new_strategy_appears_in_the_form_with_its_options(installed_example, monkeypatch):
    from nasjobs.strategies import STRATEGIES
    from webapp.experiments.forms import ExperimentForm, option_field_name

    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.setattr(STRATEGIES, "_loaded_entry_points", False)
    monkeypatch.setattr(STRATEGIES, "_items", dict(STRATEGIES._items))
    form = ExperimentForm()
    assert ("hill_climb", "Hill climbing (our team)") in form.fields["strategy"].choices
    assert option_field_name("strategy", "hill_climb", "restart") in form.fields
