import argparse
import json
import subprocess
import sys
from pathlib import Path

from nasjobs.benchmeta import bench_meta

ROOT = Path(__file__).resolve().parents[2]
MACHINE_KEYS = {"hostname", "cpus", "torch_threads", "device", "device_name", "torch", "python", "platform"}


def assert_is_meta(meta: dict) -> None:
    assert {"commit", "dirty", "command", "argv", "options", "components", "machine"} <= set(meta)
    if (ROOT / ".git").exists():  # a checkout; an exported tree has no commit to name
        assert len(meta["commit"]) == 40 and isinstance(meta["dirty"], bool)
    assert MACHINE_KEYS <= set(meta["machine"])


def test_the_record_names_commit_command_options_components_and_machine():
    args = argparse.Namespace(steps=3, json=True)
    meta = bench_meta(args, device="cpu", components={"settings": {"lr": 0.05}},
                      argv=["python", "bench/x.py", "--steps", "3"])
    assert_is_meta(meta)
    assert meta["options"] == {"steps": 3, "json": True} and meta["components"] == {"settings": {"lr": 0.05}}
    assert meta["command"] == "python bench/x.py --steps 3" and meta["machine"]["device"] == "cpu"
    json.dumps(meta)


def run_json(*command: str) -> dict:
    done = subprocess.run([sys.executable, *command, "--json"], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(done.stdout)


def test_the_proposal_bench_writes_the_record_with_its_resolved_options():
    report = run_json("-m", "nasjobs.bench", "proposals", "--points", "20", "--window", "5", "--strategies", "random")
    assert_is_meta(report["meta"])
    assert report["meta"]["options"]["window"] == 5 and report["meta"]["options"]["seed"] == 0  # a default
    assert report["meta"]["components"]["strategies"]["random"]["max_attempts"] == 1000
    assert "-m nasjobs.bench proposals" in report["meta"]["command"]


def test_the_training_step_bench_runs_as_a_script_and_reports_its_figures_at_the_top():
    report = run_json("bench/train_step.py", "--steps", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu")
    assert report["platform_images_per_s"] > 0 and report["handwritten_images_per_s"] > 0
    assert report["ratio_to_handwritten"] > 0 and report["same_weights"] is True
    assert_is_meta(report["meta"])
    assert report["meta"]["options"]["batch_size"] == 64 and report["meta"]["machine"]["torch_threads"] == 1
    assert report["meta"]["components"]["settings"]["grad_clip"] == 5.0
