from datetime import timedelta

import pytest
from django.utils import timezone

from nasjobs.search import ExperimentSpec, SpecError, TrialRecord
from webapp.experiments import services
from webapp.experiments.models import Experiment, Trial

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)


def record(n, key="c16k3", acc=0.5):
    return TrialRecord(n, key, key, acc, 10, 20, 0.1, {"epochs": 1}, [acc], f"/x/{n}.pt", "train")


def test_create_validates_before_writing(vision):
    with pytest.raises(SpecError) as err:
        services.experiment_create(user=None, team=vision, name="x",
                                   spec=ExperimentSpec(**{**SPEC.__dict__, "budget": 0}))
    assert err.value.field == "budget"
    assert Experiment.objects.count() == 0


def test_only_one_worker_can_claim_an_experiment(vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    assert services.experiment_claim(e.pk, "w1")
    assert not services.experiment_claim(e.pk, "w2")
    e.refresh_from_db()
    assert e.status == "running" and e.claimed_by == "w1" and e.started_at is not None


def test_a_silent_workers_experiment_is_taken_over_after_the_lease(settings, vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    services.experiment_claim(e.pk, "w1")
    Experiment.objects.filter(pk=e.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.NAS_LEASE_SECONDS + 1))
    assert services.experiment_claim(e.pk, "w2")
    with pytest.raises(services.LostClaim):
        services.trial_record(e.pk, "w1", record(0), {}, [0])
    assert Trial.objects.count() == 0


def test_recording_a_trial_is_atomic_and_forgets_weights_outside_the_top_k(vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    services.experiment_claim(e.pk, "w")
    services.trial_record(e.pk, "w", record(0, "c16k3", 0.5), {"step": 0}, [0])
    services.trial_record(e.pk, "w", record(1, "c32k3", 0.7), {"step": 1}, [1])
    e.refresh_from_db()
    assert e.trials_done == 2 and e.strategy_state == {"step": 1}
    assert e.best_val_acc == 0.7 and e.best_trial_number == 1
    assert dict(Trial.objects.values_list("number", "weights_path")) == {0: "", 1: "/x/1.pt"}
    with pytest.raises(Exception):  # the same architecture twice violates the unique key; nothing changes
        services.trial_record(e.pk, "w", record(2, "c32k3", 0.9), {"step": 2}, [2])
    e.refresh_from_db()
    assert e.trials_done == 2 and e.strategy_state == {"step": 1}


def test_a_trial_finishing_after_cancel_is_kept_and_the_heartbeat_reports_the_cancel(vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    services.experiment_claim(e.pk, "w")
    assert services.experiment_cancel(e)
    services.trial_record(e.pk, "w", record(0), {}, [0])
    assert services.experiment_heartbeat(e.pk, "w") == "cancelled"
    assert not services.experiment_finish(e.pk, "w", 0, 0.9, "budget")
    e.refresh_from_db()
    assert e.status == "cancelled" and e.trials_done == 1


def test_resume_only_from_cancelled_or_failed(django_capture_on_commit_callbacks, vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    assert not services.experiment_resume(e)
    services.experiment_claim(e.pk, "w")
    services.experiment_fail(e.pk, "w", "boom")
    Experiment.objects.filter(pk=e.pk).update(consecutive_failures=3)  # failed for trials failing in a row
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.experiment_resume(e)
    e.refresh_from_db()
    assert e.status == "queued" and e.error == "" and len(callbacks) == 1
    assert e.consecutive_failures == 0  # a resumed run gets its full allowance of failures again


def test_a_reevaluation_updates_its_trial_and_counts_as_an_evaluation(vision):
    e = services.experiment_create(user=None, team=vision, name="x", spec=SPEC, enqueue=False)
    services.experiment_claim(e.pk, "w")
    services.trial_record(e.pk, "w", record(0, "c16k3", 0.5), {}, [0])
    again = record(0, "c16k3", 0.6)
    again.evaluations = [0.5, 0.7]
    services.trial_record(e.pk, "w", again, {"step": 1}, [0])
    e.refresh_from_db()
    trial = Trial.objects.get()
    assert trial.evaluations == [0.5, 0.7] and trial.val_acc == 0.6
    assert e.trials_done == 2 and e.best_val_acc == 0.6
    with pytest.raises(ValueError):  # the same evaluation twice is refused
        services.trial_record(e.pk, "w", again, {}, [0])


def test_trials_run_one_by_one_keep_the_weights_of_the_best_top_k_only(alice, settings, tmp_path, monkeypatch):
    from pathlib import Path

    from nasjobs.artifacts import ArtifactStore
    from webapp.experiments import runner

    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    monkeypatch.setattr(runner, "trials_enqueue", lambda *args, **kwargs: None)  # run here, one by one
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=4, epochs=1, seed=1, top_k=2,
                          options={"space": {"max_layers": 1}})
    e = services.experiment_create(user=alice, name="weights", spec=spec, enqueue=False)
    runner.experiment_advance_now(e.pk, "w")
    while (pending := Trial.objects.filter(experiment=e, status="pending").first()) is not None:
        assert runner.trial_run_now(pending.pk, "w") == "done"
    e.refresh_from_db()
    assert e.status == "succeeded" and e.trials_done == 4
    best = [t.number for t in e.trials.order_by("-val_acc", "number")[:2]]
    kept = dict(e.trials.exclude(weights_path="").values_list("number", "weights_path"))
    assert sorted(kept) == sorted(best)
    files = ArtifactStore(tmp_path, e.pk).dir.glob("trial-*.pt")
    assert sorted(p.name for p in files if ".partial" not in p.name) == sorted(Path(p).name for p in kept.values())


def test_every_planning_step_queues_every_pending_trial_looking_only_at_those_in_flight(alice, monkeypatch):
    """A step queues the trials it proposed and every trial still waiting for a worker (one handed back meanwhile,
    or one whose message was lost), and finds them among the planner's trials in flight by number, not by scanning
    the experiment's trials for 'pending' (which on PostgreSQL walks an index entry for every trial ever pending)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from webapp.experiments import runner

    queued: list[list[int]] = []
    monkeypatch.setattr(runner, "trials_enqueue", lambda experiment, ids, queue=None: queued.append(sorted(ids)))
    spec = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=20, epochs=1, seed=3,
                          parallelism=3)
    e = services.experiment_create(user=alice, name="queued", spec=spec, enqueue=False)
    with pytest.MonkeyPatch.context() as m:  # the queue is sent on commit: run the callbacks at once here
        m.setattr("django.db.transaction.on_commit", lambda f, *a, **k: f())
        runner.experiment_advance_now(e.pk, "w")
        pk = {t.number: t.pk for t in Trial.objects.filter(experiment=e)}
        assert queued == [sorted(pk.values())] and len(pk) == 3
        assert runner.trial_claim(pk[1], "w2")
        runner.trial_hand_back(pk[1], "w2")  # back to waiting, outside any planning step
        with CaptureQueriesContext(connection) as queries:
            assert runner.trial_run_now(pk[0], "w") == "done"
        pk = {t.number: t.pk for t in Trial.objects.filter(experiment=e)}
        assert queued[-1] == sorted([pk[1], pk[2], pk[3]])  # the handed-back one, the waiting one, the new one
    lookup = [q["sql"] for q in queries.captured_queries
              if q["sql"].startswith('SELECT "experiments_trial"."id"') and "pending" in q["sql"]]
    assert len(lookup) == 1 and '"number" IN (1, 2, 3)' in lookup[0].replace("%s", ""), lookup
