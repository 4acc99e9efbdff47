"""The search loop: a strategy proposes, an estimator evaluates, a store persists each trial as it finishes."""
from __future__ import annotations

import bisect
import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import BENCHMARK_KIND, DATASETS
from nasjobs.estimators import ESTIMATORS
from nasjobs.metrics import count_macs, count_params
from nasjobs.options import OptionError, config_to_json, parse_config
from nasjobs.rng import derive_seed
from nasjobs.spaces import SPACES
from nasjobs.strategies import STRATEGIES, Observed
from nasjobs.training import between_batches

log = logging.getLogger(__name__)

COMPONENTS = ("space", "strategy", "estimator")
# How many proposals in a row may repeat evaluated architectures before the space counts as exhausted.
MAX_REPEATED_PROPOSALS = 1000


class SpecError(ValueError):
    """An invalid experiment specification; `field` names the offending field (`space.max_layers`, `budget`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SearchCancelled(Exception):
    """Raised by a store's heartbeat when the experiment was cancelled; the loop stops where it is."""


@dataclass(frozen=True)
class ExperimentSpec:
    dataset: str
    space: str
    strategy: str
    estimator: str
    budget: int
    epochs: int
    seed: int
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # component -> option -> value
    top_k: int = 5
    patience: int = 0  # stop after this many trials without a better best (0: never)
    max_seconds: int = 0  # stop once the search has run this long, summed over resumptions (0: no limit)

    def component_class(self, component: str) -> type:
        registry = {"space": SPACES, "strategy": STRATEGIES, "estimator": ESTIMATORS}[component]
        return registry.get(getattr(self, component))


LIMITS = {"budget": (1, 100_000), "epochs": (1, 10_000), "seed": (0, 2**31 - 1), "top_k": (1, 1000),
          "patience": (0, 100_000), "max_seconds": (0, 30 * 24 * 3600)}


def check_names(spec: ExperimentSpec, fields: tuple[str, ...] = ("dataset", *COMPONENTS)) -> None:
    """Check that the dataset and the components are registered (a component before its options can be
    resolved)."""
    registries = {"dataset": DATASETS, "space": SPACES, "strategy": STRATEGIES, "estimator": ESTIMATORS}
    for name in fields:
        registry, value = registries[name], getattr(spec, name)
        if value not in registry:
            raise SpecError(name, f"unknown {registry.kind} {value!r}; choose one of {', '.join(registry.names())}")


def validate_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """Check every field and option; returns the spec with options normalised to their JSON form."""
    check_names(spec)
    for name, (low, high) in LIMITS.items():
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SpecError(name, f"must be an integer from {low} to {high}")
    unknown = set(spec.options) - set(COMPONENTS)
    if unknown:
        raise SpecError("options", f"unknown option group {sorted(unknown)[0]!r}")
    normalised, configs = {}, {}
    for component in COMPONENTS:
        try:
            config = parse_config(spec.component_class(component).Config, spec.options.get(component))
        except OptionError as exc:
            raise SpecError(f"{component}.{exc.key}", exc.message) from None
        normalised[component] = config_to_json(config)
        configs[component] = config
    if getattr(spec.component_class("strategy"), "differentiable", False):
        spec = dataclasses.replace(spec, budget=1)  # one search; `epochs` counts its epochs
    space = spec.component_class("space")(configs["space"])
    try:
        spec.component_class("estimator").check_space(space)
    except ValueError as exc:
        raise SpecError("estimator", str(exc)) from None
    check_dataset(spec, space, configs["estimator"])
    return dataclasses.replace(spec, options=normalised)


def check_dataset(spec: ExperimentSpec, space: Any, estimator_config: Any) -> None:
    """Refuse a dataset the space cannot build for, the estimator cannot use or the machine does not hold."""
    entry = DATASETS.get(spec.dataset)
    kind = getattr(entry, "kind", "image")  # a plug-in registered as a bare loader predates kinds: images
    checks = (("space", space.check_dataset, (spec.dataset, kind)),
              ("estimator", spec.component_class("estimator").check_dataset, (estimator_config, spec.dataset, kind)))
    for name, check, args in checks:
        try:
            check(*args)
        except ValueError as exc:
            raise SpecError(name, str(exc)) from None
    if kind == BENCHMARK_KIND and getattr(spec.component_class("strategy"), "differentiable", False):
        raise SpecError("strategy", f"{spec.dataset!r} is a lookup table; a differentiable search trains a "
                                    "supernet on samples, which a table has none of")
    reason = entry.unavailable() if hasattr(entry, "unavailable") else ""
    if reason:
        raise SpecError("dataset", reason)


