"""DARTS (Liu, Simonyan & Yang, ICLR 2019): differentiable architecture search as a platform strategy."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nasjobs.darts_supernet import PARAM_FREE, DartsSupernet, NB201Supernet, Supernet, init_alphas
from nasjobs.datasets import Dataset, Split
from nasjobs.options import OptionError, coerce, option, option_specs
from nasjobs.rng import derive_seed
from nasjobs.spaces.base import SearchSpace
from nasjobs.spaces.darts import STEPS, Darts, Genotype, genotype
from nasjobs.spaces.darts_ops import PRIMITIVES
from nasjobs.spaces.nb201 import NB201
from nasjobs.strategies.base import Observed, Strategy

CHECKPOINT_FORMAT = "darts/1"
HOOK_EVERY = 10  # steps between calls of the loop's hook (heartbeat, cancellation)
REMEDIES = ("none", "darts_minus", "early_stop")


@dataclass(frozen=True)
class DartsConfig:
    order: str = option("first", "Architecture gradient: first order (eq. 5, xi = 0) or the second-order "
                                 "unrolled approximation (eq. 7-8), about 3x slower per step",
                        choices=("first", "second"))
    batch_size: int = option(64, "Batch size of both the weight and the architecture steps", min=2, max=4096)
    w_lr: float = option(0.025, "Initial learning rate of the weights (SGD, cosine schedule)", min=1e-6, max=10.0)
    w_lr_min: float = option(0.001, "Learning rate of the weights at the end of the cosine schedule", min=0.0,
                             max=10.0)
    w_momentum: float = option(0.9, "Momentum of the weights' SGD", min=0.0, max=0.999)
    w_weight_decay: float = option(3e-4, "Weight decay of the weights", min=0.0, max=1.0)
    w_grad_clip: float = option(5.0, "Gradient-norm clip of the weights (0 = off)", min=0.0, max=1000.0)
    alpha_lr: float = option(3e-4, "Learning rate of the architecture parameters (Adam)", min=1e-6, max=10.0)
    alpha_weight_decay: float = option(1e-3, "Weight decay of the architecture parameters", min=0.0, max=1.0)
    init_channels: int = option(16, "Channels of the supernet's first cells", min=2, max=256)
    layers: int = option(0, "Supernet cells: in the darts space cells in all, in nb201 cells per stage "
                            "(0 = the papers': 8 for darts, 5 per stage for nb201)", min=0, max=50)
    train_portion: float = option(0.5, "Share of the training split used for weight steps; the rest drives the "
                                       "architecture steps", min=0.1, max=0.9)
    remedy: str = option("none", "Remedy for the collapse onto skip connections: early_stop (DARTS+, stop once "
                                 "the normal cell has max_skips skip connections) or darts_minus (DARTS-, an "
                                 "auxiliary skip on every edge whose weight beta decays to 0)", choices=REMEDIES)
    max_skips: int = option(2, "early_stop: stop when the derived normal cell (nb201: the cell) has this many "
                               "skip connections", min=1, max=8)
    aux_skip_beta: float = option(1.0, "darts_minus: initial weight beta of the auxiliary skip, decayed "
                                       "linearly to 0 over the search", min=0.0, max=10.0)
    final_train: bool = option(True, "Train the derived architecture from scratch after the search")
    final_epochs: int = option(10, "Epochs of that final training", min=1, max=10_000)

    def __post_init__(self) -> None:
        for spec in option_specs(type(self)):
            object.__setattr__(self, spec.name, coerce(spec, getattr(self, spec.name)))
        if self.w_lr_min > self.w_lr:
            raise ValueError("w_lr_min must not exceed w_lr")


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    alphas: dict[str, list[list[float]]]  # softmaxed, per cell type; rows = edges, columns = ops
    ops: list[str]
    edges: dict[str, list[str]]
    genotype: str
    param_free_fraction: float
    stopped_early: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# the relaxed model and its two optimisation steps --------------------------------------------------------------
class RelaxedModel:
    """The supernet's weights w and the architecture parameters alpha, held apart (two parameter groups).

    `loss` can evaluate the network at other weights (the unrolled w' of the second-order step) without
    touching the real ones, and on copies of the batch-norm statistics, so only real weight steps move them.
    """

    def __init__(self, net: Supernet, alphas: nn.ParameterDict) -> None:
        self.net = net
        self.alphas = alphas
        self.beta = 0.0  # DARTS-'s auxiliary-skip weight (0: plain DARTS)

    def weights(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def softmax(self) -> dict[str, torch.Tensor]:
        return {kind: F.softmax(alpha, dim=-1) for kind, alpha in self.alphas.items()}

    def logits(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
               update_stats: bool = True) -> torch.Tensor:
        if params is None and update_stats:
            return self.net(x, self.softmax(), self.beta)
        state = dict(self.net.named_parameters()) if params is None else dict(params)
        state.update({name: b.clone() for name, b in self.net.named_buffers()})
        return functional_call(self.net, state, (x, self.softmax(), self.beta))

    def loss(self, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
             update_stats: bool = True) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, params, update_stats), y)


class Architect:
    """The architecture step of DARTS (section 2.3), in its own object as in pt.darts.

    The bilevel problem (eq. 3-4), min_alpha L_val(w*(alpha), alpha) with w* = argmin_w L_train(w, alpha), is
    approximated by one unrolled weight step w' = w - xi grad_w L_train(w, alpha) (eq. 6), whose gradient is

        grad_alpha L_val(w', alpha) - xi grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)     (eq. 7)

    with the Hessian-vector product by central differences (eq. 8),
    [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / 2 eps, w± = w ± eps grad_w' L_val(w', alpha),
    eps = 0.01 / ||grad_w' L_val(w', alpha)||. As in the paper xi is the current weight learning rate, and the
    virtual step applies momentum and weight decay as the weight optimizer would. First order is xi = 0 (eq. 5):
    just grad_alpha L_val(w, alpha). Alpha is updated by Adam (betas 0.5, 0.999, as in the paper).
    """

    def __init__(self, model: RelaxedModel, w_optimizer: torch.optim.SGD, order: str, lr: float,
                 weight_decay: float) -> None:
        self.model = model
        self.w_optimizer = w_optimizer
        self.order = order
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=(0.5, 0.999),
                                          weight_decay=weight_decay)

    def step(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
             xi: float) -> None:
        alphas = self.model.arch_parameters()
        if self.order == "first":
            grads = torch.autograd.grad(self.model.loss(*val, update_stats=False), alphas)
        else:
            grads = self.unrolled_gradient(train, val, xi)
        self.optimizer.zero_grad(set_to_none=True)
        for alpha, g in zip(alphas, grads):
            alpha.grad = g
        self.optimizer.step()

    def virtual_step(self, train: tuple[torch.Tensor, torch.Tensor], xi: float) -> dict[str, torch.Tensor]:
        """w' = w - xi (momentum buffer + grad_w L_train(w, alpha) + weight decay w), eq. 6."""
        named = dict(self.model.net.named_parameters())
        grads = torch.autograd.grad(self.model.loss(*train, update_stats=False), list(named.values()))
        group = self.w_optimizer.param_groups[0]
        unrolled = {}
        with torch.no_grad():
            for (name, w), g in zip(named.items(), grads):
                buf = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
                step = g + group["weight_decay"] * w
                if buf is not None:
                    step = step + group["momentum"] * buf
                unrolled[name] = (w - xi * step).requires_grad_()
        return unrolled

    def unrolled_gradient(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                          xi: float) -> list[torch.Tensor]:
        alphas = self.model.arch_parameters()
        unrolled = self.virtual_step(train, xi)
        val_loss = self.model.loss(*val, params=unrolled, update_stats=False)
        grads = torch.autograd.grad(val_loss, alphas + list(unrolled.values()))
        d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
        hessian = self.hessian_vector_product(d_w, train)
        return [da - xi * h for da, h in zip(d_alpha, hessian)]

    def hessian_vector_product(self, vector: tuple[torch.Tensor, ...],
                               train: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """grad^2_{alpha,w} L_train(w, alpha) . vector by central differences (eq. 8)."""
        named = dict(self.model.net.named_parameters())
        eps = 0.01 / torch.cat([v.flatten() for v in vector]).norm().clamp_min(1e-12)
        alphas = self.model.arch_parameters()

        def grad_at(sign: float) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                moved = {name: w + sign * eps * v for (name, w), v in zip(named.items(), vector)}
            return torch.autograd.grad(self.model.loss(*train, params=moved, update_stats=False), alphas)

        plus, minus = grad_at(1.0), grad_at(-1.0)
        return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


class Searcher:
    """One search's state: the relaxed model, SGD with a cosine schedule on the weights, the Architect on alpha."""

    def __init__(self, net: Supernet, alphas: nn.ParameterDict, config: DartsConfig, device: torch.device,
                 epochs: int) -> None:
        self.device = device
        self.net = net.to(device)
        self.model = RelaxedModel(self.net, alphas.to(device))
        self.w_optimizer = torch.optim.SGD(self.model.weights(), lr=config.w_lr, momentum=config.w_momentum,
                                           weight_decay=config.w_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, T_max=epochs,
                                                                    eta_min=config.w_lr_min)
        self.architect = Architect(self.model, self.w_optimizer, config.order, config.alpha_lr,
                                   config.alpha_weight_decay)
        self.grad_clip = config.w_grad_clip

    @classmethod
    def for_space(cls, space: SearchSpace, config: DartsConfig, seed: int, input_shape: tuple[int, int, int],
                  num_classes: int, device: torch.device, epochs: int) -> Searcher:
        """The supernet of `space` (the darts space searches with `none` among the candidates, as the paper does),
        its weights and alphas drawn from `seed`."""
        aux_skip = config.remedy == "darts_minus"
        with torch.random.fork_rng(devices=[]):  # weights drawn from the seed, the global RNG left alone
            torch.manual_seed(derive_seed(seed, "darts", "init"))
            if isinstance(space, Darts):
                candidates = tuple(op for op in PRIMITIVES if op == "none" or op in space.ops)
                net: Supernet = DartsSupernet(input_shape, num_classes, config.init_channels, config.layers or 8,
                                              candidates, aux_skip)
            elif isinstance(space, NB201):
                net = NB201Supernet(input_shape, num_classes, config.init_channels, config.layers or 5,
                                    tuple(space.ops), aux_skip)
            else:
                raise ValueError(f"no supernet for the {getattr(space, 'name', space)!r} space")
        alphas = init_alphas(net, torch.Generator().manual_seed(derive_seed(seed, "darts", "alphas")))
        return cls(net, alphas, config, device, epochs)

    def step(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[float, int]:
        """One search step (Algorithm 1): alpha on a validation batch, then w on a training batch.
        Returns the training loss and the number of correct training predictions."""
        self.net.train()
        self.architect.step(train, val, xi=self.w_optimizer.param_groups[0]["lr"])
        self.w_optimizer.zero_grad(set_to_none=True)
        logits = self.model.logits(train[0])
        loss = F.cross_entropy(logits, train[1])
        loss.backward(inputs=self.model.weights())
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.weights(), self.grad_clip)
        self.w_optimizer.step()
        return loss.item(), int((logits.argmax(1) == train[1]).sum().item())

    @torch.no_grad()
    def evaluate(self, split: Split, batch_size: int = 256) -> tuple[float, float]:
        """Loss and accuracy of the supernet, normalising with each batch's statistics (and leaving the running
        ones alone), as NAS-Bench-201 does for weight-sharing searches: running statistics of a network whose
        weights and mixture move every step lag far behind, badly so when an epoch has few steps."""
        self.net.train()
        total, correct = 0.0, 0
        bounds = list(range(0, len(split), batch_size)) + [len(split)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:  # no batch of one: batch norm needs two samples
            del bounds[-2]
        for start, end in zip(bounds, bounds[1:]):
            x, y = split.x[start:end].to(self.device), split.y[start:end].to(self.device)
            logits = self.model.logits(x, update_stats=False)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum().item())
        n = max(1, len(split))
        return total / n, correct / n


# derivation (section 2.4) ---------------------------------------------------------------------------------------
def derive(space: SearchSpace, net: Supernet, weights: dict[str, torch.Tensor]) -> Any:
    """The discrete architecture of section 2.4: in the darts space each node keeps its two strongest incoming
    edges, an edge's strength being its largest non-`none` weight, with that operation; in nb201 each edge takes
    its argmax. Ties go to the earlier input and the earlier operation, so derivation is deterministic."""
    weights = {kind: w.detach().cpu() for kind, w in weights.items()}
    if isinstance(space, NB201):
        return tuple(net.candidates[int(row.argmax())] for row in weights["cell"])
    usable = [k for k, op in enumerate(net.candidates) if op != "none" and op in space.ops]
    cells = []
    for kind in ("normal", "reduce"):
        w, edges, offset = weights[kind], [], 0
        for j in range(STEPS):
            strongest = []
            for i in range(j + 2):
                k = max(usable, key=lambda k: (float(w[offset + i, k]), -k))
                strongest.append((float(w[offset + i, k]), i, net.candidates[k]))
            top = sorted(strongest, key=lambda s: (-s[0], s[1]))[:2]
            edges += [(op, i) for _, i, op in sorted(top, key=lambda s: s[1])]
            offset += j + 2
        cells.append(edges)
    return genotype(*cells)


def cell_ops(arch: Any) -> list[str]:
    return [op for op, _ in arch.normal + arch.reduce] if isinstance(arch, Genotype) else list(arch)


def skip_count(arch: Any) -> int:
    """Skip connections in the normal cell (darts) or the cell (nb201): what DARTS+ watches."""
    ops = [op for op, _ in arch.normal] if isinstance(arch, Genotype) else list(arch)
    return ops.count("skip_connect")


def param_free_fraction(arch: Any) -> float:
    ops = cell_ops(arch)
    return sum(op in PARAM_FREE for op in ops) / len(ops)


# How far above uniform (1/ops) an edge's largest weight must rise before its argmax is a choice rather than noise.
NEAR_UNIFORM_MARGIN = 0.2


@dataclass(frozen=True)
class WeightSpread:
    """How far the operation weights of a search's cells are from uniform: the edge whose largest weight stands
    furthest above its uniform share, and whether even that edge is still near uniform."""

    largest: float  # that edge's largest softmax weight
    uniform: float  # 1 / its number of candidate operations
    near_uniform: bool


def weight_spread(weights: dict[str, Sequence[Sequence[float]]],
                  margin: float = NEAR_UNIFORM_MARGIN) -> WeightSpread | None:
    """Whether the derived cell says anything yet. Section 2.4 of Liu et al. 2019 derives the discrete
    architecture by the argmax of each edge's softmax over alpha; while every edge's largest weight is below
    (1 + margin) / ops, the argmax picks among near-equal weights (alpha starts at 1e-3 noise, so the first cell is
    one of chance) and the derived cell is not yet informative. `weights` are the softmaxed alphas of an
    `EpochRecord` (rows edges, columns ops, per cell type); None when there are none."""
    rows = [row for cell in weights.values() for row in cell if len(row) > 0]
    if not rows:
        return None
    row = max(rows, key=lambda r: max(r) * len(r))  # the largest weight relative to its edge's uniform share
    largest, uniform = float(max(row)), 1.0 / len(row)
    return WeightSpread(largest, uniform, largest < uniform * (1.0 + margin))


# the strategy ---------------------------------------------------------------------------------------------------
def _detached_copy(obj: Any) -> Any:
    """Tensors copied to the CPU (never aliasing live state), containers rebuilt: a checkpoint that later steps
    cannot change and that torch.load(weights_only=True) reads back."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached_copy(v) for v in obj)
    return obj


class DartsSearch(Strategy):
    """DARTS, Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019 (Algorithm 1).

    Each edge of the cell computes a softmax(alpha)-weighted sum of every candidate operation (eq. 2); a search
    step updates alpha on a batch of the held-out half of the training split (first or second order, see
    `Architect`), then the weights w by SGD on a batch of the other half; after each epoch the discrete
    architecture is derived (section 2.4). The platform loop calls `search()` instead of propose/observe.

    Remedies for the collapse onto parameter-free operations (Zela et al., ICLR 2020):
    - `early_stop`: DARTS+ (Liang et al., arXiv:1909.06035, 2019, section 3.2, criterion 1) stops the search
      once the derived normal cell holds `max_skips` (2) or more skip connections and reports that epoch's cell.
    - `darts_minus`: DARTS- (Chu et al., ICLR 2021, eq. 4) adds beta * x (a parameter-free skip; factorized
      reduction on striding edges) to every mixed edge outside the softmax, beta decaying linearly from
      `aux_skip_beta` to 0 over the search steps, so skips need not win the softmax to carry gradients.
    """

    name = "darts"
    title = "DARTS (gradient-based)"
    Config = DartsConfig
    differentiable = True

    def __init__(self, space: SearchSpace, config: DartsConfig | None, seed: int) -> None:
        config = config or DartsConfig()
        self.check_space(config, space)
        super().__init__(space, config, seed)

    @classmethod
    def check_space(cls, config: DartsConfig, space: SearchSpace) -> None:
        """Only the darts and nb201 spaces have a supernet; a darts-space supernet needs an operation besides
        'none', and a normal cell: with 1 or 2 cells both sit where the reductions go (1/3 and 2/3 of the depth),
        the normal alphas never enter the graph and the architecture step has nothing to differentiate."""
        if not isinstance(space, (Darts, NB201)):
            raise ValueError(f"the darts strategy searches the darts and nb201 spaces only, not the "
                             f"{getattr(space, 'name', space)} space")
        if isinstance(space, Darts) and all(op == "none" for op in space.ops):
            raise OptionError("space.ops", "the darts strategy needs at least one operation other than 'none' "
                                           "in the darts space")
        if isinstance(space, Darts) and config.layers in (1, 2):
            raise OptionError("strategy.layers", f"a darts-space supernet of {config.layers} cell(s) has only "
                                                 "reduction cells, so the darts strategy cannot search its normal "
                                                 "cell: use at least 3 (or 0 for 8)")

    def propose(self) -> Any:
        raise NotImplementedError("DARTS is differentiable: the search loop calls search(), not propose()")

    def observe(self, arch: Any, value: float) -> None:
        raise NotImplementedError("DARTS is differentiable: the search loop calls search(), not observe()")

    def state_dict(self) -> dict[str, Any]:
        return {}  # a search's state travels in the checkpoints that search() hands to on_epoch

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        pass

    def search(self, dataset: Dataset, epochs: int, device: torch.device, checkpoint: dict | None,
               on_epoch: Callable[[EpochRecord, dict], None], hook: Callable[[], None] | None = None) -> Any:
        """Run (or resume from `checkpoint`) a search of `epochs` epochs; returns the derived architecture.

        After each epoch `on_epoch(record, checkpoint)` gets a checkpoint from which a later call continues
        bit for bit. `hook()` is called every few steps and may raise to cancel."""
        if epochs < 1:
            raise ValueError("epochs must be at least 1")
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # any global draw is seeded and checkpointed, then restored
            torch.manual_seed(derive_seed(self.seed, "darts", "global"))
            run = _Run(self, dataset, epochs, device)
            if checkpoint is not None:
                run.load_state_dict(checkpoint)
            return run.run(on_epoch, hook)


class _Run:
    """One call of `DartsSearch.search`: the searcher plus the data split, data order and progress."""

    def __init__(self, strategy: DartsSearch, dataset: Dataset, epochs: int, device: torch.device) -> None:
        self.strategy, self.space, self.config = strategy, strategy.space, strategy.config
        self.dataset, self.epochs, self.device = dataset, epochs, device
        self.searcher = Searcher.for_space(self.space, self.config, strategy.seed, dataset.input_shape,
                                           dataset.num_classes, device, epochs)
        n = len(dataset.train)
        n_w = round(self.config.train_portion * n)
        if n_w < 2 or n - n_w < 2:
            raise ValueError(f"the training split ({n} samples) is too small to split for DARTS")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(strategy.seed, "darts", "split")))
        self.w_idx, self.a_idx = perm[:n_w].clone(), perm[n_w:].clone()
        self.order = torch.Generator().manual_seed(derive_seed(strategy.seed, "darts", "order"))
        self.epoch = 0
        self.genotype: str | None = None
        self.stopped = False

    def steps_per_epoch(self) -> int:
        return min(math.ceil(len(self.w_idx) / self.config.batch_size),
                   math.ceil(len(self.a_idx) / self.config.batch_size))

    def run(self, on_epoch: Callable[[EpochRecord, dict], None], hook: Callable[[], None] | None) -> Any:
        while self.epoch < self.epochs and not self.stopped:
            started = time.perf_counter()
            train_loss, train_acc = self.train_epoch(hook)
            self.epoch += 1
            val_loss, val_acc = self.searcher.evaluate(self.dataset.val)
            weights = self.searcher.model.softmax()
            arch = derive(self.space, self.searcher.net, weights)
            self.genotype = self.space.to_str(arch)
            self.stopped = self.config.remedy == "early_stop" and skip_count(arch) >= self.config.max_skips
            net = self.searcher.net
            record = EpochRecord(
                epoch=self.epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                alphas={kind: w.detach().cpu().tolist() for kind, w in weights.items()},
                ops=list(net.candidates), edges=net.edge_labels(), genotype=self.genotype,
                param_free_fraction=param_free_fraction(arch), stopped_early=self.stopped,
                seconds=time.perf_counter() - started)
            on_epoch(record, self.state_dict())
        if self.genotype is None:  # resumed from a finished search with nothing left to run
            raise ValueError("checkpoint without a derived architecture")
        return self.space.from_str(self.genotype)

    def train_epoch(self, hook: Callable[[], None] | None) -> tuple[float, float]:
        batch, dev, train = self.config.batch_size, self.device, self.dataset.train
        w_order = self.w_idx[torch.randperm(len(self.w_idx), generator=self.order)]
        a_order = self.a_idx[torch.randperm(len(self.a_idx), generator=self.order)]
        steps = self.steps_per_epoch()
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(steps):
            if hook is not None and s % HOOK_EVERY == 0:
                hook()
            tw, ta = w_order[s * batch:(s + 1) * batch], a_order[s * batch:(s + 1) * batch]
            if len(tw) < 2 or len(ta) < 2:  # batch norm cannot normalise a single sample
                continue
            if self.config.remedy == "darts_minus":  # DARTS-: beta decays linearly to 0 over all steps
                done = (self.epoch * steps + s) / (self.epochs * steps)
                self.searcher.model.beta = self.config.aux_skip_beta * (1.0 - done)
            loss, right = self.searcher.step((train.x[tw].to(dev), train.y[tw].to(dev)),
                                             (train.x[ta].to(dev), train.y[ta].to(dev)))
            loss_sum += loss * len(tw)
            correct += right
            seen += len(tw)
        self.searcher.scheduler.step()
        return loss_sum / max(1, seen), correct / max(1, seen)

    def state_dict(self) -> dict[str, Any]:
        s = self.searcher
        state = {
            "format": CHECKPOINT_FORMAT, "seed": self.strategy.seed, "epoch": self.epoch, "epochs": self.epochs,
            "genotype": self.genotype, "stopped": self.stopped, "beta": s.model.beta,
            "weights": s.net.state_dict(), "alphas": {k: a for k, a in s.model.alphas.items()},
            "w_optimizer": s.w_optimizer.state_dict(), "alpha_optimizer": s.architect.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "split": {"weights": self.w_idx, "alphas": self.a_idx},
            "order_rng": self.order.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return _detached_copy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a DARTS checkpoint (format {state.get('format')!r})")
        if state["seed"] != self.strategy.seed or state["epochs"] != self.epochs:
            raise ValueError(f"the checkpoint belongs to a search with seed {state['seed']} over {state['epochs']} "
                             f"epochs, not seed {self.strategy.seed} over {self.epochs}")
        s = self.searcher
        s.net.load_state_dict(state["weights"])
        with torch.no_grad():
            for kind, alpha in s.model.alphas.items():
                alpha.copy_(state["alphas"][kind])
        s.w_optimizer.load_state_dict(state["w_optimizer"])
        s.architect.optimizer.load_state_dict(state["alpha_optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        s.model.beta = float(state["beta"])
        self.w_idx, self.a_idx = state["split"]["weights"].clone(), state["split"]["alphas"].clone()
        self.order.set_state(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch, self.genotype, self.stopped = int(state["epoch"]), state["genotype"], bool(state["stopped"])
