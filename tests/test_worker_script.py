"""scripts/worker.sh: which Celery workers it starts for the GPUs it finds, and how it stops them."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "worker.sh"
# Settings of the script a developer's shell might carry into the test.
_SCRIPT_ENV = ("CUDA_VISIBLE_DEVICES", "NAS_WORKER_QUEUES", "NAS_GPU_QUEUE", "NAS_CPU_QUEUE", "CONCURRENCY",
               "NAS_TORCH_THREADS", "NAS_WORKER_ARGS", "NAS_PYTHON", "NAS_WORKER_DRY_RUN")
TWO_GPUS = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1b)\n"
            "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2c3d)\n")


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _fake_nvidia_smi(bin_dir: Path, output: str, status: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    _executable(bin_dir / "nvidia-smi", f"#!/bin/sh\nprintf '%s' '{output}'\nexit {status}\n")


def _env(bin_dir: Path, path: str | None = None, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRIPT_ENV}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH'] if path is None else path}"
    env.update(settings)
    return env


def _dry_run(env: dict[str, str]) -> list[str]:
    done = subprocess.run(["bash", str(SCRIPT)], env={**env, "NAS_WORKER_DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_it_starts_one_pinned_worker_per_gpu_that_nvidia_smi_lists(tmp_path):
    _fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    assert _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py")) == [
        "CUDA_VISIBLE_DEVICES=0 py -m celery -A webapp worker --loglevel=INFO --concurrency=1 -n gpu0@%h -Q gpu,cpu",
        "CUDA_VISIBLE_DEVICES=1 py -m celery -A webapp worker --loglevel=INFO --concurrency=1 -n gpu1@%h -Q gpu,cpu",
    ]


def test_queue_names_and_extra_options_come_from_the_environment(tmp_path):
    _fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    lines = _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py", NAS_GPU_QUEUE="train", NAS_CPU_QUEUE="light",
                          NAS_WORKER_ARGS="--max-tasks-per-child=10 --without-gossip"))
    assert [line.split(" -Q ")[1] for line in lines] == ["train,light --max-tasks-per-child=10 --without-gossip"] * 2
    only_gpu = _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py", NAS_WORKER_QUEUES="gpu"))
    assert [line.split(" -Q ")[1] for line in only_gpu] == ["gpu", "gpu"]


def test_cuda_visible_devices_chooses_the_gpus(tmp_path):
    _fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    lines = _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py", CUDA_VISIBLE_DEVICES="1,3"))
    assert [line.split(" py ")[0] for line in lines] == ["CUDA_VISIBLE_DEVICES=1", "CUDA_VISIBLE_DEVICES=3"]
    assert [line.split(" -n ")[1].split()[0] for line in lines] == ["gpu1@%h", "gpu3@%h"]


@pytest.mark.parametrize("nvidia_smi", [("", 0), ("NVIDIA-SMI has failed: no driver\n", 9)],
                         ids=["lists-nothing", "fails"])
def test_without_a_gpu_it_starts_one_cpu_worker_on_both_queues(tmp_path, nvidia_smi):
    _fake_nvidia_smi(tmp_path / "bin", *nvidia_smi)
    assert _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py", CONCURRENCY="3", NAS_TORCH_THREADS="2")) == [
        "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "
        "py -m celery -A webapp worker --loglevel=INFO --concurrency=3 -n cpu@%h -Q gpu,cpu",
    ]


def test_an_empty_cuda_visible_devices_hides_the_gpus(tmp_path):
    _fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    assert _dry_run(_env(tmp_path / "bin", NAS_PYTHON="py", CUDA_VISIBLE_DEVICES="")) == [
        "py -m celery -A webapp worker --loglevel=INFO --concurrency=1 -n cpu@%h -Q gpu,cpu",
    ]


@pytest.mark.parametrize("count, workers", [("2", ["gpu0@%h", "gpu1@%h"]), ("0", ["cpu@%h"])])
def test_without_nvidia_smi_it_asks_pytorch_how_many_gpus(tmp_path, count, workers):
    # A PATH holding only the tools the script uses, so a real nvidia-smi on this machine stays out of sight.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "tr", "grep", "sed", "seq"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    python = _executable(tmp_path / "python", f"#!/bin/sh\necho {count}\n")
    lines = _dry_run(_env(bin_dir, path="", NAS_PYTHON=str(python)))
    assert [line.split(" -n ")[1].split()[0] for line in lines] == workers


# A stand-in for `python -m celery worker`: notes that it started and which signal stopped it.
FAKE_CELERY = """#!/bin/sh
trap 'echo "$CUDA_VISIBLE_DEVICES TERM" >> "$LOG"; exit 0' TERM
echo "$CUDA_VISIBLE_DEVICES started" >> "$LOG"
if [ "$CUDA_VISIBLE_DEVICES" = "$CRASH_ON" ]; then sleep 1; exit 3; fi
while :; do sleep 0.1; done
"""


def _start(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen, Path]:
    _fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    log = tmp_path / "log"
    python = _executable(tmp_path / "python", FAKE_CELERY)
    env = _env(tmp_path / "bin", NAS_PYTHON=str(python), LOG=str(log), **settings)
    script = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while (not log.exists() or log.read_text().count("started") < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    return script, log


def test_sigterm_is_passed_to_every_worker_and_it_exits_once_they_have(tmp_path):
    script, log = _start(tmp_path)
    try:
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=20) == 0
    finally:
        script.kill()
    assert sorted(log.read_text().splitlines()) == ["0 TERM", "0 started", "1 TERM", "1 started"]


def test_a_worker_that_exits_on_its_own_stops_the_others_with_its_status(tmp_path):
    script, log = _start(tmp_path, CRASH_ON="1")
    try:
        assert script.wait(timeout=20) == 3
    finally:
        script.kill()
    assert sorted(log.read_text().splitlines()) == ["0 TERM", "0 started", "1 started"]
