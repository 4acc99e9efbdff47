"""What an ask/tell search evaluates next, with up to `parallelism` trials in flight at once."""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any, Callable

from nasjobs.constraints import Gate
from nasjobs.records import (AGAIN, DONE, FAILED, MAX_REPEATED_PROPOSALS, PENDING, RUNG, Leaderboard, TrialRecord,
                             bracket_told_order, promotion, restore_strategy)
from nasjobs.strategies import Observed

log = logging.getLogger(__name__)

# What the strategy is told of a trial that failed: the worst figure seen so far (so it learns to avoid what
# fails, as an out-of-memory network), or nothing at all.
FAILURE_POLICIES = {"worst": "told the worst figure seen so far", "ignore": "not told"}
# Where a planner's checkpoint keeps its deployment-limit counters, beside the strategy's own keys (only when the
# experiment has limits, so a checkpoint without them is the strategy's alone, as it always was).
GATE_KEY = "deployment_limits"


@dataclass
class Plan:
    jobs: list[TrialRecord]  # trials to evaluate now: new ones, or evaluated ones once more (`job == AGAIN`)
    finished: str | None  # why the search is over (nothing in flight, nothing more to propose), else None


class Planner:
    """The ask/tell side of a search, as parallel NAS runs it: while fewer than `parallelism` trials are in flight
    and the budget allows, the strategy proposes; each result is told the moment it arrives, in whatever order
    the workers finish (Zoph & Le 2017, Sec. 3.3, train child networks in parallel; Real et al. 2019, Sec. 3, let
    a worker that frees up take the next tournament at once). A trial's place in the order results were told is
    recorded (`TrialRecord.told`), so a strategy restored from its checkpoint is given its history in exactly the
    order it saw it. With `parallelism` 1 this is the serial loop: propose, evaluate, tell.

    The budget counts evaluations done and in flight; a failed trial spends none. A proposal of an architecture
    already evaluated is told its figure again and costs nothing, unless the strategy re-evaluates at that point
    (then it is evaluated once more: one evaluation of the budget). A proposal of one still in flight ends the
    step: the strategy waits for a result before proposing more (a final race re-evaluating its leader, say).

    With deployment limits (`gate`, `nasjobs.constraints`), a proposal of a new architecture whose network is over
    them is skipped: counted as a proposal, never a trial, no budget spent. The strategy hears of it through its
    `skipped(arch, value)`, with `value` what the failure policy tells of a failed trial (the worst figure so far
    under `worst`, None under `ignore` or before any figure), and learns from it what its checkpoint can keep: a
    skipped proposal is in no trial, so no restore gives it back (`Strategy.skipped`). After the gate's limit of
    skips in a row the planner proposes no more and `infeasible` says why.
    """

    def __init__(self, spec: Any, space: Any, strategy: Any, parallelism: int = 1,
                 failure_policy: str = "worst", gate: Gate | None = None) -> None:
        if failure_policy not in FAILURE_POLICIES:
            raise ValueError(f"unknown failure policy {failure_policy!r}; choose one of {', '.join(FAILURE_POLICIES)}")
        self.spec, self.space, self.strategy = spec, space, strategy
        self.parallelism, self.failure_policy, self.gate = parallelism, failure_policy, gate
        self.trials: dict[int, TrialRecord] = {}
        self.by_key: dict[str, TrialRecord] = {}
        self.weighted: set[int] = set()  # numbers of the trials whose record names kept weights
        self.in_flight: dict[int, TrialRecord] = {}
        self.before: dict[int, float] = {}  # the figure of a trial being evaluated once more, before it
        self.board = Leaderboard([])
        self.done_numbers: list[int] = []  # numbers of the trials evaluated at least once, in order
        self.proposals = self.next_number = self.told = self.repeats = 0
        self.exhausted = False

    def restore(self, state: dict[str, Any] | None, trials: list[TrialRecord]) -> None:
        """Take up a search from its recorded trials (any status) and the strategy checkpoint saved with them."""
        for trial in trials:
            self._index(trial)
        if state is not None:
            state = self._load_gate(state)
            told = sorted((t for t in trials if self._told_value(t) is not None),
                          key=lambda t: (t.told is not None, t.told or 0, t.number))
            history = [Observed(t.arch_key, tuple(t.evaluations) or (self._told_value(t),)) for t in told]
            restore_strategy(self.strategy, state, history)
        for hook, value in (("set_budget", self.spec.budget), ("set_parallelism", self.parallelism)):
            if hasattr(self.strategy, hook):  # `Strategy` has both; a duck-typed strategy may have neither
                getattr(self.strategy, hook)(value)

    def _load_gate(self, state: dict[str, Any]) -> dict[str, Any]:
        """The strategy's part of a checkpoint, once the gate has taken its counters out of it."""
        if GATE_KEY not in state:
            return state
        state = dict(state)
        gate = state.pop(GATE_KEY)
        if self.gate is not None:
            self.gate.load(gate)
        # Proposals made after the last trial was proposed (skipped ones) are in no trial's count.
        self.proposals = max(self.proposals, int(gate.get("proposals", 0)))
        return state

    @property
    def skipped(self) -> int:
        """Proposals skipped for being over the deployment limits (0 without limits)."""
        return self.gate.skipped if self.gate is not None else 0

    @property
    def infeasible(self) -> str | None:
        """Why no more can be proposed: too many proposals in a row over the deployment limits; else None."""
        return self.gate.impossible if self.gate is not None else None

    def _skip(self, arch: Any, key: str) -> bool:
        """Whether the new architecture `arch` is over the deployment limits: then it is skipped, and the strategy
        hears of it (see the class docstring)."""
        if self.gate is None or not self.gate.refuses(arch, key):
            return False
        value = self._worst() if self.failure_policy == "worst" else None
        skipped = getattr(self.strategy, "skipped", None)  # a duck-typed strategy may not have it
        if skipped is not None:
            skipped(arch, value)
        return True

    def _worst(self) -> float | None:
        """The worst figure evaluated so far (None before any)."""
        return self.trials[self.board.order[-1][1]].val_acc if self.board.order else None

    def _put(self, trial: TrialRecord) -> None:
        """Hold `trial` as the record of its number and architecture (and of kept weights, when it names some)."""
        self.trials[trial.number] = self.by_key[trial.arch_key] = trial
        if trial.weights_path:
            self.weighted.add(trial.number)
        else:
            self.weighted.discard(trial.number)

    def forget_weights(self, numbers: list[int]) -> None:
        """The weights of these trials are no longer kept."""
        for number in numbers:
            self.trials[number].weights_path = None
            self.weighted.discard(number)

    def _index(self, trial: TrialRecord) -> None:
        self._put(trial)
        self.next_number = max(self.next_number, trial.number + 1)
        self.proposals = max(self.proposals, trial.proposals)
        if trial.told is not None:
            self.told = max(self.told, trial.told + 1)
        if trial.evaluations and trial.status != FAILED:
            self.board.add(trial)
            bisect.insort(self.done_numbers, trial.number)
        if trial.in_flight:
            self.in_flight[trial.number] = trial
            if trial.job == AGAIN:
                self.before[trial.number] = trial.val_acc

    @staticmethod
    def _told_value(trial: TrialRecord) -> float | None:
        """What the strategy was first told of a trial: its first evaluation, or for a failed one what the
        failure policy told it (None: nothing yet, or nothing at all)."""
        if trial.evaluations:
            return trial.evaluations[0]
        return trial.fidelity.get("told_as") if trial.status == FAILED else None

    def stop_reason(self, elapsed: float) -> str | None:
        """Why no more should be proposed (budget, patience or time limit), or None."""
        if self.board.evaluations + len(self.in_flight) >= self.spec.budget:
            return "budget"
        best = self.board.best
        if self.spec.patience and best is not None:
            if len(self.done_numbers) - bisect.bisect_right(self.done_numbers, best) >= self.spec.patience:
                return "patience"
        if self.spec.max_seconds and elapsed >= self.spec.max_seconds:
            return "time_limit"
        return None

    def plan(self, elapsed: float) -> Plan:
        """Propose until `parallelism` trials are in flight or the search should stop; `elapsed`: search seconds
        so far, summed over resumptions."""
        jobs: list[TrialRecord] = []
        while (len(self.in_flight) < self.parallelism and not self.exhausted and self.infeasible is None
               and self.stop_reason(elapsed) is None):
            arch = self.strategy.propose()
            self.proposals += 1
            key = self.space.to_str(arch)
            known = self.by_key.get(key)
            if known is None:
                if not self._skip(arch, key):
                    jobs.append(self._new_trial(arch, key))
            elif known.status == DONE and self.strategy.reevaluates:
                self.repeats = 0
                self.before[known.number] = known.val_acc
                known.status, known.job, known.proposals = PENDING, AGAIN, self.proposals
                self.in_flight[known.number] = known
                jobs.append(known)
            elif known.in_flight:  # the strategy wants what is still running: wait for a result before more
                break
            else:  # a repeat spends nothing; the strategy hears the figure again where there is one
                value = known.val_acc if known.status == DONE else self._told_value(known)
                if value is not None:
                    self.strategy.observe(arch, value)
                self.repeats += 1
                if self.repeats >= MAX_REPEATED_PROPOSALS:
                    log.warning("strategy keeps proposing evaluated architectures; stopping at %d trials",
                                len(self.trials))
                    self.exhausted = True
        finished = None
        if not self.in_flight:
            finished = "exhausted" if self.exhausted else self.stop_reason(elapsed)
        return Plan(jobs, finished)

    def _new_trial(self, arch: Any, key: str) -> TrialRecord:
        self.repeats = 0
        if self.gate is not None:
            self.gate.admitted()
        best = self.board.best
        distance = None if best is None else self.space.distance(arch, self.space.from_str(self.trials[best].arch_key))
        trial = TrialRecord(self.next_number, key, self.space.display(arch), 0.0, 0, 0, 0.0, {}, [], None,
                            self.spec.estimator, proposals=self.proposals, distance_to_incumbent=distance,
                            status=PENDING)
        self._index(trial)
        return trial

    def state_dict(self) -> dict[str, Any]:
        """What is saved with each step: the strategy's checkpoint, and the gate's counters where there are limits."""
        state = self.strategy.state_dict()
        return state if self.gate is None else {**state, GATE_KEY: {**self.gate.state(), "proposals": self.proposals}}

    def tell(self, trial: TrialRecord) -> None:
        """A trial's job is done: its record (status DONE) holds the new evaluation last in `evaluations`."""
        self.in_flight.pop(trial.number, None)
        arch = self.space.from_str(trial.arch_key)
        if trial.number in self.before:  # evaluated once more: one evaluation more, a new mean
            self.board.reevaluated(trial, self.before.pop(trial.number))
        else:
            trial.told = self.told
            self.told += 1
            self.board.add(trial)
            bisect.insort(self.done_numbers, trial.number)
        trial.status, trial.job = DONE, ""
        self._put(trial)
        self.strategy.observe(arch, trial.evaluations[-1])

    def fail(self, trial: TrialRecord, error: str) -> None:
        """A trial's job failed. A first evaluation is marked failed and told per the failure policy; a failed
        re-evaluation leaves the trial with the figure it had."""
        self.in_flight.pop(trial.number, None)
        self._put(trial)
        if trial.number in self.before:
            trial.val_acc = self.before.pop(trial.number)
            trial.status, trial.job = DONE, ""
            return
        trial.status, trial.error, trial.job = FAILED, error, ""
        if self.failure_policy == "worst":
            worst = self._worst()
            worst = 0.0 if worst is None else worst
            trial.fidelity = {**trial.fidelity, "told_as": worst}
            trial.told = self.told
            self.told += 1
            self.strategy.observe(self.space.from_str(trial.arch_key), worst)

    def kept(self, top_k: int) -> list[int]:
        """The trials whose weights are kept: the best `top_k`."""
        return self.board.top(top_k)

    @property
    def best(self) -> TrialRecord | None:
        return None if self.board.best is None else self.trials[self.board.best]


