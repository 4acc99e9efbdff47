"""Export a trial as a model that runs without this platform (a torch.export zip or an ONNX file), taking raw samples."""
from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nasjobs.datasets import DATASETS, Dataset, Preprocessing
from nasjobs.options import parse_config
from nasjobs.registry import Registry
from nasjobs.search import ExperimentSpec, validate_spec

MAX_BATCH = 65_536
INPUT_NAME, OUTPUT_NAME = "raw", "logits"  # the ONNX graph's input and output
LAYOUTS = {"image": ("channels", "height", "width"), "signal": ("channels", "length"), "table": ("features",),
           "nb201": ("channels", "height", "width")}

README = """{title}

Architecture ({space}): {arch}
Weights: {weights}.

Input: {input_line}
{input_detail}
Output: {output_line}

Run it with PyTorch alone (version {torch_version} or newer):

    import torch
    model = torch.export.load("model.pt2").module()
    logits = model({example})
    labels = logits.argmax(1)  # index into "classes" in metadata.json

The model applies the platform's preprocessing itself: do not scale or normalise the input.
metadata.json says the same in JSON (input shape, dtype, range, the preprocessing's constants, the classes in
output order, the architecture and the figures the platform measured); weights.pt holds the network's weights
as a plain state_dict, without the preprocessing (that network takes the preprocessed input).
"""


class RawInputNetwork(nn.Module):
    """A trained network behind the preprocessing it was trained after (`nasjobs.datasets.Preprocessing`), so it
    takes samples as the dataset stores them: cast to float32, divided by the raw divisor, standardised in
    float64 per channel or feature and cast back to float32, as `build_dataset` computes it. Without
    preprocessing (a benchmark table's network, which trained on nothing here) it passes its input through."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing | None, sample_ndim: int) -> None:
        super().__init__()
        self.network = network
        self.divisor = preprocessing.raw.divisor if preprocessing else 1.0
        self.standardise = preprocessing is not None
        if preprocessing is not None:
            # (1, C) for tables, (1, C, 1) for signals, (1, C, 1, 1) for images: broadcast over the channel axis.
            shape = (1, -1) + (1,) * (sample_ndim - 1)
            self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float64).view(shape))
            self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float64).view(shape))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32)
        if self.divisor != 1.0:
            x = x / self.divisor
        if self.standardise:
            x = ((x.to(torch.float64) - self.mean) / self.std).to(torch.float32)
        return self.network(x)


@dataclass
class Prepared:
    """What every format writes: the raw-input module (in eval mode), an example batch of raw samples, the
    network's plain weights, the metadata and the README."""

    module: RawInputNetwork
    example: torch.Tensor
    weights: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    readme: str


def _weights_note(spec: ExperimentSpec, trained: bool) -> str:
    if trained:
        return "trained by the experiment"
    if not spec.component_class("estimator").trains_networks:
        return (f"NOT trained (freshly initialised): the experiment looked its figures up in {spec.dataset} and "
                "trained no network; train this one before using it")
    return "NOT trained (freshly initialised): the trial's weights were not kept"


def input_description(dataset: Dataset) -> dict[str, Any]:
    """The exported model's input in JSON: shape (batch first), dtype, range, layout, channel order, and the
    preprocessing the model applies."""
    shape = list(dataset.input_shape)
    layout = ["batch", *LAYOUTS.get(dataset.kind, ())][:len(shape) + 1]
    pre = dataset.preprocessing
    info: dict[str, Any] = {"name": INPUT_NAME, "shape": ["batch", *shape], "layout": layout,
                            "dtype": pre.raw.dtype if pre else "float32",
                            "range": pre.raw.value_range if pre else "already standardised (no raw samples: "
                                                                     "a benchmark table)",
                            "kind": dataset.kind, "preprocessing": pre.as_json() if pre else None}
    if dataset.kind in ("image", "nb201"):
        info["channels"] = {1: ["grey"], 3: ["red", "green", "blue"]}.get(shape[0], [f"channel {i}" for i in
                                                                                  range(shape[0])])
    if dataset.feature_names:
        info["features"] = list(dataset.feature_names)
    return info


def _input_lines(dataset: Dataset, info: dict[str, Any]) -> tuple[str, str]:
    dims = ", ".join(str(d) for d in info["shape"])
    line = f"{info['dtype']} tensor of shape ({dims}), {' x '.join(info['layout'])}, values {info['range']}."
    detail = []
    if "channels" in info:
        detail.append(f"Channels, in order: {', '.join(info['channels'])}.")
    if "features" in info:
        detail.append(f"Features, in order: {', '.join(info['features'])}.")
    pre = dataset.preprocessing
    if pre is not None:
        divided = f"divided by {pre.raw.divisor:g}, then " if pre.raw.divisor != 1.0 else ""
        detail.append(f"Inside, each value is cast to float32, {divided}standardised per "
                      f"{'feature' if dataset.kind == 'table' else 'channel'} by the training split's mean "
                      f"{[round(m, 6) for m in pre.mean]} and standard deviation {[round(s, 6) for s in pre.std]}.")
    return line, "\n".join(detail)


