"""Images per second of the platform's training loop against a minimal hand-written PyTorch loop, same network.

Both train one chain CNN (`--arch`, default c32k3p-c64k3) built for digits with the `train` estimator's
settings (`TrainConfig` defaults: SGD with Nesterov momentum, weight decay, cosine schedule, gradient clip 5),
from the same initial weights, on the same batches: the digits training split tiled to `--steps` x
`--batch-size` images, shuffled by the same generator, resident on the device. The platform's side is
`Trainer.train_epoch()` (validation left out: the hand loop has none); the hand loop is

    model.train(); for x, y in batches: opt.zero_grad(set_to_none=True); loss = F.cross_entropy(model(x), y);
    loss.backward(); clip_grad_norm_(params, 5); opt.step(); scheduler.step()

so both do the same arithmetic and the ratio is the platform's own overhead. Runs alternate (platform first
in even repeats, the hand loop first in odd ones) after `--warmup` untimed pairs; the ratio is the median of
the pairs' ratios (robust to a neighbour's burst on a shared machine, which slows one run of a pair),
`ratio_best` that of each loop's fastest run. `same_weights` says whether both ended a repeat with identical weights (on CPU they must).

    python bench/train_step.py [--device auto] [--steps 100] [--repeats 21] [--warmup 1] [--batch-size 64]
                               [--threads 1] [--channels-last] [--bf16] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

import _root  # noqa: F401  (the repository root on the path, before the project's imports)

from nasjobs.benchmeta import bench_meta
from nasjobs.datasets import Split, load_digits
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.search import resolve_device
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig
from nasjobs.training import SGDSettings, Trainer, as_channels_last, check_precision, seeded_init

SEED = 0


def tiled(split: Split, size: int) -> Split:
    """`size` samples: the split repeated as often as needed, so one epoch is exactly the batches asked for."""
    times = -(-size // len(split))
    return Split(split.x.repeat(times, *([1] * (split.x.dim() - 1)))[:size].contiguous(),
                 split.y.repeat(times)[:size].contiguous())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def platform_run(model: nn.Module, data: Split, val: Split, settings: SGDSettings, device: torch.device,
                 options: dict[str, bool]) -> tuple[float, nn.Module]:
    trainer = Trainer(model, data, val, settings, 1, SEED, device, **options)
    sync(device)
    started = time.perf_counter()
    trainer.train_epoch()
    sync(device)
    return time.perf_counter() - started, trainer.model


def handwritten_run(model: nn.Module, data: Split, val: Split, settings: SGDSettings, device: torch.device,
                    options: dict[str, bool]) -> tuple[float, nn.Module]:
    model = model.to(device, memory_format=torch.channels_last) if options["channels_last"] else model.to(device)
    x_all, y_all = data.x.to(device), data.y.to(device)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
                          nesterov=settings.momentum > 0)
    steps = -(-len(data) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    generator = torch.Generator().manual_seed(SEED)
    autocast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if options["bf16"] else nullcontext
    sync(device)
    started = time.perf_counter()
    model.train()
    order = torch.randperm(len(data), generator=generator).to(device)
    for start in range(0, len(data), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        x, y = x_all[idx], y_all[idx]
        if options["channels_last"]:
            x = as_channels_last(x)
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        scheduler.step()
    sync(device)
    return time.perf_counter() - started, model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p.detach().cpu(), q.detach().cpu())
               for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    space, dataset = ChainCNN(ChainCNNConfig()), load_digits()
    arch = space.from_str(args.arch)
    config = TrainConfig(batch_size=args.batch_size)
    # The settings the `train` estimator trains with, from the estimator itself.
    settings = TrainEstimator(space, dataset, config, device)._settings()
    template = seeded_init(lambda: space.build(arch, dataset.input_shape, dataset.num_classes), SEED)
    data = tiled(dataset.train, args.steps * args.batch_size)
    options = {"bf16": args.bf16, "channels_last": args.channels_last}
    loops: dict[str, Callable[..., tuple[float, nn.Module]]] = {"platform": platform_run,
                                                               "handwritten": handwritten_run}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    identical = True
    for r in range(args.warmup + args.repeats):
        names = list(loops) if r % 2 == 0 else list(reversed(loops))
        ran = {}
        for name in names:
            ran[name] = loops[name](copy.deepcopy(template), data, dataset.val, settings, device, options)
        identical = identical and same_weights(ran["platform"][1], ran["handwritten"][1])
        if r >= args.warmup:
            for name in loops:
                seconds[name].append(ran[name][0])
    images = args.steps * args.batch_size
    rate = {name: [images / s for s in values] for name, values in seconds.items()}
    ratios = [p / h for p, h in zip(rate["platform"], rate["handwritten"])]
    return {"platform_images_per_s": round(statistics.median(rate["platform"]), 1),
            "handwritten_images_per_s": round(statistics.median(rate["handwritten"]), 1),
            "ratio_to_handwritten": round(statistics.median(ratios), 4),
            "ratio_best": round(max(rate["platform"]) / max(rate["handwritten"]), 4),
            "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
            "same_weights": identical, "device": str(device), "arch": args.arch, "steps": args.steps,
            "batch_size": args.batch_size, "repeats": args.repeats,
            "components": {"space": {"name": space.name, "config": space.config},
                           "estimator": {"name": TrainEstimator.name, "config": config},
                           "settings": settings, "trainer": options}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto (default): cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=100, help="timed training batches per run (default 100)")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs of each loop, alternating (default 21)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each loop first (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64, the train "
                                                                   "estimator's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: digits nets are too small to gain from more)")
    parser.add_argument("--arch", default="c32k3p-c64k3", help="chain_cnn architecture (default c32k3p-c64k3)")
    parser.add_argument("--channels-last", action="store_true", help="both loops in channels-last memory order")
    parser.add_argument("--bf16", action="store_true", help="both loops under bfloat16 autocast (CUDA only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of figures")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 2 or args.threads < 1:
        parser.error("--steps, --repeats and --threads must be positive, --warmup not negative, --batch-size >= 2")
    device = resolve_device(args.device)
    try:
        check_precision(device, args.bf16)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    report = measure(args, device)
    report["meta"] = bench_meta(args, device=device, components=report.pop("components"),
                                argv=None if argv is None else ["python", "bench/train_step.py", *argv])
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key != "meta":
                print(f"{key:26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