class BracketPlanner(Planner):
    """Successive halving (Jamieson & Talwalkar 2016) and Hyperband (Li et al. 2018, Algorithm 1) with up to
    `parallelism` trials in flight: a bracket is filled with new architectures from the strategy, each trained to
    the lowest rung, as many at once as allowed; once every member has its rung, the best floor(n/eta) are
    promoted and trained on to the next rung together (from their own checkpoints, `RUNG` jobs), the rest told
    to the strategy with their figure; after the top rung the survivors are told and the next bracket begins.
    Which trials survive each cut is derived from the recorded rungs, so a restored planner redoes exactly the
    missing work, and the strategy is given its history in the order the cuts told it (`bracket_told_order`).
    With `parallelism` 1 this is the serial loop. A trial that fails leaves its bracket and is not told: a
    bracket's cuts rank figures, and a failure has none.

    `bracket(index)` gives a bracket's size and rungs (epochs); `forget(number)` drops a trial's resumable
    checkpoint once it can no longer be promoted."""

    def __init__(self, spec: Any, space: Any, strategy: Any, bracket: Callable[[int], tuple[int, list[int]]],
                 eta: int, parallelism: int = 1, forget: Callable[[int], None] = lambda number: None,
                 gate: Gate | None = None) -> None:
        super().__init__(spec, space, strategy, parallelism, "ignore", gate)
        self.bracket, self.eta, self.forget = bracket, eta, forget
        self.loop: dict[str, Any] = {"bracket": 0, "members": [], "observed": []}
        self.reason: str | None = None

    def restore(self, state: dict[str, Any] | None, trials: list[TrialRecord]) -> None:
        for trial in trials:
            self._index(trial)
            if trial.in_flight and trial.job == RUNG:
                self.before[trial.number] = trial.val_acc
        if state is not None:
            self.loop = state["loop"]
            if self.gate is not None and "gate" in state:
                self.gate.load(state["gate"])
                self.proposals = max(self.proposals, int(state["gate"].get("proposals", 0)))
            told: list[int] = []
            for index in range(self.loop["bracket"]):  # a finished bracket told every member, in a fixed order
                members = [t.number for t in trials if t.fidelity.get("bracket") == index and t.status != FAILED]
                told += bracket_told_order(members, self.trials, len(self.bracket(index)[1]), self.eta)
            told += self.loop["observed"]
            restore_strategy(self.strategy, state["strategy"],
                             [Observed(self.trials[n].arch_key, tuple(self.trials[n].evaluations)) for n in told])

    def state_dict(self) -> dict[str, Any]:
        state = {"strategy": self.strategy.state_dict(), "loop": self.loop}
        return state if self.gate is None else {**state, "gate": {**self.gate.state(), "proposals": self.proposals}}

    def stop_reason(self, elapsed: float) -> str | None:
        """As `Planner.stop_reason`, counting architectures: a promotion spends no budget."""
        first = sum(1 for t in self.in_flight.values() if t.job != RUNG)
        if self.board.evaluations + first >= self.spec.budget:
            return "budget"
        in_flight, self.in_flight = self.in_flight, {}
        try:
            return super().stop_reason(elapsed)
        finally:
            self.in_flight = in_flight

    def _ready(self, numbers: list[int], rung: int) -> bool:
        """Whether every trial of `numbers` has its figure of rung `rung` (counting from 0) recorded."""
        return all(len(self.trials[n].fidelity.get("rungs", [])) > rung and not self.trials[n].in_flight
                   for n in numbers)

    def _tell(self, number: int) -> None:
        if number not in self.loop["observed"]:
            trial = self.trials[number]
            self.strategy.observe(self.space.from_str(trial.arch_key), trial.val_acc)
            self.loop["observed"].append(number)
            self.forget(number)

    def plan(self, elapsed: float) -> Plan:
        jobs: list[TrialRecord] = []
        while True:
            size, rungs = self.bracket(self.loop["bracket"])
            members: list[int] = self.loop["members"]
            while (len(members) < size and len(self.in_flight) < self.parallelism and not self.exhausted
                   and self.infeasible is None and self.stop_reason(elapsed) is None):
                arch = self.strategy.propose()
                self.proposals += 1
                key = self.space.to_str(arch)
                known = self.by_key.get(key)
                if known is not None:
                    if known.in_flight:
                        break
                    if known.status == DONE:
                        self.strategy.observe(arch, known.val_acc)
                    self.repeats += 1
                    if self.repeats >= MAX_REPEATED_PROPOSALS:
                        self.exhausted = True
                    continue
                if self._skip(arch, key):
                    continue
                trial = self._new_trial(arch, key)
                trial.fidelity = {"bracket": self.loop["bracket"], "rungs": []}
                members.append(trial.number)
                jobs.append(trial)
            self.reason = "exhausted" if self.exhausted else self.stop_reason(elapsed)
            if len(members) < size and self.reason is None:
                return Plan(jobs, None)  # filling: waiting for a free slot
            if self.reason == "time_limit" or not members:
                return Plan(jobs, self.reason if not self.in_flight else None)
            if not self._ready(members, 0):
                return Plan(jobs, None)
            cohort = list(members)
            for rung, _ in enumerate(rungs[1:], start=1):
                survivors, losers = promotion(cohort, self.trials, rung, self.eta)
                for number in losers:
                    self._tell(number)
                waiting = [n for n in survivors if len(self.trials[n].fidelity["rungs"]) <= rung]
                for number in waiting:
                    trial = self.trials[number]
                    if not trial.in_flight and len(self.in_flight) < self.parallelism:
                        self.before[number] = trial.val_acc
                        trial.status, trial.job = PENDING, RUNG
                        self.in_flight[number] = trial
                        jobs.append(trial)
                if waiting:
                    return Plan(jobs, None)
                cohort = survivors
            for number in cohort:
                self._tell(number)
            self.loop = {"bracket": self.loop["bracket"] + 1, "members": [], "observed": []}
            self.reason = self.reason or self.stop_reason(elapsed)
            if self.reason is not None:
                return Plan(jobs, self.reason)

    def tell(self, trial: TrialRecord) -> None:
        """A trial reached a rung: its record holds the rung's figure (`fidelity["rungs"]`, one evaluation)."""
        self.in_flight.pop(trial.number, None)
        if trial.number in self.before:
            self.board.reevaluated(trial, self.before.pop(trial.number), evaluations=0)
        else:
            self.board.add(trial)
            bisect.insort(self.done_numbers, trial.number)
        trial.status, trial.job = DONE, ""
        self._put(trial)

    def fail(self, trial: TrialRecord, error: str) -> None:
        super().fail(trial, error)
        if trial.status == FAILED and trial.number in self.loop["members"]:
            self.loop["members"].remove(trial.number)
