"""REINFORCE with an LSTM controller that writes an architecture token by token (Zoph & Le 2017)."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from nasjobs.options import option
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Outstanding, Strategy


@dataclass(frozen=True)
class ReinforceConfig:
    hidden: int = option(64, "LSTM hidden size", min=4, max=1024)
    lr: float = option(0.01, "Adam learning rate of the controller", min=1e-6, max=1.0)
    baseline_decay: float = option(0.9, "Decay of the moving-average reward baseline", min=0.0, max=0.9999)
    entropy_weight: float = option(1e-3, "Weight of the entropy bonus", min=0.0, max=10.0)
    batch_size: int = option(5, "Architectures m sampled per controller update", min=1, max=1000)
    temperature: float = option(1.0, "Softmax temperature of the logits", min=0.01, max=100.0)
    tanh_constant: float = option(2.5, "Logits clipped to c·tanh(logits / temperature); 0 turns clipping off",
                                  min=0.0, max=100.0)


class Controller(nn.Module):
    """An LSTM cell run once per token position; the previous token (its embedding) is the next input."""

    def __init__(self, vocabulary: list[list[str]], hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.embeddings = nn.ModuleList(nn.Embedding(len(v), hidden) for v in vocabulary)
        self.heads = nn.ModuleList(nn.Linear(hidden, len(v)) for v in vocabulary)

    def logits(self, state: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, position: int,
               config: ReinforceConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, c = self.cell(x, state)
        out = self.heads[position](h) / config.temperature
        if config.tanh_constant > 0:
            out = config.tanh_constant * torch.tanh(out)
        return out, (h, c)

    def run(self, config: ReinforceConfig, tokens: Sequence[int] | None = None,
            generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample a token sequence (or score the given one): tokens, summed log-probability, summed entropy."""
        state = (torch.zeros(1, self.hidden), torch.zeros(1, self.hidden))
        x = self.start
        chosen: list[int] = []
        log_prob = torch.zeros(())
        entropy = torch.zeros(())
        for position in range(len(self.heads)):
            logits, state = self.logits(state, x, position, config)
            log_p = torch.log_softmax(logits, dim=-1)[0]
            if tokens is None:
                token = int(torch.multinomial(log_p.exp(), 1, generator=generator).item())
            else:
                token = int(tokens[position])
            chosen.append(token)
            log_prob = log_prob + log_p[token]
            entropy = entropy - (log_p.exp() * log_p).sum()
            x = self.embeddings[position](torch.tensor([token]))
        return chosen, log_prob, entropy


def _encode(obj: Any) -> str:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(text: str) -> Any:
    return torch.load(io.BytesIO(base64.b64decode(text)), weights_only=True)


