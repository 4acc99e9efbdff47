"""Bayesian optimisation: a Gaussian process over Weisfeiler-Lehman graph features (or one-hot tokens), expected
improvement as acquisition."""
from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from nasjobs.options import option
from nasjobs.rng import rng_state, set_rng_state
from nasjobs.spaces.base import SearchSpace
from nasjobs.strategies.base import Observed, Outstanding, Strategy
from nasjobs.strategies.encodings import one_hot_features, wl_features
from nasjobs.strategies.race import FinalRace, Racing, race_options

log = logging.getLogger(__name__)
# Architectures over the deployment limits a checkpoint remembers (the latest), so candidates leave them out.
INFEASIBLE_KEPT = 1000


@dataclass(frozen=True)
class BOConfig:
    encoding: str = option("graph", "How the model sees an architecture: 'graph' counts Weisfeiler-Lehman features "
                                    "of its operations graph (spaces without one use 'one_hot'); 'one_hot' encodes "
                                    "each token position", choices=("graph", "one_hot"))
    wl_iterations: int = option(1, "Weisfeiler-Lehman relabellings of the 'graph' encoding (0: operation counts "
                                   "only; 1: each operation with its inputs)", min=0, max=4)
    initial: int = option(10, "Random architectures evaluated before the model is used", min=1, max=10_000)
    parents: int = option(5, "Best architectures whose neighbours are candidates", min=1, max=1000)
    max_neighbours: int = option(100, "Neighbours of a parent scored at most (a random subset beyond)", min=1,
                                 max=100_000)
    random_candidates: int = option(200, "Random architectures scored besides the neighbours", min=0,
                                    max=100_000)
    refit_every: int = option(10, "Observations between refits of the kernel's hyperparameters", min=1, max=1000)
    log_error: bool = option(True, "Model -log(1 - value): spreads the good end, tames failed networks (only while "
                                   "every value is an accuracy in [0, 1]; other figures are modelled as they are)")
    xi: float = option(0.0, "Exploration margin of expected improvement, in model units", min=0.0, max=10.0)
    incumbent_evaluations: int = option(1, "Evaluations the best architecture (highest mean) needs before a new one "
                                           "is tried; each costs one trial of the budget (1: never re-evaluate)",
                                        min=1, max=100)
    contenders: int = option(1, "How many of the best architectures (by mean) get incumbent_evaluations", min=1,
                             max=1000)
    readings_every: int = option(0, "The leaders need one reading more per this many architectures evaluated, "
                                    "so identification sharpens as the search converges (0: off)", min=0,
                                 max=100_000)
    model_contender: bool = option(True, "The architecture the model rates best also gets incumbent_evaluations")
    gp_points: int = option(300, "Architectures the Gaussian process is fitted to at most; beyond, the best gp_best, "
                                 "the latest gp_recent and a random sample of the others", min=10, max=100_000)
    gp_best: int = option(150, "Best architectures (by mean) always among the gp_points", min=0, max=100_000)
    gp_recent: int = option(50, "Latest architectures always among the gp_points", min=0, max=100_000)
    final_race: float = race_options()[0]
    race_leaders: int = race_options()[1]

    def __post_init__(self) -> None:
        if self.gp_best + self.gp_recent > self.gp_points:
            raise ValueError("gp_best and gp_recent together cannot exceed gp_points")


