"""A weight-sharing supernet of the chain CNN space: every architecture of the space is a slice of its tensors."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nasjobs.spaces.chain_cnn import ChainArch, ChainCNN, ChainNetwork, _concat, _unconsumed


class ChainSuperNet(nn.Module):
    """Layer slot k holds one convolution of the largest shape any layer k can take: the most filters allowed,
    the largest kernel, and an input channel block for every earlier layer it may read. An architecture uses,
    per layer, the first `filters` output channels (channel slicing as in slimmable networks, Yu et al. 2019,
    and Once-for-All, Cai et al. 2020), the centre `kernel_h x kernel_w` of the kernel (Once-for-All's kernel
    sharing, without its transformation matrices), and of each input block the channels its chosen inputs
    produce. Batch norm and the classifier are sliced the same way. `path_state` cuts out exactly those slices
    under the names `ChainCNN.build(arch)` gives its modules, so a candidate inherits its weights into an
    ordinary network."""

    def __init__(self, space: ChainCNN, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.width = max(space.config.filters)
        self.kernel = max(space.config.kernels)
        layers = space.config.max_layers
        # Input block of source r inside layer k's input channels: the image first, then layers 1..k-1.
        self.convs = nn.ParameterList(
            nn.Parameter(torch.empty(self.width, self._block_start(k), self.kernel, self.kernel))
            for k in range(1, layers + 1))
        self.norms = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(layers))
        self.classifier = nn.Linear(layers * self.width, num_classes)
        for weight in self.convs:
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")

    def _block_start(self, source: int) -> int:
        """Offset of `source`'s channels in a layer's input block layout (also the layout's size at source k)."""
        return self.in_channels + (source - 1) * self.width if source > 0 else 0

    # slices -------------------------------------------------------------------------------------------------
    def _channels(self, arch: ChainArch, source: int) -> int:
        return self.in_channels if source == 0 else arch.layers[source - 1].filters

    def _input_index(self, arch: ChainArch, number: int) -> torch.Tensor:
        layer = arch.layers[number - 1]
        return torch.cat([torch.arange(self._block_start(r), self._block_start(r) + self._channels(arch, r))
                          for r in layer.inputs])

    def _kernel_slice(self, size: int) -> slice:
        start = (self.kernel - size) // 2
        return slice(start, start + size)

    def conv_weight(self, arch: ChainArch, number: int) -> torch.Tensor:
        layer = arch.layers[number - 1]
        weight = self.convs[number - 1][:layer.filters, :, self._kernel_slice(layer.kernel_h),
                                        self._kernel_slice(layer.kernel_w)]
        return weight.index_select(1, self._input_index(arch, number).to(weight.device))

    def head_index(self, arch: ChainArch) -> torch.Tensor:
        return torch.cat([torch.arange((k - 1) * self.width, (k - 1) * self.width + arch.layers[k - 1].filters)
                          for k in _unconsumed(arch)])

    # running one architecture -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: ChainArch) -> torch.Tensor:
        outputs = [x]
        for number, layer in enumerate(arch.layers, start=1):
            h = _concat([outputs[r] for r in layer.inputs])
            h = F.conv2d(h, self.conv_weight(arch, number), stride=layer.stride,
                         padding=(layer.kernel_h // 2, layer.kernel_w // 2))
            bn, f = self.norms[number - 1], layer.filters
            h = F.batch_norm(h, bn.running_mean[:f], bn.running_var[:f], bn.weight[:f], bn.bias[:f],
                             self.training, bn.momentum if bn.momentum is not None else 0.1, bn.eps)
            h = F.relu(h)
            if layer.pool and min(h.shape[-2:]) >= 2:
                h = F.max_pool2d(h, 2)
            outputs.append(h)
        pooled = torch.cat([outputs[k].mean(dim=(-2, -1)) for k in _unconsumed(arch)], dim=1)
        index = self.head_index(arch).to(x.device)
        return F.linear(pooled, self.classifier.weight.index_select(1, index), self.classifier.bias)

    def path_state(self, state: dict[str, torch.Tensor], arch: ChainArch,
                   model: ChainNetwork) -> dict[str, torch.Tensor]:
        """The weights of `arch`, keyed as the modules of `model = ChainCNN.build(arch, ...)` name them (an
        `nn.Sequential`: per layer conv, batch norm, ReLU and, where the map allows, pooling; then global
        pooling, flatten and the linear classifier)."""
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for number, (layer, (start, _)) in enumerate(zip(arch.layers, model.spans), start=1):
                f, i = layer.filters, number - 1
                weight = state[f"convs.{i}"][:f, :, self._kernel_slice(layer.kernel_h),
                                             self._kernel_slice(layer.kernel_w)]
                out[f"{start}.weight"] = weight.index_select(1, self._input_index(arch, number)).clone()
                for name in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{start + 1}.{name}"] = state[f"norms.{i}.{name}"][:f].clone()
                out[f"{start + 1}.num_batches_tracked"] = state[f"norms.{i}.num_batches_tracked"].clone()
            linear = len(model) - 1
            out[f"{linear}.weight"] = state["classifier.weight"].index_select(1, self.head_index(arch)).clone()
            out[f"{linear}.bias"] = state["classifier.bias"].clone()
        return out