class Reinforce(Strategy):
    """Zoph & Le 2017, "Neural architecture search with reinforcement learning", Section 3.2 (Eq. 2):

        ∇J ≈ 1/m Σ_k Σ_t ∇ log P(a_t | a_(t-1):1; θ) (R_k − b)

    The controller emits one token per position of the space's `vocabulary()`; the reward R_k is the observed
    validation accuracy; b is an exponential moving average of past rewards. An entropy bonus keeps the
    policy from collapsing early, and logits pass through a temperature and c·tanh clipping (as in ENAS, Pham
    et al. 2018). One Adam step per batch of m observed architectures.

    With k parallel trials the controller samples k architectures from its current policy, as the paper's
    controller replicas each sample m children trained in parallel (Section 3.3). Each value, in whatever order it
    arrives, is matched to the tokens sampled for its architecture, and its log-probability is recomputed from
    those tokens under the controller at update time. The update batch is max(m, k): with k <= m it stays m,
    and with k > m it grows to k, so that a sample is never drawn from a policy more than one update older than
    the one it trains (with a batch of m < k, the k - m samples still in flight at an update would be a further
    update stale for every step). With k = 1 it is m, as before. The tokens of the proposals in flight are in the
    checkpoint (at most 2k, the oldest forgotten beyond: the planner may drop a proposal; a value that comes
    without its tokens is scored from the architecture's `to_tokens`).
    """

    name = "reinforce"
    title = "REINFORCE controller"
    Config = ReinforceConfig

    def __init__(self, space: SearchSpace, config: ReinforceConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
            torch.manual_seed(seed % 2**63)
            self.controller = Controller(space.vocabulary(), config.hidden)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed % 2**63)
        self.baseline: float | None = None
        self.proposed = Outstanding()  # key -> the tokens sampled for it, until observed
        self.batch: list[tuple[list[int], float]] = []  # (tokens, reward) awaiting the next update
        self.batch_size = config.batch_size

    def set_parallelism(self, k: int) -> None:
        self.proposed.set_parallelism(k)
        self.batch_size = max(self.config.batch_size, k)

    def propose(self) -> Any:
        with torch.no_grad():
            tokens, _, _ = self.controller.run(self.config, generator=self.generator)
        arch = self.space.from_tokens(tokens)
        self.proposed.add(self.space.to_str(arch), tokens)
        return arch

    def observe(self, arch: Any, value: float) -> None:
        found, tokens = self.proposed.take(self.space.to_str(arch))
        self.batch.append((list(tokens) if found else self.space.to_tokens(arch), float(value)))
        if len(self.batch) >= self.batch_size:
            self._update()

    def skipped(self, arch: Any, value: float | None) -> None:
        """Over the deployment limits, never trained: with a value (the failure policy's worst figure so far), a
        reward like any other, so the controller learns to write smaller networks; the batch holding it is in the
        checkpoint, so a restored run learns the same. Without one, its tokens are only forgotten."""
        found, tokens = self.proposed.take(self.space.to_str(arch))
        if value is None:
            return
        self.batch.append((list(tokens) if found else self.space.to_tokens(arch), float(value)))
        if len(self.batch) >= self.batch_size:
            self._update()

    def _update(self) -> None:
        rewards = [r for _, r in self.batch]
        if self.baseline is None:
            self.baseline = sum(rewards) / len(rewards)
        loss = torch.zeros(())
        for tokens, reward in self.batch:
            _, log_prob, entropy = self.controller.run(self.config, tokens=tokens)
            loss = loss - (reward - self.baseline) * log_prob - self.config.entropy_weight * entropy
        self.optimizer.zero_grad()
        (loss / len(self.batch)).backward()
        self.optimizer.step()
        for r in rewards:
            self.baseline = self.config.baseline_decay * self.baseline + (1 - self.config.baseline_decay) * r
        self.batch = []

    def probabilities(self, prefix: Sequence[int] = ()) -> list[float]:
        """The controller's distribution over the tokens of position len(prefix), given the earlier tokens."""
        with torch.no_grad():
            state = (torch.zeros(1, self.controller.hidden), torch.zeros(1, self.controller.hidden))
            x = self.controller.start
            for position in range(len(prefix) + 1):
                logits, state = self.controller.logits(state, x, position, self.config)
                if position < len(prefix):
                    x = self.controller.embeddings[position](torch.tensor([int(prefix[position])]))
            return torch.softmax(logits, dim=-1)[0].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"controller": _encode(self.controller.state_dict()), "optimizer": _encode(self.optimizer.state_dict()),
                "generator": _encode(self.generator.get_state()), "baseline": self.baseline,
                "proposed": self.proposed.state(), "batch": [[t, r] for t, r in self.batch]}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        """The controller is the whole memory of the search (its weights and Adam's moments, a fixed size): the
        history is not needed."""
        self.controller.load_state_dict(_decode(state["controller"]))
        self.optimizer.load_state_dict(_decode(state["optimizer"]))
        self.generator.set_state(_decode(state["generator"]))
        self.baseline = state["baseline"]
        self.proposed.load([(k, list(t)) for k, t in state["proposed"]])
        self.batch = [(list(t), float(r)) for t, r in state["batch"]]
