"""What every benchmark's JSON records about how it was made: commit, command line, options and machine."""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def jsonable(value: Any) -> Any:
    """Options as JSON holds them: dataclass configs as dicts, tuples as lists, anything else unknown as its str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, argparse.Namespace):
        return jsonable(vars(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The host, its CPUs, torch's thread count and the device the bench ran on (with its name)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "cpus_usable": affinity,
            "torch_threads": torch.get_num_threads(), "device": str(device), "device_name": device_name,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform()}


def bench_meta(args: argparse.Namespace | Mapping[str, Any] | None = None, *,
               device: torch.device | str | None = None, components: Mapping[str, Any] | None = None,
               argv: list[str] | None = None) -> dict[str, Any]:
    """The record a bench puts beside its figures. `args` is the parsed command line (every option with its
    default resolved), `components` the resolved configs of the engine parts it ran (spaces, strategies,
    estimators, training settings), `argv` the whole command line when a bench's `main(argv)` is called from
    code (by default the process's own, interpreter included: `python -m nasjobs.bench proposals --json`).

    `dirty` is true when tracked files differ from the commit; untracked ones are left out, since a bench's own
    output redirected into the checkout (`> bench/x.json`) exists before it runs. Call this after the run, so
    the thread count and the tree are as they were while it ran; `commit` and `dirty` are None outside git."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]) if argv is None else argv),
            "argv": list(sys.argv) if argv is None else list(argv),
            "options": jsonable(args) if args is not None else {},
            "components": jsonable(components) if components is not None else {},
            "machine": machine(device)}
