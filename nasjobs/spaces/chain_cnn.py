"""The chain CNN space of Zoph & Le 2017: conv layers with per-layer shape, stride, pooling and skip connections."""
from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasjobs.options import coerce, option, option_specs
from nasjobs.spaces.base import ArchParseError, EditSpace, Graph

FILTER_CHOICES = (8, 16, 24, 32, 48, 64, 96, 128, 256)
KERNEL_CHOICES = (1, 3, 5, 7)
STRIDE_CHOICES = (1, 2, 3)


@dataclass(frozen=True)
class ChainCNNConfig:
    max_layers: int = option(4, "Maximum number of conv layers", min=1, max=12)
    filters: tuple[int, ...] = option((16, 32, 64), "Filter counts a layer may use", choices=FILTER_CHOICES)
    kernels: tuple[int, ...] = option((1, 3, 5), "Kernel sizes a layer may use; its height and width are chosen "
                                                 "separately", choices=KERNEL_CHOICES)
    strides: tuple[int, ...] = option((1,), "Convolution strides a layer may use", choices=STRIDE_CHOICES)
    pooling: bool = option(True, "Allow 2x2 max pooling after a layer")
    skips: bool = option(True, "Allow skip connections: a layer may read the concatenation of any earlier "
                               "layers' outputs (the paper's anchor points)")
    square_kernels: bool = option(False, "Every kernel has one size for height and width; required for signals, "
                                         "whose 1-D kernels have a single size")

    def __post_init__(self) -> None:
        # The same checks and normal forms as a submitted form, also for configs built in code: an empty
        # choice list or zero layers is an OptionError naming the field.
        for spec in option_specs(type(self)):
            object.__setattr__(self, spec.name, coerce(spec, getattr(self, spec.name)))


@dataclass(frozen=True)
class ConvLayer:
    """One layer: conv (kernel_h x kernel_w, stride) → BN → ReLU, then optionally 2x2 max pooling.

    `inputs` are the earlier layers it reads, in increasing order, concatenated along depth: 0 is the input
    image and k is the output of layer k (layers count from 1). A plain chain has `inputs == (k - 1,)` at layer k.
    """

    filters: int
    kernel_h: int
    kernel_w: int
    stride: int
    pool: bool
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class ChainArch:
    layers: tuple[ConvLayer, ...]


def chain_inputs(number: int) -> tuple[int, ...]:
    """The inputs of layer `number` (from 1) in a plain chain: the layer before it, or the image."""
    return (number - 1,)


# `c<filters>k<h>[x<w>][s<stride>][p][@<input>.<input>...]`, e.g. c32k3p, c64k3x5s2@0.1
_LAYER_RE = re.compile(r"c(\d{1,4})k(\d{1,2})(?:x(\d{1,2}))?(?:s(\d{1,2}))?(p?)(?:@(\d{1,2}(?:\.\d{1,2})*))?")


def _unconsumed(arch: ChainArch) -> list[int]:
    """Layers no later layer reads; their outputs, concatenated, feed the classifier (the paper's final layer)."""
    read = {r for layer in arch.layers for r in layer.inputs}
    return [k for k in range(1, len(arch.layers) + 1) if k not in read]


class ChainNetwork(nn.Sequential):
    """The network of one architecture: its layers' modules in order, then global pooling, flatten, linear.

    It is an `nn.Sequential` holding exactly the modules, in the order, of the plain chain this space built before
    it had skip connections, so a chain's `state_dict` keys (and stored checkpoints) are unchanged; `forward`
    follows each layer's inputs. Inputs of different spatial sizes are max-pooled down to the smallest of them
    (adaptive max pooling, which for a whole-number ratio is plain k x k max pooling) and concatenated along
    depth; the paper zero-pads the smaller ones instead, which would run a deep layer at the image's resolution.
    The unconsumed layers are each globally pooled and concatenated before the classifier.
    """

    def __init__(self, modules: list[nn.Module], spans: list[tuple[int, int]], inputs: list[tuple[int, ...]],
                 head_inputs: list[int]) -> None:
        super().__init__(*modules)
        self.spans = spans
        self.layer_inputs = inputs
        self.head_inputs = head_inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self)
        outputs = [x]
        for (start, stop), inputs in zip(self.spans, self.layer_inputs):
            h = _concat([outputs[r] for r in inputs])
            for block in blocks[start:stop]:
                h = block(h)
            outputs.append(h)
        gap, flatten, linear = blocks[-3:]
        return linear(torch.cat([flatten(gap(outputs[k])) for k in self.head_inputs], dim=1))