def prepare(spec: ExperimentSpec, arch_key: str, state: dict[str, torch.Tensor] | None,
            meta: dict[str, Any] | None = None) -> Prepared:
    """The network of one architecture of `spec`'s space, with `state` loaded when given (the trial's kept
    weights; freshly initialised otherwise: a table lookup or a one-shot figure trains nothing, and weights
    outside the top k are deleted as the search goes), behind its dataset's preprocessing. `meta` goes into
    metadata.json (its "title", if any, heads the README)."""
    spec = validate_spec(spec)
    meta = dict(meta or {})
    title = meta.pop("title", "A network found by neural architecture search")
    configs = {c: parse_config(spec.component_class(c).Config, spec.options[c]) for c in ("space", "estimator")}
    space = spec.component_class("space")(configs["space"])
    dataset = DATASETS.get(spec.dataset)()
    estimator = spec.component_class("estimator")(space, dataset, configs["estimator"], torch.device("cpu"))
    arch = space.from_str(arch_key)
    network = estimator.network(arch)
    if state is not None:
        network.load_state_dict(state)
    module = RawInputNetwork(network, dataset.preprocessing, len(dataset.input_shape)).eval()
    info = input_description(dataset)
    dtype = getattr(torch, info["dtype"])
    example = torch.zeros(2, *dataset.input_shape, dtype=dtype)
    classes = list(dataset.class_names) or [str(i) for i in range(dataset.num_classes)]
    metadata = {"space": spec.space, "space_options": spec.options["space"], "arch": arch_key,
                "display": space.display(arch), "dataset": spec.dataset, "input_shape": list(dataset.input_shape),
                "num_classes": dataset.num_classes, "classes": classes, "trained": state is not None,
                "estimator": spec.estimator, "estimator_options": spec.options["estimator"], "input": info,
                "output": {"name": OUTPUT_NAME, "shape": ["batch", dataset.num_classes],
                           "meaning": "class logits, one column per entry of classes, in that order"}, **meta}
    input_line, input_detail = _input_lines(dataset, info)
    example_call = f"torch.zeros(1, {', '.join(map(str, dataset.input_shape))}, dtype=torch.{info['dtype']})"
    readme = README.format(title=title, space=spec.space, arch=arch_key, input_line=input_line,
                           input_detail=input_detail,
                           output_line=f"(batch, {dataset.num_classes}) class logits; classes in order: "
                                       f"{', '.join(classes)}.",
                           example=example_call, torch_version=torch.__version__.split("+")[0],
                           weights=_weights_note(spec, state is not None))
    weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return Prepared(module, example, weights, metadata, readme)


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}


def write_torch_archive(prepared: Prepared, path: Path, check: Callable[[], None]) -> None:
    """A zip: the `torch.export` program (loadable with `torch.export.load`, any batch size), the plain
    weights, metadata.json and README.txt."""
    program = torch.export.export(prepared.module, (prepared.example,), dynamic_shapes=(_batch_dim(),))
    check()
    # Both are zips written with seeks, so they go through files beside `path`, never whole into memory.
    parts = {name: path.with_name(f"{path.name}.{name}") for name in ("model.pt2", "weights.pt")}
    try:
        torch.export.save(program, parts["model.pt2"])
        torch.save(prepared.weights, parts["weights.pt"])
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, part in parts.items():
                archive.write(part, name)
            archive.writestr("metadata.json", json.dumps(prepared.metadata, indent=2, sort_keys=True))
            archive.writestr("README.txt", prepared.readme)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)


def write_onnx(prepared: Prepared, path: Path, check: Callable[[], None]) -> None:
    """One ONNX file (the dynamo exporter, `torch.onnx.export`): input `raw`, output `logits`, the batch
    dimension dynamic, the weights inside; metadata.json's content in the model's metadata under "nasboard"
    and the README as its doc string (onnxruntime: `session.get_modelmeta().custom_metadata_map`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
        program = torch.onnx.export(prepared.module, (prepared.example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(_batch_dim(),), verbose=False)
    check()
    program.model.metadata_props["nasboard"] = json.dumps(prepared.metadata, sort_keys=True)
    program.model.doc_string = prepared.readme.replace('torch.export.load("model.pt2").module()',
                                                       "(this file in onnxruntime or any ONNX runtime)")
    program.save(str(path), external_data=False)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    title: str
    suffix: str  # the file's extension
    content_type: str
    write: Callable[[Prepared, Path, Callable[[], None]], None]


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "nasjobs.export")
EXPORT_FORMATS.register("torch", ExportFormat("torch", "PyTorch (torch.export zip)", "zip", "application/zip",
                                              write_torch_archive))
EXPORT_FORMATS.register("onnx", ExportFormat("onnx", "ONNX", "onnx", "application/octet-stream", write_onnx))


def export_file(spec: ExperimentSpec, arch_key: str, state: dict[str, torch.Tensor] | None, fmt: str,
                path: str | Path, meta: dict[str, Any] | None = None,
                check: Callable[[], None] = lambda: None) -> Path:
    """Write the architecture as `fmt` (a name in EXPORT_FORMATS) to `path`, through a temporary file renamed
    into place, so a killed build never leaves half a file under the real name. `check` is called between the
    long steps and may raise to stop (a lost lease, a deleted experiment)."""
    writer = EXPORT_FORMATS.get(fmt)
    path = Path(path)
    prepared = prepare(spec, arch_key, state, meta)
    check()
    # Temporary files are hidden and named after `path`: what a killed build left is removed by the next one.
    for stale in path.parent.glob(f".{path.name}.*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer.write(prepared, tmp, check)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