class BayesianOptimisation(Racing, Strategy):
    """Model-based search after BANANAS (White, Neiswanger & Savani 2021, Algorithm 1), with scikit-learn's
    Gaussian process as the surrogate instead of a neural ensemble.

    After `initial` random architectures, each proposal maximises expected improvement (Jones et al. 1998,
    EI(x) = (μ(x) − y* − ξ)Φ(z) + σ(x)φ(z), z = (μ(x) − y* − ξ)/σ(x)) over unseen candidates: the
    neighbours of the best architectures plus random samples (BANANAS' acquisition optimisation). The kernel is
    c·RBF + white noise, fitted to each architecture's mean.

    Inputs (`encoding`): by default the Weisfeiler-Lehman subtree features of the space's operations graph
    (`SearchSpace.op_graph`; NAS-BOWL, Ru et al. 2021, whose WL kernel is the dot product of these counts; here
    they feed the RBF kernel instead, which measured better), so the model sees which operations follow which
    wherever they sit in the cell; with `one_hot`, or on a space without an operations graph, the one-hot
    encoding of `to_tokens`. The model is fitted to -log(1 − accuracy) (`log_error`), which spreads the good end
    of the scale where the search decides.

    Measured on the NAS-Bench-201 bench (CIFAR-10, 100 evaluations, test accuracy of the reported architecture,
    mean of 100 runs): one-hot inputs 94.20; the graph encoding with one relabelling 94.23 (with one-hot inputs,
    runs whose early leaders held skip connections on other edges than the best cells' stayed in that basin: 16
    of 100, against 9 with the graph); with two relabellings 94.22; candidates from the best 5 instead of 10
    and the log target, together 94.29, and 94.27 on the next 100 seeds (the best 5 alone: 94.28 / 94.24, the
    log target alone 94.27); 1,000 random candidates instead of 200 did not pay (94.26 / 94.17).

    Re-evaluation (off by default): with `incumbent_evaluations` > 1 or `readings_every`, the strategy races its
    leaders as SMAC's intensification does (Hutter, Hoos & Leyton-Brown 2011): before trying a new architecture
    it measures the best by mean (and the model's favourite) again until each holds enough readings, so the
    experiment's reported best (highest mean) is not a single lucky validation seed. Every re-evaluation costs
    one trial of the budget. On the NAS-Bench-201 bench this did not pay at 100 or 300 evaluations on CIFAR-10
    (the best architectures there also give the highest single readings, and a mean of 2 or 3 readings drawn
    from 2 or 3 seeds separates them no better), and helped a little on CIFAR-100; hence the default.
    The final race (`FinalRace`, on by default as for the other strategies) measures the leaders only at the end
    of the budget instead.

    At scale (thousands of cheap trials) an exact GP costs O(n³) a fit. Beyond `gp_points` architectures it is
    fitted to a subset of the data (Rasmussen & Williams 2006, "Gaussian Processes for Machine Learning", Section
    8.3.3, subset of datapoints): the `gp_best` best by mean (where expected improvement looks), the `gp_recent`
    latest (where the search is now) and a uniform sample of the rest drawn with the strategy's generator (the
    model's view of the whole space), so a proposal costs the same at 10,000 trials as at 300. Up to the bound
    the model is the exact one, so the figures above are unchanged. Encodings are computed once per
    architecture. The checkpoint holds the random state, the kernel's hyperparameters and two counters; the
    readings come back from the trials.

    Parallel trials (the constant liar, Ginsbourger, Le Riche & Carraro 2010, "Kriging is well-suited to
    parallelize optimization", Section 3.2, Algorithm 2): a proposal made while others are in flight conditions the
    Gaussian process on them too, each with the same lie L for its unknown value, before expected improvement is
    maximised; without it k parallel proposals would be k copies of the same argmax. L is the worst value observed
    so far (in our maximisation; the paper, which minimises, calls this pessimistic lie CL[max]): it lowers the
    posterior mean and shrinks the uncertainty at and around each point in flight, so the next proposal goes
    elsewhere, and it leaves the incumbent y* alone. The kernel's hyperparameters are fitted to true values only
    (the lies only condition the model, as in the paper). The random initial design counts the points in flight
    towards its `initial`, and candidates skip them; intensification and the final race skip leaders in flight
    (their readings are on their way). The checkpoint holds the proposals in flight (at most 2k, the oldest
    forgotten beyond: the planner may drop one and never observe it).

    Deployment limits: a proposal the planner skips as over the limits (`skipped`) is left out of the candidates
    from then on (the latest `INFEASIBLE_KEPT` of them, kept in the checkpoint), so expected improvement does not
    pick the same large neighbour again and again; the model is not told a figure for it, since none was measured
    and the history a restore gives back could not hold it.
    """

    name = "bo"
    title = "Bayesian optimisation (GP + EI)"
    Config = BOConfig

    @property  # type: ignore[override]
    def reevaluates(self) -> bool:
        """Whether proposing an evaluated architecture measures it again (the platform reads this flag)."""
        return self.config.incumbent_evaluations > 1 or self.config.readings_every > 0 or self.race.racing

    def __init__(self, space: SearchSpace, config: BOConfig, seed: int) -> None:
        super().__init__(space, config, seed)
        self.rng = random.Random(seed)
        # Each architecture's readings, in order first observed, are the race's (`FinalRace.readings`): the first
        # value told, then each re-evaluation; a repeat answered from the record is no new reading.
        self.race = FinalRace(config.final_race, config.race_leaders)
        self.observations = 0  # values told, repeats included: the refit schedule counts them
        self.theta: list[float] | None = None  # kernel hyperparameters (log scale) of the last fit
        self.fitted_at = 0  # observations when the hyperparameters were last fitted
        self.features: dict[str, dict[str, float]] = {}  # encoding of each architecture met (a cache, not state)
        self.subset_logged = False
        self.outstanding = Outstanding()
        self.infeasible: dict[str, None] = {}  # skipped as over the deployment limits, oldest first (bounded)

    def set_parallelism(self, k: int) -> None:
        self.outstanding.set_parallelism(k)

    # encoding and model ---------------------------------------------------------------------------------------
    def _encode_one(self, key: str) -> dict[str, float]:
        cached = self.features.get(key)
        if cached is not None:
            return cached
        arch = self.space.from_str(key)
        graph = self.space.op_graph(arch) if self.config.encoding == "graph" else None
        features = one_hot_features(self.space.to_tokens(arch)) if graph is None else \
            wl_features(graph, self.config.wl_iterations)
        self.features[key] = features
        return features

    def _encoder(self, keys: list[str]) -> Callable[[list[str]], np.ndarray]:
        """Dense encodings of (a subset of) `keys` over the features they hold, in name order: a zero column
        changes no distance, and a fixed order makes a resumed run's arithmetic the uninterrupted run's."""
        rows = {key: self._encode_one(key) for key in keys}
        columns = {name: i for i, name in enumerate(sorted({f for row in rows.values() for f in row}))}

        def encode(subset: list[str]) -> np.ndarray:
            x = np.zeros((len(subset), len(columns)))
            for r, key in enumerate(subset):
                for name, count in rows[key].items():
                    x[r, columns[name]] = count
            return x

        return encode

    def _target(self, values: list[float]) -> np.ndarray:
        y = np.asarray(values, dtype=np.float64)
        if self.config.log_error and np.all((y >= 0.0) & (y <= 1.0)):
            y = -np.log(np.clip(1.0 - y, 1e-4, None))
        return y

    def _kernel(self) -> Any:
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(2.0, (0.1, 100.0))
                  + WhiteKernel(0.01, (1e-6, 1.0)))
        if self.theta is not None:
            kernel = kernel.clone_with_theta(np.asarray(self.theta))
        return kernel

    def _mean(self, key: str) -> float:
        readings = self.race.readings[key]
        return sum(readings) / len(readings)

    def _model(self, encode: Callable[[list[str]], np.ndarray], points: list[str]) -> GaussianProcessRegressor:
        kernel = self._kernel()
        refit = self.theta is None or self.observations - self.fitted_at >= self.config.refit_every
        gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer="fmin_l_bfgs_b" if refit else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # One row per architecture, its mean reading: fitted to every reading instead, the search found the
            # optimum's neighbourhood less often (bench, CIFAR-10, 300 evaluations).
            readings = self.race.readings
            gp.fit(encode(points), self._target([sum(readings[k]) / len(readings[k]) for k in points]))
        if refit:
            self.theta = gp.kernel_.theta.tolist()
            self.fitted_at = self.observations
        return gp

    def _lying_model(self, encode: Callable[[list[str]], np.ndarray], points: list[str],
                     in_flight: list[str]) -> GaussianProcessRegressor:
        """The constant liar's model: the fitted kernel, conditioned on `points` and on the architectures in flight,
        each told the worst value observed (CL[max] of Ginsbourger et al. 2010, who minimise)."""
        lie = min(self._mean(k) for k in self.race.readings)
        gp = GaussianProcessRegressor(self._kernel(), normalize_y=True, optimizer=None)
        gp.fit(encode(points + in_flight), self._target([self._mean(k) for k in points] + [lie] * len(in_flight)))
        return gp

    def _points(self, ranking: list[str]) -> list[str]:
        """The architectures the model is fitted to, in order first observed: all of them up to `gp_points`;
        beyond, the best, the latest and a random sample of the others (subset of datapoints)."""
        order = list(self.race.readings)
        bound = self.config.gp_points
        if len(order) <= bound:
            return order
        if not self.subset_logged:
            log.info("bo: %d architectures observed, more than gp_points=%d: the Gaussian process is fitted from now "
                     "on to the best %d, the latest %d and %d drawn at random from the others", len(order), bound,
                     self.config.gp_best, self.config.gp_recent, bound - self.config.gp_best - self.config.gp_recent)
            self.subset_logged = True
        chosen = set(ranking[:self.config.gp_best])
        chosen.update(order[len(order) - self.config.gp_recent:])
        others = [k for k in order if k not in chosen]
        chosen.update(self.rng.sample(others, bound - len(chosen)))
        return [k for k in order if k in chosen]

    def _to_reevaluate(self, ranking: list[str], evaluated: list[str], posterior: np.ndarray,
                       in_flight: set[str]) -> str | None:
        """Intensification (Hutter, Hoos & Leyton-Brown 2011, SMAC, Procedure "Intensify"): the leaders are
        measured again until each holds `incumbent_evaluations` readings. The leaders are the best
        `contenders` by mean (a single lucky validation seed cannot stay the reported best) and, with
        `model_contender`, the evaluated architecture of highest posterior mean (one whose single reading was
        unlucky but whose neighbours say it is good gets a second chance)."""
        if not self.reevaluates:
            return None
        readings = self.race.readings
        leaders = ranking[:self.config.contenders]
        if self.config.model_contender:
            leaders.append(evaluated[int(np.argmax(posterior))])
        needed = self.config.incumbent_evaluations
        if self.config.readings_every:
            needed = max(needed, 1 + len(ranking) // self.config.readings_every)
        for key in leaders:  # one in flight is skipped: its reading is on its way, and none runs twice at once
            if key not in in_flight and len(readings[key]) < needed:
                return key
        return None

    # candidates -----------------------------------------------------------------------------------------------
    def _candidates(self, ranking: list[str]) -> list[str]:
        """Unseen neighbours of the best architectures so far, plus random samples (BANANAS' mutation-based
        acquisition optimisation, with a local-search step in place of random mutations)."""
        out = []
        for key in ranking[:self.config.parents]:
            neighbours = [self.space.to_str(n) for n in self.space.neighbours(self.space.from_str(key))]
            if len(neighbours) > self.config.max_neighbours:
                neighbours = self.rng.sample(neighbours, self.config.max_neighbours)
            out += neighbours
        out += [self.space.to_str(self.space.sample(self.rng)) for _ in range(self.config.random_candidates)]
        seen = self.race.readings
        return [k for k in dict.fromkeys(out) if k not in seen and k not in self.infeasible]

    # ask / tell -----------------------------------------------------------------------------------------------
    def _sample(self) -> str:
        """A random architecture, not one in flight (a few redraws)."""
        key = self.space.to_str(self.space.sample(self.rng))
        for _ in range(100 if len(self.outstanding) else 0):
            if key not in self.outstanding:
                break
            key = self.space.to_str(self.space.sample(self.rng))
        return key

    def propose(self) -> Any:
        again = self.propose_again()
        if again is not None:
            return self.space.from_str(again)
        key = self._choose()
        self.note_proposal(key)
        return self.space.from_str(key)

    def _choose(self) -> str:
        readings = self.race.readings
        in_flight = [k for k in dict.fromkeys(self.outstanding.keys()) if k not in readings]
        if len(readings) + len(in_flight) < self.config.initial or not readings:
            return self._sample()
        ranking = self.race.ranking()
        candidates = [k for k in self._candidates(ranking) if k not in in_flight]
        points = self._points(ranking)
        evaluated = sorted(points)
        encode = self._encoder(evaluated + candidates + in_flight)
        gp = self._model(encode, points)
        posterior = gp.predict(encode(evaluated))
        again = self._to_reevaluate(ranking, evaluated, posterior, set(self.outstanding.keys()))
        if again is not None:
            return again
        if not candidates:
            return self._sample()
        if in_flight:  # the constant liar
            gp = self._lying_model(encode, points, in_flight)
            posterior = gp.predict(encode(evaluated))
        mu, sigma = gp.predict(encode(candidates), return_std=True)
        incumbent = float(np.max(posterior))
        sigma = np.maximum(sigma, 1e-12)
        z = (mu - incumbent - self.config.xi) / sigma
        ei = (mu - incumbent - self.config.xi) * norm.cdf(z) + sigma * norm.pdf(z)
        return candidates[int(np.argmax(ei))]

    def observe(self, arch: Any, value: float) -> None:
        key = self.space.to_str(arch)
        self.race.observe(key, float(value), self.observed_reevaluating(key))
        self.observations += 1

    def skipped(self, arch: Any, value: float | None) -> None:
        key = self.space.to_str(arch)
        self.outstanding.take(key)
        self.infeasible[key] = None
        while len(self.infeasible) > INFEASIBLE_KEPT:
            del self.infeasible[next(iter(self.infeasible))]

    def state_dict(self) -> dict[str, Any]:
        state = {"rng": rng_state(self.rng), "theta": self.theta, "fitted_at": self.fitted_at,
                 "observations": self.observations, "outstanding": self.outstanding.state()}
        if self.infeasible:  # only with deployment limits: other checkpoints stay as they were
            state["infeasible"] = list(self.infeasible)
        return state

    def load_state_dict(self, state: dict[str, Any], history: Sequence[Observed] = ()) -> None:
        set_rng_state(self.rng, state["rng"])
        self.race.restore(history)
        self.theta = None if state["theta"] is None else [float(t) for t in state["theta"]]
        self.fitted_at = int(state["fitted_at"])
        self.observations = int(state.get("observations", self.race.spent))
        self.outstanding.load(state.get("outstanding", ()))
        self.infeasible = dict.fromkeys(state.get("infeasible", ()))