@dataclass
class TrialRecord:
    number: int
    arch_key: str
    arch_display: str
    val_acc: float
    params: int
    flops: int
    train_seconds: float
    fidelity: dict[str, Any]
    curve: list[float]
    weights_path: str | None = None
    estimator: str = ""
    search_seconds: float = 0.0  # search time when this trial finished, summed over resumptions
    proposals: int = 0  # proposals made so far, repeats of evaluated architectures included
    distance_to_incumbent: int | None = None  # edit distance to the best architecture known when proposed
    evaluations: list[float] = field(default_factory=list)  # every observed value; val_acc is their mean

    def __post_init__(self) -> None:
        if not self.evaluations:
            self.evaluations = [self.val_acc]


class Store(Protocol):
    """Where a search keeps its progress. The Django adapter writes rows; tests use `MemoryStore`."""

    def load(self) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
        """The strategy state after the last recorded trial (None if none) and every recorded trial."""

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        """Atomically add `trial` (or update it, when its number exists: a re-evaluation), save the strategy
        state, and forget the weights of trials not in `kept`."""

    def heartbeat(self) -> None:
        """Signal liveness; raise SearchCancelled if the experiment has been cancelled."""

    def record_epoch(self, record: dict[str, Any]) -> None:
        """Store (or replace) one epoch of a differentiable search: losses, accuracies, alphas, genotype."""

    def finish(self, best_number: int, test_acc: float | None, stop_reason: str) -> None: ...


@dataclass
class MemoryStore:
    """A store in memory, for the engine's own tests and for scripts without a database."""

    state: dict[str, Any] | None = None
    trials: list[TrialRecord] = field(default_factory=list)
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)
    cancelled: bool = False
    best: tuple[int, float | None] | None = None
    stop_reason: str = ""
    heartbeats: int = 0
    weighted: set[int] = field(default_factory=set)  # trials that hold weights, so forgetting them is not O(n)

    def __post_init__(self) -> None:
        self.weighted = {t.number for t in self.trials if t.weights_path}

    def load(self) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
        return self.state, list(self.trials)

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        if trial.number < len(self.trials):  # a re-evaluation updates its trial
            self.trials[trial.number] = trial
        else:
            self.trials.append(trial)
        self.state = strategy_state
        if trial.weights_path:
            self.weighted.add(trial.number)
        for number in self.weighted - set(kept):
            self.trials[number].weights_path = None
            self.weighted.discard(number)

    def heartbeat(self) -> None:
        self.heartbeats += 1
        if self.cancelled:
            raise SearchCancelled()

    def record_epoch(self, record: dict[str, Any]) -> None:
        self.epochs[record["epoch"]] = record

    def finish(self, best_number: int, test_acc: float | None, stop_reason: str) -> None:
        self.best = (best_number, test_acc)
        self.stop_reason = stop_reason


def best_trial(trials: list[TrialRecord]) -> TrialRecord:
    """Highest validation accuracy; the earlier trial wins a tie."""
    return max(trials, key=lambda t: (t.val_acc, -t.number))


def evaluations_done(trials: list[TrialRecord]) -> int:
    """Budget spent: each evaluation counts, re-evaluations of an architecture included."""
    return sum(len(t.evaluations) for t in trials)


def observed_history(trials: Iterable[TrialRecord]) -> list[Observed]:
    """What a strategy had been told when these trials were recorded, in the order given: each one's architecture
    and readings. A strategy's checkpoint holds none of it (`Strategy.load_state_dict`)."""
    return [Observed(t.arch_key, tuple(t.evaluations)) for t in trials]


