"""How fast DARTS search steps run, first and second order, and how much memory they take.

Fixed config: darts space, 8 init channels, 5 cells, batch 32, random 32x32x3 inputs, 10 classes.

    python bench/darts_step.py [--device cpu|cuda] [--steps 10] [--warmup 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

from nasjobs.benchmeta import bench_meta
from nasjobs.options import parse_config
from nasjobs.spaces import Darts
from nasjobs.strategies.darts import DartsConfig, Searcher

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
OPTIONS = {"init_channels": 8, "layers": 5, "batch_size": 32}


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def steps_per_second(order: str, device: torch.device, steps: int, warmup: int) -> float:
    config = parse_config(DartsConfig, {**OPTIONS, "order": order})
    searcher = Searcher.for_space(Darts(), config, 0, INPUT_SHAPE, NUM_CLASSES, device, epochs=1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(config.batch_size, *INPUT_SHAPE, generator=g).to(device),
                torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=g).to(device)) for _ in range(2)]
    for _ in range(warmup):
        searcher.step(batches[0], batches[1])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        searcher.step(batches[0], batches[1])  # .item() inside each step synchronises the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per order")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per order first")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be positive and --warmup not negative")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report: dict[str, Any] = {"device": device.type}
    for order in ("first", "second"):
        report[f"{order}_order_steps_per_s"] = round(steps_per_second(order, device, args.steps, args.warmup), 3)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.type == "cuda":
        report["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        report["gpu"] = torch.cuda.get_device_name(device)
    report["threads"] = torch.get_num_threads()
    report["config"] = {**OPTIONS, "input": list(INPUT_SHAPE), "classes": NUM_CLASSES, "steps": args.steps}
    space = Darts()
    report["meta"] = bench_meta(args, device=device, components={
        "space": {"name": space.name, "config": space.config},
        "strategy": {order: parse_config(DartsConfig, {**OPTIONS, "order": order}) for order in ("first", "second")}},
        argv=None if argv is None else ["python", "bench/darts_step.py", *argv])
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key != "meta":
                print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
