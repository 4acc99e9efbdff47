"""The planner knows which recorded trials name kept weights, without a pass over every trial (the platform asks
after each trial which weights to forget)."""
import dataclasses

from nasjobs.options import parse_config
from nasjobs.planner import Planner
from nasjobs.records import PENDING
from nasjobs.search import ExperimentSpec
from nasjobs.spaces import SPACES
from nasjobs.strategies import STRATEGIES

SPEC = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=6, epochs=1, seed=3)


def planner() -> Planner:
    space = SPACES.get("nb201")(parse_config(SPACES.get("nb201").Config, {}))
    cls = STRATEGIES.get("random")
    return Planner(SPEC, space, cls(space, parse_config(cls.Config, {}), 3), 1)


def test_the_trials_that_name_weights_are_known_as_they_are_told_restored_and_forgotten():
    first = planner()
    first.restore(None, [])
    for value, weights in ((0.5, "w0"), (0.7, None), (0.6, "w2")):
        (trial,) = first.plan(0.0).jobs
        trial.val_acc, trial.evaluations, trial.weights_path = value, [value], weights
        first.tell(trial)
    assert first.weighted == {0, 2}
    assert sorted(first.weighted - set(first.kept(2))) == [0]  # the best two are 1 (no weights kept) and 2
    first.forget_weights([0])
    assert first.weighted == {2} and first.trials[0].weights_path is None

    restored = planner()
    records = [dataclasses.replace(t) for t in first.trials.values()]
    restored.restore(first.state_dict(), records)
    assert restored.weighted == {2}
    (pending,) = restored.plan(0.0).jobs
    assert pending.status == PENDING and pending.number not in restored.weighted
