"""Many real Celery workers on one experiment: trial-level tasks, takeover of a killed worker's trial (resumed from
its checkpoint), failed trials."""
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from nasjobs.estimators import ESTIMATORS
from tests.conftest import wait_for
from webapp.experiments import services
from webapp.experiments.models import Experiment, Trial

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def status_of(pk: int) -> str:
    return Experiment.objects.get(pk=pk).status


def logs(*workers) -> callable:
    return lambda: "\n---\n".join(w.log() for w in workers)


def create(user, **fields) -> Experiment:
    spec = Experiment(**{"dataset": "digits", "space": "chain_cnn", "strategy": "random", "estimator": "train",
                         "seed": 3, "top_k": 2, **fields}).spec()
    return services.experiment_create(user=user, name="many workers", spec=spec)


def overlapping(trials: list[Trial]) -> bool:
    """Whether two of the trials ran at the same time."""
    spans = sorted((t.started_at, t.finished_at) for t in trials)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_two_workers_share_one_experiment_and_evaluate_each_trial_once(alice, celery_worker_factory):
    experiment = create(alice, budget=6, epochs=4, parallelism=2)
    workers = [celery_worker_factory(NAS_TORCH_THREADS="1"), celery_worker_factory(NAS_TORCH_THREADS="1")]
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 300, "the experiment", logs(*workers))
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    trials = list(experiment.trials.order_by("number"))
    assert experiment.trials_done == 6 and len(trials) == 6
    assert all(t.status == "done" and t.attempts == 1 and len(t.evaluations) == 1 for t in trials)
    assert len({t.arch_key for t in trials}) == 6
    assert sorted(t.told for t in trials) == list(range(6))  # each result told once, the order recorded
    assert len({t.claimed_by for t in trials}) == 2, "both workers took trials"
    assert overlapping(trials), "two trials ran at once"
    assert all(t.host and t.device == "cpu" for t in trials)
    assert 0 < experiment.test_acc <= 1


def test_a_killed_workers_trial_runs_again_elsewhere_within_a_minute(alice, celery_worker_factory, settings):
    # Trials of many epochs, so the kill lands mid-trial; a lease as in production's order of magnitude.
    lease = 12
    settings.NAS_LEASE_SECONDS = lease
    experiment = create(alice, budget=2, epochs=30, parallelism=1)
    victim = celery_worker_factory(NAS_LEASE_SECONDS=str(lease), NAS_SWEEP_SECONDS="2", NAS_TORCH_THREADS="1")
    wait_for(lambda: Trial.objects.filter(experiment=experiment, status="running").exists(), 120,
             "a trial to start", victim.log)
    survivor = celery_worker_factory(NAS_LEASE_SECONDS=str(lease), NAS_SWEEP_SECONDS="2", NAS_TORCH_THREADS="1")
    time.sleep(3)  # both idle-or-busy, the survivor connected
    running = Trial.objects.get(experiment=experiment, status="running")
    victim.kill()
    killed_at = time.monotonic()
    wait_for(lambda: Trial.objects.filter(pk=running.pk, attempts=2, status__in=("running", "done")).exists(), 60,
             "the killed worker's trial to run again", logs(victim, survivor))
    taken_over = time.monotonic() - killed_at
    print(f"the trial ran again {taken_over:.1f} s after the kill (lease {lease} s)")
    assert taken_over < 60
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 300, "the experiment", survivor.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    assert experiment.trials_done == 2
    assert list(experiment.trials.values_list("number", flat=True)) == [0, 1]
    assert Trial.objects.get(pk=running.pk).claimed_by != running.claimed_by


