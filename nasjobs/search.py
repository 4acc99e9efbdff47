"""The search loop: a strategy proposes, an estimator evaluates, a store persists each trial as it finishes."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Protocol

import torch

from nasjobs.artifacts import CHECKPOINT_SECONDS, ArtifactStore, FileCheckpoint
from nasjobs.constraints import LIMIT_FIELDS, LIMIT_RANGE, MAX_SKIPPED_IN_A_ROW, Gate, Limits
from nasjobs.datasets import BENCHMARK_KIND, DATASETS
from nasjobs.estimators import ESTIMATORS
from nasjobs.metrics import count_macs, count_params, network_cost
from nasjobs.options import OptionError, config_to_json, parse_config
from nasjobs.rng import derive_seed
from nasjobs.spaces import SPACES
from nasjobs.strategies import STRATEGIES
from nasjobs.estimators.successive_halving import rung_checkpoint
from nasjobs.planner import FAILURE_POLICIES, BracketPlanner, Planner
# The records a search keeps, importable from here too (`nasjobs.records` holds them).
from nasjobs.records import (AGAIN, DONE, Leaderboard, SearchCancelled, TrialRecord, best_trial,  # noqa: F401
                             evaluations_done, top_k_numbers)
from nasjobs.training import TrialCheckpoint, between_batches, training_format

log = logging.getLogger(__name__)

COMPONENTS = ("space", "strategy", "estimator")


class SearchInfeasible(RuntimeError):
    """The search cannot go on: its deployment limits refused every proposal for too long (`nasjobs.constraints`)."""


class SpecError(ValueError):
    """An invalid experiment specification; `field` names the offending field (`space.max_layers`, `budget`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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
    parallelism: int = 1  # trials in flight at once, across every worker
    failure_policy: str = "worst"  # what the strategy is told of a failed trial (`nasjobs.planner.FAILURE_POLICIES`)
    max_failures: int = 3  # the experiment fails after this many failed trials in a row
    bf16: bool = False  # train under bfloat16 autocast (CUDA only)
    channels_last: bool = False  # train with channels-last memory (faster convolutions on tensor cores)
    max_params: int | None = None  # deployment limit: networks with more parameters are skipped (None: no limit)
    max_macs: int | None = None  # deployment limit on multiply-adds for one input (None: no limit)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_params, self.max_macs)

    def component_class(self, component: str) -> type:
        registry = {"space": SPACES, "strategy": STRATEGIES, "estimator": ESTIMATORS}[component]
        return registry.get(getattr(self, component))


LIMITS = {"budget": (1, 100_000), "epochs": (1, 10_000), "seed": (0, 2**31 - 1), "top_k": (1, 1000),
          "patience": (0, 100_000), "max_seconds": (0, 30 * 24 * 3600), "parallelism": (1, 256),
          "max_failures": (1, 10_000)}


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
    if spec.failure_policy not in FAILURE_POLICIES:
        raise SpecError("failure_policy", f"choose one of {', '.join(FAILURE_POLICIES)}")
    check_limit_fields(spec)
    for name in ("bf16", "channels_last"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(name, "must be true or false")
        if getattr(spec, name) and not spec.component_class("estimator").trains_networks:
            raise SpecError(name, f"applies to training, and the {spec.estimator} estimator trains no network")
    if getattr(spec.component_class("strategy"), "differentiable", False):
        if spec.parallelism > 1:
            raise SpecError("parallelism", "a differentiable search trains one supernet, so it runs as one job: "
                                           "set parallelism to 1")
        if spec.limits.active:
            raise SpecError("max_params" if spec.max_params is not None else "max_macs",
                            "deployment limits skip proposed architectures; a differentiable search proposes none "
                            "(it derives one from its supernet): leave max_params and max_macs empty")
        spec = dataclasses.replace(spec, budget=1)  # one search; `epochs` counts its epochs
    space = spec.component_class("space")(configs["space"])
    for component in ("strategy", "estimator"):
        try:
            spec.component_class(component).check_space(configs[component], space)
        except ValueError as exc:
            raise refusal(component, exc) from None
    check_dataset(spec, space, configs["estimator"])
    check_limits_possible(spec, space, configs["estimator"])
    return dataclasses.replace(spec, options=normalised)


def check_limit_fields(spec: ExperimentSpec) -> None:
    """Each deployment limit is empty (None: no limit) or a whole number of at least 1."""
    low, high = LIMIT_RANGE
    for name in LIMIT_FIELDS:
        value = getattr(spec, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SpecError(name, f"must be a whole number from {low} to {high:,}, or empty for no limit")


def cost_function(spec: ExperimentSpec, space: Any, estimator_config: Any,
                  dataset: Callable[[], Any] | None = None) -> Callable[[Any], tuple[int, int]] | None:
    """How the deployment limits count an architecture's parameters and multiply-adds: as its trial will
    record them. An estimator with figures of its own (`Estimator.own_cost`: the benchmark's table) is asked
    through an instance on the dataset; every other counts the space's network (`network_cost`: the space's
    formula, or a network built on the meta device) at the dataset's input shape, known without loading it for
    the built-ins and stored datasets. `dataset()` loads it where the shape is not known that way (a plug-in's);
    None: the figures cannot be had without loading it."""
    estimator = spec.component_class("estimator")
    entry = DATASETS.get(spec.dataset)
    if estimator.own_cost:
        instance = estimator(space, entry(), estimator_config, torch.device("cpu"))
        return lambda arch: instance.cost(arch)
    shape, classes = tuple(getattr(entry, "input_shape", ()) or ()), getattr(entry, "num_classes", 0)
    if not shape or not classes:
        if dataset is None:
            return None
        loaded = dataset()
        shape, classes = loaded.input_shape, loaded.num_classes
    return lambda arch: network_cost(space, arch, shape, classes)


def check_limits_possible(spec: ExperimentSpec, space: Any, estimator_config: Any) -> None:
    """Refuse deployment limits that no architecture of the space can meet, where the space names its smallest
    network (`SearchSpace.smallest`) and its figures can be had without loading the dataset."""
    if not spec.limits.active:
        return
    smallest = space.smallest()
    cost = cost_function(spec, space, estimator_config) if smallest is not None else None
    if cost is None:
        return
    params, macs = cost(smallest)
    over = spec.limits.excess(params, macs)
    if over:
        field_name = "max_params" if "parameters" in over[0] else "max_macs"
        raise SpecError(field_name, f"no architecture of the {spec.space} space with these options fits: its "
                                    f"smallest network on {spec.dataset}, {space.to_str(smallest)}, has "
                                    f"{params:,} parameters and {macs:,} MACs ({'; '.join(over)})")


def refusal(component: str, exc: ValueError) -> SpecError:
    """A component's check as a SpecError: on the option it names (`OptionError` with a `component.option` key,
    where a form can show it next to that field), else on the component itself."""
    if isinstance(exc, OptionError) and exc.key.split(".", 1)[0] in COMPONENTS:
        return SpecError(exc.key, exc.message)
    return SpecError(component, str(exc))


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
            raise refusal(name, exc) from None
    if kind == BENCHMARK_KIND and getattr(spec.component_class("strategy"), "differentiable", False):
        raise SpecError("strategy", f"{spec.dataset!r} is a lookup table; a differentiable search trains a "
                                    "supernet on samples, which a table has none of")
    reason = entry.unavailable() if hasattr(entry, "unavailable") else ""
    if reason:
        raise SpecError("dataset", reason)


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


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SearchRunner:
    """Runs (or resumes) one experiment to its budget. Safe to call again after a crash: it continues from the
    last recorded trial, and the strategy, restored from its checkpoint, proposes what it would have proposed."""

    def __init__(self, spec: ExperimentSpec, store: Store, artifacts: ArtifactStore, device: torch.device,
                 max_skipped_in_a_row: int = MAX_SKIPPED_IN_A_ROW,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS) -> None:
        self.spec = validate_spec(spec)
        self.max_skipped_in_a_row = max_skipped_in_a_row  # proposals over the deployment limits before it fails
        self.checkpoint_seconds = checkpoint_seconds  # how often a trial under way saves its progress (0: each epoch)
        self.store = store
        self.artifacts = artifacts
        self.device = device
        self.configs = {c: parse_config(self.spec.component_class(c).Config, self.spec.options[c]) for c in COMPONENTS}
        self.space = self.spec.component_class("space")(self.configs["space"])
        self.strategy = self.new_strategy()

    def new_strategy(self) -> Any:
        """The experiment's strategy as it starts, before any checkpoint is loaded into it."""
        return self.spec.component_class("strategy")(self.space, self.configs["strategy"],
                                                     derive_seed(self.spec.seed, "strategy"))

    @cached_property
    def dataset(self) -> Any:
        """Loaded when a trial first needs it: planning the next proposals needs none."""
        return DATASETS.get(self.spec.dataset)()

    @cached_property
    def estimator(self) -> Any:
        estimator = self.spec.component_class("estimator")(self.space, self.dataset, self.configs["estimator"],
                                                           self.device)
        estimator.workdir = self.artifacts.dir / "estimator"
        return estimator

    @property
    def kind(self) -> str:
        """How the search runs: "differentiable" (one supernet search, one task), "brackets" (successive halving's
        rungs: each trial's rung a job of its own) or "trials" (ask/tell: each trial a job of its own)."""
        if getattr(self.strategy, "differentiable", False):
            return "differentiable"
        return "brackets" if getattr(self.spec.component_class("estimator"), "multi_fidelity", False) else "trials"

    @cached_property
    def network_cost(self) -> Callable[[Any], tuple[int, int]]:
        """An architecture's parameters and multiply-adds as its trial records them (`cost_function`), for the
        deployment limits; the dataset is loaded only where its input shape is not known without it."""
        cost = cost_function(self.spec, self.space, self.configs["estimator"], lambda: self.dataset)
        assert cost is not None  # given a loader, it always has one
        return cost

    def gate(self) -> Gate | None:
        """A fresh check of proposals against the experiment's deployment limits, or None without limits."""
        if not self.spec.limits.active:
            return None
        return Gate(self.spec.limits, self.network_cost, self.max_skipped_in_a_row, self.spec.space)

    def planner(self, parallelism: int = 1, failure_policy: str = "worst", strategy: Any = None) -> Planner:
        """What decides the next jobs of this search: brackets of rungs for a multi-fidelity estimator, plain
        ask/tell otherwise; it drives `strategy` (default: this runner's own) and skips proposals over the
        deployment limits."""
        strategy = self.strategy if strategy is None else strategy
        if self.kind == "brackets":
            estimator, config = self.spec.component_class("estimator"), self.configs["estimator"]
            workdir = self.artifacts.dir / "estimator"
            return BracketPlanner(self.spec, self.space, strategy,
                                  lambda index: estimator.brackets(config, index, self.spec.epochs), config.eta,
                                  parallelism, forget=lambda n: rung_checkpoint(workdir, n).unlink(missing_ok=True),
                                  gate=self.gate())
        return Planner(self.spec, self.space, strategy, parallelism, failure_policy, self.gate())

    def trial_seed(self, number: int) -> int:
        return derive_seed(self.spec.seed, "trial", number) % (2**31)

    def run(self) -> None:
        """The store's heartbeat also runs between training batches (`nasjobs.training.between_batches`), so a
        cancel or a lost claim stops a trial within a batch, not at the end of a long epoch."""
        with between_batches(self.store.heartbeat), training_format(self.spec.bf16, self.spec.channels_last):
            self._run()

    def _run(self) -> None:
        kind = self.kind
        if kind == "differentiable":
            return self._run_differentiable()
        state, trials = self.store.load()
        planner = self.planner(failure_policy=self.spec.failure_policy)
        planner.restore(state, trials)
        self.load_estimator_history(trials)
        # Time carries over from earlier runs of this experiment, so a time limit holds across resumptions.
        previous_seconds = max((t.search_seconds for t in trials), default=0.0)
        session_start = time.monotonic()
        elapsed = lambda: previous_seconds + time.monotonic() - session_start  # noqa: E731
        while True:
            jobs = list(planner.in_flight.values())  # left in flight by an earlier, distributed run: first
            if not jobs:
                plan = planner.plan(elapsed())
                if planner.infeasible:
                    raise SearchInfeasible(planner.infeasible)
                if not plan.jobs:
                    break
                jobs = plan.jobs
            for trial in jobs:
                self.store.heartbeat()
                checkpoint = self.trial_checkpoint(trial.number)
                trial = self.execute(trial, self.store.heartbeat, checkpoint)
                trial.search_seconds = elapsed()
                planner.tell(trial)
                kept = planner.kept(self.spec.top_k)
                self.store.record_trial(trial, planner.state_dict(), kept)
                checkpoint.discard()  # once recorded: a crash before that resumes the trial at its last epoch
                self.artifacts.keep_only(kept)
        if planner.best is not None:
            self.store.finish(planner.best.number, self.best_test_accuracy(planner.best), plan.finished or "budget")

    def load_estimator_history(self, trials: list[TrialRecord]) -> None:
        """Give an estimator that compares a trial with earlier ones (median stopping) the curves of the trials
        that ran to their end."""
        if hasattr(self.estimator, "load_history"):
            self.estimator.load_history([t.curve for t in trials
                                         if t.status == DONE and "stopped_at_epoch" not in t.fidelity])

    def trial_checkpoint(self, number: int) -> FileCheckpoint:
        """Where trial `number` keeps its progress while it trains (`ArtifactStore.trial_checkpoint`)."""
        return self.artifacts.trial_checkpoint(number, self.checkpoint_seconds)

    def execute(self, trial: TrialRecord, heartbeat: Callable[[], None],
                resume: TrialCheckpoint | None = None) -> TrialRecord:
        """Run a trial's job, as the planner set it: its first evaluation (weights saved when the estimator trains
        some), or one more with a fresh seed (`job == AGAIN`: the figure becomes the mean; the first evaluation's
        weights stay). Returns the record, done; `heartbeat` runs after every epoch and may raise to stop it.

        With `resume` (the trial's checkpoint) an estimator that trains for the whole trial (`Estimator.resumable`)
        continues from the epoch saved there and keeps it up to date; the caller discards it once the trial is
        recorded. `trial.resumed_from_epoch` says where the job continued."""
        with training_format(self.spec.bf16, self.spec.channels_last):
            return self._execute(trial, heartbeat, resume)

    def _evaluate(self, arch: Any, seed: int, hook: Callable[[int, float], None],
                  resume: TrialCheckpoint | None) -> Any:
        if resume is not None and self.estimator.resumable:
            return self.estimator.evaluate(arch, self.spec.epochs, seed=seed, hook=hook, resume=resume)
        return self.estimator.evaluate(arch, self.spec.epochs, seed=seed, hook=hook)

    def _execute(self, trial: TrialRecord, heartbeat: Callable[[], None],
                 resume: TrialCheckpoint | None = None) -> TrialRecord:
        arch = self.space.from_str(trial.arch_key)
        hook = lambda epoch, acc: heartbeat()  # noqa: E731
        if self.kind == "brackets":
            return self._train_to_rung(trial, arch, hook)
        if trial.job == AGAIN:
            seed = derive_seed(self.spec.seed, "trial", trial.number, "repeat", len(trial.evaluations)) % (2**31)
            result = self._evaluate(arch, seed, hook, resume)
            trial.evaluations = [*trial.evaluations, result.val_acc]
            trial.val_acc = sum(trial.evaluations) / len(trial.evaluations)
            trial.train_seconds += result.train_seconds
            if result.fidelity.get("chance_level"):  # the mean holds a run that learned nothing: say so
                trial.fidelity = {**trial.fidelity, "chance_level": True}
            log.info("trial %d %s re-evaluated: %.4f (mean of %d: %.4f)", trial.number, trial.arch_key,
                     result.val_acc, len(trial.evaluations), trial.val_acc)
        else:
            result = self._evaluate(arch, self.trial_seed(trial.number), hook, resume)
            trial.weights_path = self.artifacts.save(trial.number, result.state) if result.state is not None else None
            trial.val_acc, trial.evaluations, trial.params, trial.flops = (result.val_acc, [result.val_acc],
                                                                           result.params, result.flops)
            trial.train_seconds, trial.fidelity, trial.curve = result.train_seconds, result.fidelity, result.curve
            trial.loss_curve = result.loss_curve
            log.info("trial %d %s val_acc=%.4f", trial.number, trial.arch_key, result.val_acc)
        trial.resumed_from_epoch = result.resumed_from_epoch
        trial.status = DONE
        return trial

    def retrain(self, arch_key: str, epochs: int, seed: int, heartbeat: Callable[[], None]) -> tuple[Any, float]:
        """Train an architecture again from scratch for `epochs` epochs and measure it on the test split: how a
        search's winner is reported (Zoph & Le 2017, Sec. 4.1; Real et al. 2019, Sec. 4: the best cell is retrained
        at full length, the search's own figure being a cheaper estimate). Full training is the `train` estimator:
        with this experiment's settings when it searched with it, else its defaults. Returns the training's
        result (figures, curve, weights) and the test accuracy."""
        from nasjobs.estimators.train import TrainConfig, TrainEstimator

        own = self.spec.component_class("estimator") is TrainEstimator
        trainer = TrainEstimator(self.space, self.dataset, self.configs["estimator"] if own else TrainConfig(),
                                 self.device)
        arch = self.space.from_str(arch_key)
        with training_format(self.spec.bf16, self.spec.channels_last):
            result = trainer.evaluate(arch, epochs, seed=seed, hook=lambda epoch, acc: heartbeat())
            test_acc = trainer.test_accuracy(arch, result.state)
        log.info("%s retrained for %d epochs: val_acc=%.4f test_acc=%.4f", arch_key, epochs, result.val_acc, test_acc)
        return result, test_acc

    def _train_to_rung(self, trial: TrialRecord, arch: Any, hook: Callable[[int, float], None]) -> TrialRecord:
        """Train a bracket's trial on to its next rung, from its own checkpoint (successive halving)."""
        bracket, rungs = trial.fidelity["bracket"], trial.fidelity.get("rungs", [])
        epochs = self.estimator.bracket(bracket, self.spec.epochs)[1][len(rungs)]
        result = self.estimator.train_to(arch, trial.number, epochs, self.spec.epochs, self.trial_seed(trial.number),
                                         hook=hook)
        trial.fidelity = {**result.fidelity, "bracket": bracket,
                          "rungs": rungs + [{"epochs": epochs, "val_acc": result.val_acc}]}
        trial.val_acc, trial.evaluations, trial.curve = result.val_acc, [result.val_acc], result.curve
        trial.loss_curve = result.loss_curve
        trial.params, trial.flops = result.params, result.flops
        trial.train_seconds += result.train_seconds
        if result.state is not None:
            trial.weights_path = self.artifacts.save(trial.number, result.state)
        log.info("trial %d %s rung %d (%d epochs) val_acc=%.4f", trial.number, trial.arch_key, len(rungs), epochs,
                 result.val_acc)
        trial.status = DONE
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
                                    self.spec.estimator, loss_curve=result.loss_curve)
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
        self.store.finish(best.number, self.best_test_accuracy(best), reason)

    def best_test_accuracy(self, best: TrialRecord) -> float | None:
        """The best trial's accuracy on the test split, from its kept weights (retrained with its own seed when
        they are gone); None where nothing was trained from scratch (a supernet's own figure)."""
        if best.estimator == "supernet":
            return None
        arch = self.space.from_str(best.arch_key)
        state = self.artifacts.load(best.number)
        if state is None:  # weights lost (artifact folder wiped): retrain with the trial's own seed
            epochs = self.strategy.config.final_epochs if getattr(self.strategy, "differentiable", False) \
                else self.spec.epochs
            state = self.estimator.evaluate(arch, epochs, seed=self.trial_seed(best.number)).state
        return self.estimator.test_accuracy(arch, state)
