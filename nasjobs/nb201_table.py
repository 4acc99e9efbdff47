"""The NAS-Bench-201 lookup table shipped in `nasjobs/data`, loaded once into numpy arrays per dataset."""
from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).resolve().parent / "data" / "nb201.csv.gz"
DATASETS = ("cifar10", "cifar100", "imagenet16-120")
# Input shape (channels, height, width) the benchmark trained each dataset at, and its number of classes.
INPUTS = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet16-120": ((3, 16, 16), 120)}
NUM_ARCHS = 15625


@dataclass(frozen=True)
class DatasetTable:
    """One dataset's figures, row i for benchmark index i. Accuracies in percent, as the table gives them."""

    name: str
    val12: np.ndarray  # (15625,)
    test12: np.ndarray  # (15625,)
    val200: np.ndarray  # (15625, 3): one column per training seed, NaN where a cell has only 2 seeds
    val200_count: np.ndarray  # (15625,) int: how many seeds of val200 are real
    test200: np.ndarray  # (15625,): mean over seeds
    train_time_s: np.ndarray  # (15625,): the 200-epoch run on the benchmark's hardware
    latency_s: np.ndarray
    params_m: np.ndarray  # millions of parameters

    @property
    def val200_mean(self) -> np.ndarray:
        return np.nanmean(self.val200, axis=1)

    def optimum_test200(self) -> float:
        return float(self.test200.max())


@lru_cache(maxsize=1)
def _rows() -> tuple[list[str], dict[str, list[str]]]:
    with gzip.open(TABLE_PATH, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        columns: list[list[str]] = [[] for _ in header]
        for row in reader:
            for col, value in zip(columns, row):
                col.append(value)
    data = dict(zip(header, columns))
    if [int(i) for i in data["index"]] != list(range(NUM_ARCHS)):
        raise ValueError(f"{TABLE_PATH} does not list indices 0..{NUM_ARCHS - 1} in order")
    return data["arch"], data


def arch_strings() -> list[str]:
    """The benchmark's architecture string of each index, in index order."""
    return _rows()[0]


@lru_cache(maxsize=1)
def index_of() -> dict[str, int]:
    return {s: i for i, s in enumerate(arch_strings())}


@lru_cache(maxsize=None)
def load(dataset: str) -> DatasetTable:
    """The figures of `dataset` (one of DATASETS); cached, so every call after the first is free."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown NAS-Bench-201 dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    data = _rows()[1]

    def floats(column: str) -> np.ndarray:
        arr = np.array(data[f"{dataset}_{column}"], dtype=np.float64)
        arr.setflags(write=False)
        return arr

    val200 = np.full((NUM_ARCHS, 3), np.nan)
    count = np.zeros(NUM_ARCHS, dtype=np.int64)
    for i, text in enumerate(data[f"{dataset}_val200_seeds"]):
        seeds = [float(s) for s in text.split(";")]
        val200[i, :len(seeds)] = seeds
        count[i] = len(seeds)
    val200.setflags(write=False)
    count.setflags(write=False)
    return DatasetTable(dataset, floats("val12"), floats("test12"), val200, count, floats("test200"),
                        floats("train_time_s"), floats("latency_s"), floats("params_mb"))