def checkpointed_epochs(path: Path) -> int:
    """Epochs a trial's checkpoint holds (0 while it has none); it is replaced atomically, so never read half."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["trainer"]["epoch"])
    except FileNotFoundError:
        return 0


def test_a_killed_workers_trial_resumes_from_its_checkpoint_on_another_worker(alice, celery_worker_factory, settings):
    epochs = 20
    experiment = create(alice, budget=1, epochs=epochs, top_k=1, options={"space": {"max_layers": 1}})
    env = {"NAS_CHECKPOINT_SECONDS": "0", "NAS_SWEEP_SECONDS": "1", "NAS_TORCH_THREADS": "1"}
    workers = [celery_worker_factory(**env), celery_worker_factory(**env)]
    partial = Path(settings.NAS_ARTIFACTS_DIR) / f"experiment-{experiment.pk}" / "trial-00000.partial.pt"
    wait_for(lambda: checkpointed_epochs(partial) >= 3, 120, "a few epochs checkpointed", logs(*workers))
    running = Trial.objects.get(experiment=experiment, number=0)
    pool_pid = int(running.claimed_by.rsplit(":", 1)[1])  # the pool process, in its worker's process group
    victim = next(w for w in workers if os.getpgid(pool_pid) == w.proc.pid)
    victim.kill()
    saved = checkpointed_epochs(partial)
    assert 3 <= saved < epochs, "killed mid-trial"
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 120, "the experiment", logs(*workers))
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    trial = Trial.objects.get(pk=running.pk)
    assert trial.status == "done" and trial.attempts == 2 and trial.claimed_by != running.claimed_by
    assert trial.resumed_from_epoch == saved  # from the last epoch the killed worker saved
    assert len(trial.curve) == len(trial.loss_curve) == epochs and trial.epochs_trained == epochs
    assert f"resumed at epoch {saved} of {epochs} from the trial's checkpoint" in trial.log_tail
    assert not partial.exists()


@pytest.fixture
def flaky():
    """The plug-in estimator that fails for about one architecture in three, here and in the workers."""
    from tests.plugins.flaky import FlakyEstimator, fails

    ESTIMATORS._items["flaky"] = FlakyEstimator
    yield fails
    ESTIMATORS._items.pop("flaky", None)


def test_failing_trials_are_recorded_and_the_search_goes_on(alice, celery_worker_factory, flaky):
    experiment = create(alice, dataset="nb201-cifar10", space="nb201", estimator="flaky", budget=30, epochs=1,
                        parallelism=3, max_failures=10, options={"estimator": {"fail_one_in": 3}})
    worker = celery_worker_factory(NAS_PLUGINS="tests.plugins.flaky")
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 120, "the experiment", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    statuses = Counter(experiment.trials.values_list("status", flat=True))
    assert statuses["done"] == 30 == experiment.trials_done  # failures spend no budget
    assert statuses["failed"] >= 3
    for trial in experiment.trials.filter(status="failed"):
        assert flaky(trial.arch_key, 3)
        assert trial.error.startswith("RuntimeError: injected fault") and "Traceback" in trial.traceback
        assert trial.fidelity["told_as"] <= experiment.best_val_acc  # told the worst figure seen
    assert "Task webapp.run_trial" in worker.log() and worker.proc.poll() is None  # the worker lives on


def test_too_many_failures_in_a_row_fail_the_experiment_saying_why(alice, celery_worker_factory, flaky):
    experiment = create(alice, dataset="nb201-cifar10", space="nb201", estimator="flaky", budget=30, epochs=1,
                        max_failures=2, failure_policy="ignore", options={"estimator": {"fail_one_in": 1}})
    worker = celery_worker_factory(NAS_PLUGINS="tests.plugins.flaky")
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 120, "the experiment", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "failed"
    assert experiment.error.startswith("2 trials in a row failed (the experiment allows 2); the last: RuntimeError")
    assert experiment.trials.filter(status="failed").count() == 2 and experiment.trials_done == 0
    assert all("told_as" not in t.fidelity for t in experiment.trials.all())  # "ignore": the strategy was not told


def test_results_told_at_once_by_two_workers_lose_no_update(alice, celery_worker_factory):
    """Table lookups cost microseconds, so two workers tell results at the same moment all the time: every
    evaluation is counted, every trial told once and in one order, and no job runs twice."""
    experiment = create(alice, dataset="nb201-cifar10", space="nb201", strategy="evolution", estimator="benchmark",
                        budget=150, epochs=1, parallelism=4, options={"strategy": {"population": 20, "sample_size": 5}})
    workers = [celery_worker_factory(), celery_worker_factory()]
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 180, "the experiment", logs(*workers))
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    trials = list(experiment.trials.all())
    # Evolution's final race evaluates its leaders again: each evaluation counts, each trial is told once.
    assert experiment.trials_done == 150 == sum(len(t.evaluations) for t in trials)
    assert any(len(t.evaluations) > 1 for t in trials)
    assert sorted(t.told for t in trials) == list(range(len(trials)))
    assert all(t.status == "done" and t.attempts == len(t.evaluations) for t in trials)
    assert len({t.claimed_by for t in trials}) == 2
    assert experiment.best_val_acc == max(t.val_acc for t in trials)


def test_successive_halving_trains_a_rungs_members_in_parallel(alice, celery_worker_factory, tmp_path):
    """A bracket of 4 at 1 epoch, the best 2 promoted to 2 epochs, the best of those to 4: the members of a rung
    train side by side on two workers, and the search evaluates the architectures a serial run does."""
    import torch

    from nasjobs.artifacts import ArtifactStore
    from nasjobs.search import MemoryStore, SearchRunner

    options = {"estimator": {"min_epochs": 1, "eta": 2, "bracket_size": 4}}
    experiment = create(alice, estimator="successive_halving", budget=8, epochs=4, parallelism=4, options=options)
    workers = [celery_worker_factory(NAS_TORCH_THREADS="1"), celery_worker_factory(NAS_TORCH_THREADS="1")]
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 300, "the experiment", logs(*workers))
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    trials = list(experiment.trials.order_by("number"))
    assert len(trials) == 8 == experiment.trials_done
    for bracket in (0, 1):
        members = [t for t in trials if t.fidelity["bracket"] == bracket]
        assert sorted(len(t.fidelity["rungs"]) for t in members) == [1, 1, 2, 3]
        assert [r["epochs"] for r in max(members, key=lambda t: len(t.fidelity["rungs"])).fidelity["rungs"]] == \
            [1, 2, 4]
    assert len({t.claimed_by for t in trials}) == 2  # both workers took the bracket's jobs

    reference = MemoryStore()
    SearchRunner(experiment.spec(), reference, ArtifactStore(tmp_path, 0), torch.device("cpu")).run()
    assert [t.arch_key for t in trials] == [t.arch_key for t in reference.trials]


def test_a_trial_past_its_time_limit_fails_and_says_so(alice, celery_worker_factory):
    experiment = create(alice, budget=3, epochs=500, max_failures=2)
    worker = celery_worker_factory(NAS_TRIAL_TIME_LIMIT="2")
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 120, "the experiment", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "failed"
    assert experiment.error == ("2 trials in a row failed (the experiment allows 2); the last: TimeLimit: the trial "
                                "ran past its limit of 2 s (NAS_TRIAL_TIME_LIMIT)")
    assert list(experiment.trials.values_list("status", flat=True)) == ["failed", "failed"]
    assert worker.proc.poll() is None


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "every-process"])
def test_a_worker_stopped_with_sigterm_loses_no_trial(alice, celery_worker_factory, whole_group):
    """A deploy stops a worker with SIGTERM. Sent to its main process, Celery's warm shutdown lets the running
    trial finish and record its result; sent to every process at once (a container's or a service manager's stop),
    the pool process hands its trial back, pending and queued again. Either way nothing is marked failed and the
    next worker carries on."""
    import signal

    experiment = create(alice, budget=2, epochs=60, parallelism=1)  # trials of seconds: the signal lands mid-trial
    leaving = celery_worker_factory()
    # Once it trains (its log, stored with each heartbeat, has epochs): a signal landing between the claim and the
    # training leaves the trial to the lease's takeover instead, a case the kill tests cover.
    wait_for(lambda: Trial.objects.filter(experiment=experiment, status="running", log_tail__contains="epoch ")
             .exists(), 120, "a trial to train", leaving.log)
    running = Trial.objects.get(experiment=experiment, status="running")
    (os.killpg if whole_group else os.kill)(leaving.proc.pid, signal.SIGTERM)
    wait_for(lambda: leaving.proc.poll() is not None, 120, "the worker to exit", leaving.log)
    running.refresh_from_db()
    assert "Warm shutdown" in leaving.log()
    if whole_group:
        assert running.status == "pending" and "handed back: its worker is stopping" in leaving.log(), leaving.log()
    else:
        assert running.status == "done"
    assert not experiment.trials.filter(status="failed").exists()

    arriving = celery_worker_factory()
    wait_for(lambda: status_of(experiment.pk) not in Experiment.ACTIVE, 240, "the experiment", arriving.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded" and experiment.trials_done == 2
    assert not experiment.trials.filter(status="failed").exists()