def _concat(maps: list[torch.Tensor]) -> torch.Tensor:
    if len(maps) == 1:
        return maps[0]
    dims = maps[0].dim() - 2  # 2 for images, 1 for signals
    size = tuple(min(m.shape[2 + d] for m in maps) for d in range(dims))
    pool = F.adaptive_max_pool2d if dims == 2 else F.adaptive_max_pool1d
    return torch.cat([m if tuple(m.shape[2:]) == size else pool(m, size) for m in maps], dim=1)


class ChainCNN(EditSpace[ChainArch]):
    """Zoph & Le 2017, "Neural architecture search with reinforcement learning", sections 3.3 and 4.1 (CNNs).

    A network is 1 to `max_layers` conv layers, each choosing its filter count, kernel height, kernel width,
    stride and whether 2x2 max pooling follows, and (with `skips`) which earlier layers it reads: the paper's
    anchor point at layer N decides, one sigmoid per earlier layer, which outputs to concatenate as its input,
    and a layer connected to nothing reads the image. Global average pooling and a linear layer classify.

    Canonical string, layers joined by '-': `c<filters>k<h>[x<w>][s<stride>][p][@<i>.<j>...]`, where `x<w>` is
    written only for a non-square kernel, `s<stride>` only for a stride above 1, `p` for pooling, and `@...` only
    when the inputs are not just the previous layer (0 is the image), e.g. `c32k3p-c64k3x5s2@0.1`. A plain chain
    reads as before: `c32k3p-c64k5`.

    A mutation is one edit (`EditSpace`), its kind chosen uniformly among those possible: change one layer's
    filters, kernel height, kernel width, stride or pooling, toggle one of its skip inputs, or add or remove a layer.

    Every architecture runs on any input size: convolutions pad to "same" (stride s gives ceil(n / s)), and a
    pooling step on a map narrower than 2 pixels is left out when the network is built.

    For signals, input (channels, length), the same architecture builds 1-D convolutions of `kernel_h` taps, 1-D
    pooling by 2 and 1-D global pooling; the space must then have `square_kernels`, so that no searched choice
    (the kernel width) is left without effect.
    """

    name = "chain_cnn"
    title = "Chain CNN"
    Config = ChainCNNConfig
    kinds = ("image", "signal")

    def __init__(self, config: ChainCNNConfig | None = None) -> None:
        super().__init__(config or ChainCNNConfig())
        self._pools = (False, True) if self.config.pooling else (False,)

    def check_dataset(self, dataset: str, kind: str) -> None:
        super().check_dataset(dataset, kind)
        if kind == "signal" and not self.config.square_kernels:
            raise ValueError(f"{dataset!r} holds 1-D signals, whose kernels have one size: turn on the chain_cnn "
                             "option square_kernels")

    def _kernel_widths(self, kernel_h: int) -> tuple[int, ...]:
        return (kernel_h,) if self.config.square_kernels else self.config.kernels

    # representation -------------------------------------------------------------------------------------------
    def _input_choices(self, number: int) -> int:
        """How many input sets layer `number` may have: any non-empty subset of 0..number-1, or the chain's."""
        return 2 ** number - 1 if self.config.skips else 1

    def _random_layer(self, rng: random.Random, number: int) -> ConvLayer:
        c = self.config
        inputs = chain_inputs(number)
        if c.skips and number > 1:  # uniform over the non-empty subsets of the earlier layers
            mask = rng.randrange(1, 2 ** number)
            inputs = tuple(r for r in range(number) if mask >> r & 1)
        filters, kernel_h = rng.choice(c.filters), rng.choice(c.kernels)
        return ConvLayer(filters, kernel_h, rng.choice(self._kernel_widths(kernel_h)), rng.choice(c.strides),
                         rng.choice(self._pools), inputs)

    def sample(self, rng: random.Random) -> ChainArch:
        depth = rng.randint(1, self.config.max_layers)
        return ChainArch(tuple(self._random_layer(rng, k) for k in range(1, depth + 1)))

    def smallest(self) -> ChainArch:
        """One layer of the fewest filters, the smallest kernel and the largest stride, reading the image: every
        network has a first convolution on the image at least this large and a classifier reading at least this
        many channels, and more layers only add to both."""
        c = self.config
        return ChainArch((ConvLayer(min(c.filters), min(c.kernels), min(c.kernels), max(c.strides), False,
                                    chain_inputs(1)),))

    def _settings(self) -> list[tuple[int, int, int, int, bool]]:
        c = self.config
        return [(f, kh, kw, s, p) for f in c.filters for kh in c.kernels for kw in self._kernel_widths(kh)
                for s in c.strides for p in self._pools]

    @staticmethod
    def _insert(arch: ChainArch, number: int, setting: tuple[int, int, int, int, bool]) -> ChainArch:
        """Splice a new layer into the chain so it becomes layer `number`: it reads layer number-1, the layer
        after it reads it instead of layer number-1, and references to later layers shift up by one."""
        layers = []
        for k, layer in enumerate(arch.layers, start=1):
            new_number = k if k < number else k + 1
            inputs = [r if r < number else r + 1 for r in layer.inputs]
            if new_number == number + 1:
                inputs = [number if r == number - 1 else r for r in inputs]
            layers.append(_with_inputs(layer, inputs))
        layers.insert(number - 1, ConvLayer(*setting, chain_inputs(number)))
        return ChainArch(tuple(layers))

    @staticmethod
    def _remove(arch: ChainArch, number: int) -> ChainArch:
        """Drop layer `number`; layers that read it read its inputs instead (so a chain stays a chain)."""
        removed = arch.layers[number - 1].inputs
        layers = []
        for k, layer in enumerate(arch.layers, start=1):
            if k == number:
                continue
            inputs: list[int] = []
            for r in layer.inputs:
                inputs += removed if r == number else [r if r < number else r - 1]
            layers.append(_with_inputs(layer, inputs))
        return ChainArch(tuple(layers))

    @staticmethod
    def _replace(arch: ChainArch, number: int, **changes: object) -> ChainArch:
        layers = list(arch.layers)
        old = layers[number - 1]
        layers[number - 1] = dataclasses.replace(old, **changes)
        return ChainArch(tuple(layers))

    def _changes(self, arch: ChainArch, kind: str, number: int) -> list[ChainArch]:
        """Every architecture one edit of `kind` at layer `number` away (for "add", a layer inserted there)."""
        if kind == "add":
            return [self._insert(arch, number, s) for s in self._settings()]
        if kind == "remove":
            return [self._remove(arch, number)]
        old = arch.layers[number - 1]
        if kind == "skip":
            toggled = [tuple(sorted(set(old.inputs) ^ {r})) for r in range(number)]
            return [self._replace(arch, number, inputs=t) for t in toggled if t]
        c = self.config
        values = {"filters": c.filters, "kernel_h": c.kernels, "kernel_w": c.kernels, "stride": c.strides,
                  "pool": self._pools}[kind]
        # With square kernels the width follows the height.
        square = ("kernel_w",) if c.square_kernels and kind == "kernel_h" else ()
        return [self._replace(arch, number, **{k: v for k in (kind, *square)}) for v in values
                if v != getattr(old, kind)]

    def _edit_sites(self, arch: ChainArch) -> dict[str, list[int]]:
        """For each kind of edit possible on `arch`, the layer numbers it can apply to."""
        c, n = self.config, len(arch.layers)
        every = list(range(1, n + 1))
        sites = {"filters": every if len(c.filters) > 1 else [], "kernel_h": every if len(c.kernels) > 1 else [],
                 "kernel_w": every if len(c.kernels) > 1 and not c.square_kernels else [], "stride": every if len(c.strides) > 1 else [],
                 "pool": every if len(self._pools) > 1 else [], "skip": every[1:] if c.skips else [],
                 "add": list(range(1, n + 2)) if n < c.max_layers else [], "remove": every if n > 1 else []}
        return {kind: numbers for kind, numbers in sites.items() if numbers}

    def to_str(self, arch: ChainArch) -> str:
        parts = []
        for k, l in enumerate(arch.layers, start=1):
            text = f"c{l.filters}k{l.kernel_h}"
            text += f"x{l.kernel_w}" if l.kernel_w != l.kernel_h else ""
            text += f"s{l.stride}" if l.stride != 1 else ""
            text += "p" if l.pool else ""
            text += "@" + ".".join(map(str, l.inputs)) if l.inputs != chain_inputs(k) else ""
            parts.append(text)
        return "-".join(parts)

    def from_str(self, text: str) -> ChainArch:
        text = text.strip()
        layers = []
        for k, part in enumerate(text.split("-"), start=1):
            m = _LAYER_RE.fullmatch(part)
            if not m:
                raise ArchParseError(f"bad layer {part!r} in {text!r}; expected e.g. c32k3p-c64k5 or c64k3x5s2p@0.1")
            filters, kh, kw, stride, pool, inputs = m.groups()
            layers.append(ConvLayer(int(filters), int(kh), int(kw or kh), int(stride or 1), pool == "p",
                                    tuple(int(r) for r in inputs.split(".")) if inputs else chain_inputs(k)))
        arch = ChainArch(tuple(layers))
        self._check(arch)
        canonical = self.to_str(arch)
        if canonical != text:  # one string per architecture: it is the database key
            raise ArchParseError(f"{text!r} is not in canonical form; write {canonical}")
        return arch

    def _check(self, arch: ChainArch) -> None:
        c = self.config
        if not 1 <= len(arch.layers) <= c.max_layers:
            raise ArchParseError(f"{len(arch.layers)} layers; this space allows 1 to {c.max_layers}")
        for k, l in enumerate(arch.layers, start=1):
            if l.filters not in c.filters:
                raise ArchParseError(f"layer {k}: filter count {l.filters} is not one of {c.filters}")
            for name, size in (("height", l.kernel_h), ("width", l.kernel_w)):
                if size not in c.kernels:
                    raise ArchParseError(f"layer {k}: kernel {name} {size} is not one of {c.kernels}")
            if c.square_kernels and l.kernel_w != l.kernel_h:
                raise ArchParseError(f"layer {k}: kernel {l.kernel_h}x{l.kernel_w} is not square, as this space "
                                     "requires")
            if l.stride not in c.strides:
                raise ArchParseError(f"layer {k}: stride {l.stride} is not one of {c.strides}")
            if l.pool not in self._pools:
                raise ArchParseError("pooling is not allowed in this space")
            if not l.inputs or list(l.inputs) != sorted(set(l.inputs)) or not 0 <= l.inputs[0] <= l.inputs[-1] < k:
                raise ArchParseError(f"layer {k}: inputs {l.inputs} must be distinct earlier layers 0..{k - 1} "
                                     "in increasing order (0 is the image)")
            if not c.skips and l.inputs != chain_inputs(k):
                raise ArchParseError(f"layer {k}: skip connections are not allowed in this space")

    def vocabulary(self) -> list[list[str]]:
        """The depth, then per layer position: filters, kernel height, kernel width, stride, pooling and (with
        skips, from layer 2 on) one yes/no anchor decision per earlier layer, the image included."""
        c = self.config
        vocab = [[str(n) for n in range(1, c.max_layers + 1)]]
        for k in range(1, c.max_layers + 1):
            widths = ["kw=kh"] if c.square_kernels else [f"kw{s}" for s in c.kernels]
            vocab += [[f"f{f}" for f in c.filters], [f"kh{s}" for s in c.kernels], widths,
                      [f"s{s}" for s in c.strides], ["pool" if p else "nopool" for p in self._pools]]
            vocab += [["-", f"@{r}"] for r in self._anchors(k)]
        return vocab

    def _anchors(self, number: int) -> range:
        # Layer 1 can only read the image, so it has no decision to make.
        return range(number) if self.config.skips and number > 1 else range(0)

    def to_tokens(self, arch: ChainArch) -> list[int]:
        self._check(arch)
        c = self.config
        tokens = [len(arch.layers) - 1]
        for k in range(1, c.max_layers + 1):
            if k <= len(arch.layers):
                l = arch.layers[k - 1]
                tokens += [c.filters.index(l.filters), c.kernels.index(l.kernel_h),
                           self._kernel_widths(l.kernel_h).index(l.kernel_w),
                           c.strides.index(l.stride), self._pools.index(l.pool)]
                tokens += [int(r in l.inputs) for r in self._anchors(k)]
            else:  # positions past the depth carry no information; 0 keeps the encoding canonical
                tokens += [0] * (5 + len(self._anchors(k)))
        return tokens

    def from_tokens(self, tokens: Sequence[int]) -> ChainArch:
        """Decode any token sequence that fits the vocabulary; a layer whose anchors are all "no" reads the image,
        as in the paper."""
        c, vocab = self.config, self.vocabulary()
        if len(tokens) != len(vocab) or any(not 0 <= t < len(v) for t, v in zip(tokens, vocab)):
            raise ArchParseError(f"token sequence {list(tokens)} does not fit this space's vocabulary")
        depth, p, layers = int(tokens[0]) + 1, 1, []
        for k in range(1, depth + 1):
            f, kh, kw, s, pool = (int(t) for t in tokens[p:p + 5])
            anchors = self._anchors(k)
            chosen = tuple(r for r, t in zip(anchors, tokens[p + 5:p + 5 + len(anchors)]) if t)
            inputs = (chosen or (0,)) if anchors else chain_inputs(k)
            kernel_h = c.kernels[kh]
            layers.append(ConvLayer(c.filters[f], kernel_h, self._kernel_widths(kernel_h)[kw], c.strides[s],
                                    self._pools[pool], inputs))
            p += 5 + len(anchors)
        return ChainArch(tuple(layers))

    def size(self) -> int:
        per_layer = len(self._settings())
        total, count = 0, 1
        for k in range(1, self.config.max_layers + 1):
            count *= per_layer * self._input_choices(k)
            total += count
        return total

    # networks -------------------------------------------------------------------------------------------------
    def build(self, arch: ChainArch, input_shape: tuple[int, ...], num_classes: int) -> ChainNetwork:
        self._check(arch)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"chain_cnn builds for images (C, H, W) or signals (C, L), not shape {input_shape}")
        one_d = len(input_shape) == 2
        if one_d and not self.config.square_kernels:
            raise ValueError("signals need a chain_cnn space with square_kernels")
        conv, norm, pool, gap = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d) if one_d else \
            (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
        # (channels, *spatial extent) of the input and of each layer's output
        sizes: list[tuple[int, ...]] = [tuple(input_shape)]
        modules: list[nn.Module] = []
        spans: list[tuple[int, int]] = []
        for l in arch.layers:
            c_in = sum(sizes[r][0] for r in l.inputs)
            extent = [min(sizes[r][1 + d] for r in l.inputs) for d in range(len(input_shape) - 1)]
            kernel = (l.kernel_h,) if one_d else (l.kernel_h, l.kernel_w)
            start = len(modules)
            modules += [conv(c_in, l.filters, kernel, stride=l.stride, padding=tuple(k // 2 for k in kernel),
                             bias=False), norm(l.filters), nn.ReLU(inplace=True)]
            extent = [-(-n // l.stride) for n in extent]  # odd kernels padded by k // 2: ceil(n / stride)
            # Pooling a 1-pixel map is impossible; skipping it keeps every architecture valid for any input size.
            if l.pool and min(extent) >= 2:
                modules.append(pool(2))
                extent = [n // 2 for n in extent]
            spans.append((start, len(modules)))
            sizes.append((l.filters, *extent))
        head = _unconsumed(arch)
        modules += [gap(1), nn.Flatten(), nn.Linear(sum(sizes[k][0] for k in head), num_classes)]
        return ChainNetwork(modules, spans, [l.inputs for l in arch.layers], head)

    def describe(self, arch: ChainArch) -> Graph:
        g = Graph()
        g.nodes.append(("input", "input"))
        outputs = ["input"]  # the node that carries each layer's output; 0 is the image

        def join(sources: list[int], node: str, previous: int) -> None:
            """Edges from the outputs of `sources` into `node`, through a concat node when there are several;
            an edge from other than the `previous` layer is labelled as a skip."""
            target = f"{node}:concat" if len(sources) > 1 else node
            g.edges += [(outputs[r], target, "" if r == previous else "skip") for r in sources]
            if len(sources) > 1:
                g.nodes.append((target, "concat"))
                g.edges.append((target, node, ""))

        for k, l in enumerate(arch.layers, start=1):
            node = f"conv{k}"
            stride = f" /{l.stride}" if l.stride != 1 else ""
            g.nodes.append((node, f"conv {l.kernel_h}x{l.kernel_w}{stride}, {l.filters}"))
            join(list(l.inputs), node, k - 1)
            if l.pool:
                g.nodes.append((f"pool{k}", "max pool 2x2"))
                g.edges.append((node, f"pool{k}", ""))
                node = f"pool{k}"
            outputs.append(node)
        g.nodes += [("gap", "global avg pool"), ("fc", "linear")]
        join(_unconsumed(arch), "gap", len(arch.layers))
        g.edges.append(("gap", "fc", ""))
        return g

    def display(self, arch: ChainArch) -> str:
        def layer(k: int, l: ConvLayer) -> str:
            text = "" if l.inputs == chain_inputs(k) else "[" + "+".join(map(str, l.inputs)) + "] "
            text += f"{l.kernel_h}x{l.kernel_w}·{l.filters}"
            return text + (f" /{l.stride}" if l.stride != 1 else "") + (" ▸pool" if l.pool else "")
        return " → ".join(layer(k, l) for k, l in enumerate(arch.layers, start=1))


def _with_inputs(layer: ConvLayer, inputs: Sequence[int]) -> ConvLayer:
    return ConvLayer(layer.filters, layer.kernel_h, layer.kernel_w, layer.stride, layer.pool,
                     tuple(sorted(set(inputs))))
