"""Bayesian optimisation: a Gaussian process over one-hot token encodings, expected improvement as acquisition."""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Strategy


@dataclass(frozen=True)
class BOConfig:
    initial: int = option(10, "Random architectures evaluated before the model is used", min=1, max=10_000)
    parents: int = option(10, "Best architectures whose neighbours are candidates", min=1, max=1000)
    max_neighbours: int = option(100, "Neighbours of a parent scored at most (a random subset beyond)", min=1,
                                 max=100_000)
    random_candidates: int = option(200, "Random architectures scored besides the neighbours", min=0,
                                    max=100_000)
    refit_every: int = option(10, "Observations between refits of the kernel's hyperparameters", min=1, max=1000)
    log_error: bool = option(True, "Model -log(1 - value): spreads the good end, tames failed networks")
    xi: float = option(0.0, "Exploration margin of expected improvement, in model units", min=0.0, max=10.0)


class BayesianOptimisation(Strategy):
    """Model-based search after BANANAS (White, Neiswanger & Savani 2021, Algorithm 1), with scikit-learn's
    Gaussian process as the surrogate instead of a neural ensemble.

    After `initial` random architectures, each proposal maximises expected improvement (Jones et al. 1998,
    EI(x) = (μ(x) − y* − ξ)Φ(z) + σ(x)φ(z), z = (μ(x) − y* − ξ)/σ(x)) over unseen candidates: the
    neighbours of the best architectures plus random samples (BANANAS' acquisition optimisation). Inputs are one-hot encodings of `to_tokens`; the kernel is
    c·RBF + white noise, so repeated measurements are treated as noisy and `recommend()` names the evaluated
    architecture with the highest posterior mean, not the luckiest single reading.
    """

    name = "bo"
    title = "Bayesian optimisation (GP + EI)"
    Config = BOConfig

    def __init__(self, space: SearchSpace, config: BOConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        self.vocab_sizes = [len(v) for v in space.vocabulary()]
        self.offsets = np.cumsum([0] + self.vocab_sizes[:-1])
        self.keys: list[str] = []  # observed architectures, in order (a key may repeat)
        self.values: list[float] = []
        self.theta: list[float] | None = None  # kernel hyperparameters (log scale) of the last fit
        self.fitted_at = 0  # observations when the hyperparameters were last fitted
        self._rows: dict[str, np.ndarray] = {}  # encodings computed so far

    # encoding and model ---------------------------------------------------------------------------------------
    def _encode(self, keys: list[str]) -> np.ndarray:
        x = np.zeros((len(keys), sum(self.vocab_sizes)))
        for row, key in enumerate(keys):
            if key not in self._rows:
                self._rows[key] = self.offsets + np.asarray(self.space.to_tokens(self.space.from_str(key)))
            x[row, self._rows[key]] = 1.0
        return x

    def _target(self, values: list[float]) -> np.ndarray:
        y = np.asarray(values, dtype=np.float64)
        if self.config.log_error:
            y = -np.log(np.clip(1.0 - y, 1e-4, None))
        return y

    def _model(self) -> GaussianProcessRegressor:
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(2.0, (0.1, 100.0))
                  + WhiteKernel(0.01, (1e-6, 1.0)))
        if self.theta is not None:
            kernel = kernel.clone_with_theta(np.asarray(self.theta))
        refit = self.theta is None or len(self.values) - self.fitted_at >= self.config.refit_every
        gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer="fmin_l_bfgs_b" if refit else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(self._encode(self.keys), self._target(self.values))
        if refit:
            self.theta = gp.kernel_.theta.tolist()
            self.fitted_at = len(self.values)
        return gp

    # candidates -----------------------------------------------------------------------------------------------
    def _candidates(self, seen: set[str]) -> list[str]:
        """Unseen neighbours of the best architectures so far, plus random samples (BANANAS' mutation-based
        acquisition optimisation, with a local-search step in place of random mutations)."""
        value: dict[str, float] = {}
        for k, v in zip(self.keys, self.values):
            value[k] = max(v, value.get(k, v))
        best = sorted(seen, key=lambda k: (-value[k], k))[:self.config.parents]
        out = []
        for key in best:
            neighbours = [self.space.to_str(n) for n in self.space.neighbours(self.space.from_str(key))]
            if len(neighbours) > self.config.max_neighbours:
                neighbours = self.rng.sample(neighbours, self.config.max_neighbours)
            out += neighbours
        out += [self.space.to_str(self.space.sample(self.rng)) for _ in range(self.config.random_candidates)]
        return [k for k in dict.fromkeys(out) if k not in seen]

    # ask / tell -----------------------------------------------------------------------------------------------
    def propose(self) -> Any:
        seen = set(self.keys)
        if len(seen) < self.config.initial:
            return self.space.sample(self.rng)
        candidates = self._candidates(seen)
        if not candidates:
            return self.space.sample(self.rng)
        gp = self._model()
        mu, sigma = gp.predict(self._encode(candidates), return_std=True)
        incumbent = float(np.max(gp.predict(self._encode(sorted(seen)))))
        sigma = np.maximum(sigma, 1e-12)
        z = (mu - incumbent - self.config.xi) / sigma
        ei = (mu - incumbent - self.config.xi) * norm.cdf(z) + sigma * norm.pdf(z)
        return self.space.from_str(candidates[int(np.argmax(ei))])

    def observe(self, arch: Any, value: float) -> None:
        self.keys.append(self.space.to_str(arch))
        self.values.append(float(value))

    def recommend(self) -> Any:
        """The evaluated architecture with the highest posterior mean (the model's denoised estimate)."""
        if len(self.keys) < 2:
            return self.space.from_str(self.keys[0]) if self.keys else None
        seen = sorted(set(self.keys))
        theta, fitted_at = self.theta, self.fitted_at
        mu = self._model().predict(self._encode(seen))
        self.theta, self.fitted_at = theta, fitted_at  # recommending must not change what is proposed next
        return self.space.from_str(seen[int(np.argmax(mu))])

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "keys": list(self.keys), "values": list(self.values),
                "theta": self.theta, "fitted_at": self.fitted_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])
        self.keys = list(state["keys"])
        self.values = [float(v) for v in state["values"]]
        self.theta = None if state["theta"] is None else [float(t) for t in state["theta"]]
        self.fitted_at = int(state["fitted_at"])