def restore_strategy(strategy: Any, state: dict[str, Any], history: list[Observed]) -> None:
    """`strategy.load_state_dict(state, history)`; a strategy written before strategies read their history from the
    trials (a package's own, `load_state_dict(state)`) gets its state alone."""
    if len(inspect.signature(strategy.load_state_dict).parameters) >= 2:
        strategy.load_state_dict(state, history)
    else:
        strategy.load_state_dict(state)


def promotion(cohort: list[int], trials: list[TrialRecord], rung: int, eta: int) -> tuple[list[int], list[int]]:
    """Successive halving's cut after rung `rung` - 1: the best floor(n/eta) of `cohort` by that rung's figure
    (at least one; the earlier trial first on a tie) go on to rung `rung`, the rest stop. Both best first."""
    ranked = sorted(cohort, key=lambda n: (-trials[n].fidelity["rungs"][rung - 1]["val_acc"], n))
    survivors = max(1, len(cohort) // eta)
    return ranked[:survivors], ranked[survivors:]


def bracket_told_order(members: list[int], trials: list[TrialRecord], rungs: int, eta: int) -> list[int]:
    """The order in which a finished bracket of `rungs` rungs told its `members` to the strategy: the losers of
    each cut, best first, then the last survivors (as `SearchRunner._run_brackets` does)."""
    told, cohort = [], list(members)
    for rung in range(1, rungs):
        cohort, losers = promotion(cohort, trials, rung, eta)
        told += losers
    return told + cohort


def top_k_numbers(trials: list[TrialRecord], k: int) -> list[int]:
    ranked = sorted(trials, key=lambda t: (-t.val_acc, t.number))
    return [t.number for t in ranked[:k]]


class Leaderboard:
    """The trials best first (highest mean, the earlier first on a tie, as `best_trial` and `top_k_numbers`
    rank them) and the evaluations spent, kept up to date as trials arrive or are re-evaluated: the loop's
    bookkeeping after a trial is a binary search, not a sort of every trial (at 10,000 trials, milliseconds)."""

    def __init__(self, trials: list[TrialRecord]) -> None:
        self.order = sorted((-t.val_acc, t.number) for t in trials)
        self.evaluations = evaluations_done(trials)

    def add(self, trial: TrialRecord) -> None:
        bisect.insort(self.order, (-trial.val_acc, trial.number))
        self.evaluations += len(trial.evaluations)

    def reevaluated(self, trial: TrialRecord, before: float) -> None:
        """`trial` got one evaluation more; its figure was `before`."""
        del self.order[bisect.bisect_left(self.order, (-before, trial.number))]
        bisect.insort(self.order, (-trial.val_acc, trial.number))
        self.evaluations += 1

    @property
    def best(self) -> int | None:
        return self.order[0][1] if self.order else None

    def top(self, k: int) -> list[int]:
        return [number for _, number in self.order[:k]]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SearchRunner:
    """Runs (or resumes) one experiment to its budget. Safe to call again after a crash: it continues from the
    last recorded trial, and the strategy, restored from its checkpoint, proposes what it would have proposed."""

    def __init__(self, spec: ExperimentSpec, store: Store, artifacts: ArtifactStore, device: torch.device) -> None:
        self.spec = validate_spec(spec)
        self.store = store
        self.artifacts = artifacts
        self.device = device
        configs = {c: parse_config(self.spec.component_class(c).Config, self.spec.options[c]) for c in COMPONENTS}
        self.space = self.spec.component_class("space")(configs["space"])
        self.strategy = self.spec.component_class("strategy")(self.space, configs["strategy"],
                                                              derive_seed(self.spec.seed, "strategy"))
        self.dataset = DATASETS.get(self.spec.dataset)()
        self.estimator = self.spec.component_class("estimator")(self.space, self.dataset, configs["estimator"],
                                                                device)
        self.estimator.workdir = artifacts.dir / "estimator"

    def trial_seed(self, number: int) -> int:
        return derive_seed(self.spec.seed, "trial", number) % (2**31)

    def stop_reason(self, trials: list[TrialRecord], search_seconds: float,
                    board: Leaderboard | None = None) -> str | None:
        """Why the search should stop now (budget, patience or time limit), or None to go on; `board`: the
        trials' leaderboard where the caller keeps one."""
        board = board or Leaderboard(trials)
        if board.evaluations >= self.spec.budget:
            return "budget"
        if self.spec.patience and board.best is not None:
            if len(trials) - 1 - board.best >= self.spec.patience:
                return "patience"
        if self.spec.max_seconds and search_seconds >= self.spec.max_seconds:
            return "time_limit"
        return None

    def run(self) -> None:
        """The store's heartbeat also runs between training batches (`nasjobs.training.between_batches`), so a
        cancel or a lost claim stops a trial within a batch, not at the end of a long epoch."""
        with between_batches(self.store.heartbeat):
            self._run()

    def _run(self) -> None:
        if getattr(self.strategy, "differentiable", False):
            return self._run_differentiable()
        if getattr(self.estimator, "multi_fidelity", False):
            return self._run_brackets()
        state, trials = self.store.load()
        if state is not None:
            restore_strategy(self.strategy, state, observed_history(trials))
        if trials and hasattr(self.estimator, "load_history"):  # estimators that compare a trial with earlier ones
            self.estimator.load_history([t.curve for t in trials if "stopped_at_epoch" not in t.fidelity])
        by_key = {t.arch_key: t for t in trials}
        board = Leaderboard(trials)
        # Time and proposals carry over from earlier runs of this experiment, so limits hold across resumptions.
        previous_seconds = max((t.search_seconds for t in trials), default=0.0)
        proposals = max((t.proposals for t in trials), default=0)
        if hasattr(self.strategy, "set_budget"):
            self.strategy.set_budget(self.spec.budget)
        session_start = time.monotonic()
        elapsed = lambda: previous_seconds + time.monotonic() - session_start  # noqa: E731
        repeats = 0
        while (reason := self.stop_reason(trials, elapsed(), board)) is None:
            self.store.heartbeat()
            arch = self.strategy.propose()
            proposals += 1
            key = self.space.to_str(arch)
            # Measured again with a fresh seed (one evaluation) if the strategy re-evaluates at this point.
            if key in by_key and getattr(self.strategy, "reevaluates", False):
                repeats = 0
                before = by_key[key].val_acc
                trial = self._reevaluate(by_key[key], arch)
                board.reevaluated(trial, before)
                trial.search_seconds, trial.proposals = elapsed(), proposals
                self.store.record_trial(trial, self.strategy.state_dict(), board.top(self.spec.top_k))
                continue
            if key in by_key:  # already evaluated: tell the strategy again, spend no budget
                self.strategy.observe(arch, by_key[key].val_acc)
                repeats += 1
                if repeats >= MAX_REPEATED_PROPOSALS:
                    log.warning("strategy keeps proposing evaluated architectures; stopping at %d trials", len(trials))
                    reason = "exhausted"
                    break
                continue
            repeats = 0
            incumbent = None if board.best is None else self.space.from_str(trials[board.best].arch_key)
            trial = self._evaluate(len(trials), arch, key)
            trial.search_seconds = elapsed()
            trial.proposals = proposals
            trial.distance_to_incumbent = None if incumbent is None else self.space.distance(arch, incumbent)
            trials.append(trial)
            by_key[key] = trial
            board.add(trial)
            kept = board.top(self.spec.top_k)
            self.store.record_trial(trial, self.strategy.state_dict(), kept)
            self.artifacts.keep_only(kept)
        if trials:
            self._finish(trials, reason)

    def _evaluate(self, number: int, arch: Any, key: str) -> TrialRecord:
        seed = self.trial_seed(number)
        result = self.estimator.evaluate(arch, self.spec.epochs, seed=seed, hook=lambda epoch, acc: self.store.heartbeat())
        self.strategy.observe(arch, result.val_acc)
        path = self.artifacts.save(number, result.state) if result.state is not None else None
        log.info("trial %d %s val_acc=%.4f", number, key, result.val_acc)
        return TrialRecord(number, key, self.space.display(arch), result.val_acc, result.params, result.flops,
                           result.train_seconds, result.fidelity, result.curve, path, self.spec.estimator)

    def _run_brackets(self) -> None:
        """Successive-halving brackets (Jamieson & Talwalkar 2016; Hyperband, Li et al. 2018, Algorithm 1).

        A bracket is filled with new architectures from the strategy, each trained to the lowest rung; then rung by
        rung the best floor(n/eta) continue from their checkpoints and the rest are told to the strategy with their
        last figure. Which trials survive each rung is derived from the recorded rungs, so a resumed run redoes
        exactly the missing work; the strategy's state is saved together with the set of trials it has been told.
        """
        state, trials = self.store.load()
        loop: dict[str, Any] = {"bracket": 0, "members": [], "observed": []}
        eta, top = self.estimator.config.eta, self.spec.epochs
        if state is not None:
            loop = state["loop"]
            told: list[int] = []
            for bracket in range(loop["bracket"]):  # finished brackets told every member, in a fixed order
                members = [t.number for t in trials if t.fidelity.get("bracket") == bracket]
                told += bracket_told_order(members, trials, len(self.estimator.bracket(bracket, top)[1]), eta)
            told += loop["observed"]
            restore_strategy(self.strategy, state["strategy"], observed_history(trials[n] for n in told))
        by_key = {t.arch_key: t for t in trials}
        previous_seconds = max((t.search_seconds for t in trials), default=0.0)
        proposals = max((t.proposals for t in trials), default=0)
        session_start = time.monotonic()
        elapsed = lambda: previous_seconds + time.monotonic() - session_start  # noqa: E731

        def save(trial: TrialRecord) -> None:
            kept = top_k_numbers(trials, self.spec.top_k)
            self.store.record_trial(trial, {"strategy": self.strategy.state_dict(), "loop": loop}, kept)
            self.artifacts.keep_only(kept)

        def train(trial: TrialRecord, epochs: int) -> None:
            arch = self.space.from_str(trial.arch_key)
            result = self.estimator.train_to(arch, trial.number, epochs, top, self.trial_seed(trial.number),
                                             hook=lambda epoch, acc: self.store.heartbeat())
            rungs = trial.fidelity.get("rungs", []) + [{"epochs": epochs, "val_acc": result.val_acc}]
            trial.fidelity = {**result.fidelity, "bracket": loop["bracket"], "rungs": rungs}
            trial.val_acc, trial.evaluations, trial.curve = result.val_acc, [result.val_acc], result.curve
            trial.params, trial.flops = result.params, result.flops
            trial.train_seconds += result.train_seconds
            trial.search_seconds = elapsed()
            if result.state is not None:
                trial.weights_path = self.artifacts.save(trial.number, result.state)

        def tell(number: int) -> None:
            if number not in loop["observed"]:
                trial = trials[number]
                self.strategy.observe(self.space.from_str(trial.arch_key), trial.val_acc)
                loop["observed"].append(number)
                self.estimator.forget(number)

        reason = None
        while True:
            size, rungs = self.estimator.bracket(loop["bracket"], top)
            members: list[int] = loop["members"]
            repeats = 0
            while len(members) < size and (reason := self.stop_reason(trials, elapsed())) is None:
                self.store.heartbeat()
                arch = self.strategy.propose()
                proposals += 1
                key = self.space.to_str(arch)
                if key in by_key:
                    self.strategy.observe(arch, by_key[key].val_acc)
                    repeats += 1
                    if repeats >= MAX_REPEATED_PROPOSALS:
                        reason = "exhausted"
                        break
                    continue
                repeats = 0
                incumbent = self.space.from_str(best_trial(trials).arch_key) if trials else None
                trial = TrialRecord(len(trials), key, self.space.display(arch), 0.0, 0, 0, 0.0, {}, [], None,
                                    self.spec.estimator, proposals=proposals,
                                    distance_to_incumbent=None if incumbent is None else self.space.distance(arch, incumbent))
                train(trial, rungs[0])
                trials.append(trial)
                by_key[key] = trial
                members.append(trial.number)
                save(trial)
            if reason == "time_limit" or not members:
                break
            cohort = list(members)
            for rung, epochs in enumerate(rungs[1:], start=1):
                survivors, losers = promotion(cohort, trials, rung, eta)
                for number in losers:
                    tell(number)
                for number in survivors:
                    if len(trials[number].fidelity["rungs"]) <= rung:
                        self.store.heartbeat()
                        train(trials[number], epochs)
                        save(trials[number])
                cohort = survivors
            for number in cohort:
                tell(number)
            loop = {"bracket": loop["bracket"] + 1, "members": [], "observed": []}
            if reason is not None or (reason := self.stop_reason(trials, elapsed())) is not None:
                break
        if trials:
            self._finish(trials, reason or "budget")

    def _reevaluate(self, trial: TrialRecord, arch: Any) -> TrialRecord:
        """Evaluate an architecture once more (a new training seed, or a new benchmark seed) and average.

        The weights kept are those of the first evaluation; the strategy observes the new single value."""
        seed = derive_seed(self.spec.seed, "trial", trial.number, "repeat", len(trial.evaluations)) % (2**31)
        result = self.estimator.evaluate(arch, self.spec.epochs, seed=seed, hook=lambda epoch, acc: self.store.heartbeat())
        self.strategy.observe(arch, result.val_acc)
        trial.evaluations.append(result.val_acc)
        trial.val_acc = sum(trial.evaluations) / len(trial.evaluations)
        trial.train_seconds += result.train_seconds
        log.info("trial %d %s re-evaluated: %.4f (mean of %d: %.4f)", trial.number, trial.arch_key, result.val_acc,
                 len(trial.evaluations), trial.val_acc)
        return trial

    def _run_differentiable(self) -> None:
        """A gradient-based search (DARTS): one supernet search of `epochs` epochs, checkpointed after each, then
        the derived architecture trained from scratch by the experiment's estimator as its single trial."""
        _, trials = self.store.load()
        if not trials:
            last: dict[str, Any] = {}
            started = time.monotonic()

            def on_epoch(record: Any, checkpoint: dict[str, Any]) -> None:
                # The row first, then the checkpoint: a crash in between repeats the epoch, whose row is replaced.
                row = dataclasses.asdict(record)
                self.store.record_epoch(row)
                self.artifacts.save_checkpoint(checkpoint)
                last.update(row)

            arch = self.strategy.search(self.dataset, self.spec.epochs, self.device, self.artifacts.load_checkpoint(),
                                        on_epoch, hook=self.store.heartbeat)
            key = self.space.to_str(arch)
            config = self.strategy.config
            supernet = {"supernet_val_acc": last.get("val_acc"), "search_epochs": last.get("epoch")}
            if config.final_train:
                result = self.estimator.evaluate(arch, config.final_epochs, seed=self.trial_seed(0),
                                                 hook=lambda epoch, acc: self.store.heartbeat())
                path = self.artifacts.save(0, result.state) if result.state is not None else None
                trial = TrialRecord(0, key, self.space.display(arch), result.val_acc, result.params, result.flops,
                                    result.train_seconds, {**result.fidelity, **supernet}, result.curve, path,
                                    self.spec.estimator)
            else:  # the supernet's own figure, clearly labelled as such
                model = self.space.build(arch, self.dataset.input_shape, self.dataset.num_classes)
                trial = TrialRecord(0, key, self.space.display(arch), float(last.get("val_acc") or 0.0),
                                    count_params(model), count_macs(model, self.dataset.input_shape), 0.0,
                                    {"estimator": "supernet", **supernet}, [], None, "supernet")
            trial.search_seconds = time.monotonic() - started
            trial.proposals = 1
            trials = [trial]
            self.store.record_trial(trial, {"search_done": True}, [0])
        self._finish(trials, "budget")

    def _finish(self, trials: list[TrialRecord], reason: str) -> None:
        best = best_trial(trials)
        arch = self.space.from_str(best.arch_key)
        state = self.artifacts.load(best.number)
        if best.estimator == "supernet":  # no network was trained from scratch, so there is nothing to test
            self.store.finish(best.number, None, reason)
            return
        if state is None:  # weights lost (artifact folder wiped): retrain with the trial's own seed
            epochs = self.strategy.config.final_epochs if getattr(self.strategy, "differentiable", False) \
                else self.spec.epochs
            result = self.estimator.evaluate(arch, epochs, seed=self.trial_seed(best.number))
            state = result.state
        test_acc = self.estimator.test_accuracy(arch, state)
        self.store.finish(best.number, test_acc, reason)
