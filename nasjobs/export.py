"""Export a trial as a runnable PyTorch model: a zip archive that needs PyTorch only, not this platform."""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import torch

from nasjobs.datasets import DATASETS
from nasjobs.options import parse_config
from nasjobs.search import ExperimentSpec, validate_spec

MAX_BATCH = 65_536

README = """{title}

Architecture ({space}): {arch}
Input: float tensors of shape (batch, {dims}), normalised as the platform's `{dataset}` dataset is;
output: (batch, {classes}) class logits. Weights: {weights}.

Run it with PyTorch alone (version {torch_version} or newer):

    import torch
    model = torch.export.load("model.pt2").module()
    logits = model(torch.zeros(1, {dims}))

weights.pt holds the same weights as a plain state_dict, architecture.json the architecture and the figures
the platform measured.
"""


def _weights_note(spec: ExperimentSpec, trained: bool) -> str:
    if trained:
        return "trained by the experiment"
    if not spec.component_class("estimator").trains_networks:
        return (f"NOT trained (freshly initialised): the experiment looked its figures up in {spec.dataset} and "
                "trained no network; train this one before using it")
    return "NOT trained (freshly initialised): the trial's weights were not kept"


def export_archive(spec: ExperimentSpec, arch_key: str, state: dict[str, torch.Tensor] | None,
                   meta: dict[str, Any] | None = None) -> bytes:
    """The zip archive (bytes) of one architecture of `spec`'s space, with `state` loaded when given. `meta`
    goes into architecture.json (its "title", if any, heads the README).

    The network is captured with `torch.export` (PyTorch's graph export, loadable with `torch.export.load`) for
    the experiment's input shape and any batch size, with the trial's trained weights when they were kept (the
    top-k trials of an experiment) and freshly initialised otherwise (a table lookup or a one-shot figure trains
    nothing, and weights outside the top k are deleted as the search goes). The archive also holds the plain
    `state_dict`, the architecture and a README saying how to run it."""
    spec = validate_spec(spec)
    meta = dict(meta or {})
    title = meta.pop("title", "A network found by neural architecture search")
    configs = {c: parse_config(spec.component_class(c).Config, spec.options[c]) for c in ("space", "estimator")}
    space = spec.component_class("space")(configs["space"])
    dataset = DATASETS.get(spec.dataset)()
    estimator = spec.component_class("estimator")(space, dataset, configs["estimator"], torch.device("cpu"))
    arch = space.from_str(arch_key)
    model = estimator.network(arch)
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    shape = list(dataset.input_shape)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=({0: batch},))
    graph = io.BytesIO()
    torch.export.save(program, graph)
    weights = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    info = {"space": spec.space, "space_options": spec.options["space"], "arch": arch_key,
            "display": space.display(arch), "dataset": spec.dataset, "input_shape": shape,
            "num_classes": dataset.num_classes, "trained": state is not None, "estimator": spec.estimator,
            "estimator_options": spec.options["estimator"], **meta}
    readme = README.format(title=title, space=spec.space, arch=arch_key, dims=", ".join(map(str, shape)),
                           dataset=spec.dataset,
                           classes=dataset.num_classes, torch_version=torch.__version__.split("+")[0],
                           weights=_weights_note(spec, state is not None))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.pt2", graph.getvalue())
        archive.writestr("weights.pt", weights.getvalue())
        archive.writestr("architecture.json", json.dumps(info, indent=2, sort_keys=True))
        archive.writestr("README.txt", readme)
    return out.getvalue()
