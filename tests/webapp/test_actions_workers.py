"""Extend and retrain with real Celery workers: an extended search continues its strategy, a retraining is a trial
of its own kind."""
import pytest

from tests.conftest import wait_for
from webapp.experiments import services
from webapp.experiments.models import Experiment, ExperimentEvent, Trial

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def create(user, name: str = "search", **fields) -> Experiment:
    spec = Experiment(**{"dataset": "nb201-cifar10", "space": "nb201", "strategy": "random",
                         "estimator": "benchmark", "epochs": 1, "seed": 7, "top_k": 2, **fields}).spec()
    return services.experiment_create(user=user, name=name, spec=spec)


def ended(pk: int) -> bool:
    return Experiment.objects.get(pk=pk).status not in (*Experiment.ACTIVE, Experiment.Status.PENDING_REVIEW)


def archs(experiment: Experiment) -> list[str]:
    return list(experiment.trials.order_by("number").values_list("arch_key", flat=True))


@pytest.mark.parametrize("strategy, options", [
    ("random", {}),
    # No final race: a race re-evaluates the leaders in the last share of the budget, which a longer run puts later.
    ("evolution", {"strategy": {"population": 4, "sample_size": 2, "final_race": 0}}),
])
def test_an_extended_search_evaluates_what_a_longer_run_does(alice, celery_worker_factory, strategy, options):
    worker = celery_worker_factory()
    straight = create(alice, "straight", budget=20, strategy=strategy, options=options)
    extended = create(alice, "extended", budget=10, strategy=strategy, options=options)
    wait_for(lambda: ended(straight.pk) and ended(extended.pk), 120, "both searches", worker.log)
    extended.refresh_from_db()
    assert extended.status == "succeeded" and extended.trials_done == 10, extended.error
    first_ten = archs(extended)

    assert services.experiment_extend(extended, alice, 10)
    extended.refresh_from_db()
    assert extended.status == "queued" and extended.budget == 20 and extended.stop_reason == ""
    wait_for(lambda: ended(extended.pk), 120, "the extension", worker.log)
    extended.refresh_from_db()
    straight.refresh_from_db()
    assert extended.status == "succeeded", extended.error
    assert extended.trials_done == 20 == extended.trials.count()
    assert all(len(t.evaluations) == 1 and t.attempts == 1 for t in extended.trials.all()), "nothing evaluated twice"
    assert archs(extended)[:10] == first_ten
    assert archs(extended) == archs(straight)
    assert sorted(extended.trials.values_list("told", flat=True)) == list(range(20))
    assert extended.best_val_acc == straight.best_val_acc and extended.test_acc == straight.test_acc
    assert extended.events.filter(action=ExperimentEvent.Action.EXTENDED).count() == 1


def test_a_search_stopped_by_patience_runs_every_trial_of_its_extension(alice, celery_worker_factory):
    worker = celery_worker_factory()
    experiment = create(alice, budget=200, patience=2)
    wait_for(lambda: ended(experiment.pk), 120, "the search", worker.log)
    experiment.refresh_from_db()
    assert experiment.stop_reason == "patience" and experiment.trials_done < 200
    done = experiment.trials_done

    assert services.experiment_extend(experiment, alice, 5)
    experiment.refresh_from_db()
    assert experiment.patience == 0 and experiment.budget == done + 5
    assert "patience of 2 trials, which had run out, lifted" in experiment.events.get(action="extended").detail
    wait_for(lambda: ended(experiment.pk), 120, "the extension", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded" and experiment.stop_reason == "budget"
    assert experiment.trials_done == done + 5 == experiment.trials.count()


def test_a_retraining_trains_the_best_architecture_again_beside_the_search(alice, celery_worker_factory):
    worker = celery_worker_factory(NAS_TORCH_THREADS="1")
    spec = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=2, epochs=1,
                      seed=1, options={"space": {"max_layers": 2}}).spec()
    experiment = services.experiment_create(user=alice, name="tiny", spec=spec)
    wait_for(lambda: ended(experiment.pk), 180, "the search", worker.log)
    experiment.refresh_from_db()
    assert experiment.status == "succeeded", experiment.error
    strategy_state, budget = experiment.strategy_state, experiment.budget

    retrain = services.experiment_retrain(experiment, alice, 2)
    wait_for(lambda: Trial.everything.get(pk=retrain.pk).status not in ("pending", "running"), 180,
             "the retraining", worker.log)
    retrain.refresh_from_db()
    experiment.refresh_from_db()
    assert retrain.status == "done", retrain.error
    assert retrain.is_retrain and retrain.source_number == experiment.best_trial_number
    assert retrain.arch_key == experiment.trials.get(number=experiment.best_trial_number).arch_key
    assert retrain.fidelity["epochs"] == 2 and len(retrain.curve) == 2
    assert 0 < retrain.val_acc <= 1 and 0 < retrain.test_acc <= 1 and retrain.attempts == 1
    assert experiment.trials_done == 2 and experiment.trials.count() == 2 and experiment.budget == budget
    assert experiment.strategy_state == strategy_state, "the strategy was told nothing"
    assert experiment.events.filter(action="retrained").exists()


def test_a_killed_workers_retraining_is_taken_over_by_another(alice, celery_worker_factory, settings):
    lease = 12
    settings.NAS_LEASE_SECONDS = lease
    spec = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=1, epochs=1,
                      seed=2, options={"space": {"max_layers": 2}}).spec()
    experiment = services.experiment_create(user=alice, name="tiny", spec=spec)
    victim = celery_worker_factory(NAS_LEASE_SECONDS=str(lease), NAS_SWEEP_SECONDS="2", NAS_TORCH_THREADS="1")
    wait_for(lambda: ended(experiment.pk), 180, "the search", victim.log)
    # Many epochs, so the kill lands mid-training.
    retrain = services.experiment_retrain(Experiment.objects.get(pk=experiment.pk), alice, 60)
    wait_for(lambda: Trial.everything.filter(pk=retrain.pk, status="running").exists(), 60, "the retraining to start",
             victim.log)
    survivor = celery_worker_factory(NAS_LEASE_SECONDS=str(lease), NAS_SWEEP_SECONDS="2", NAS_TORCH_THREADS="1")
    victim.kill()
    wait_for(lambda: Trial.everything.filter(pk=retrain.pk, attempts=2).exists(), 60,
             "the killed worker's retraining to run again", survivor.log)
    assert services.experiment_cancel(experiment, alice)  # and Cancel stops it where it is
    wait_for(lambda: Trial.everything.filter(pk=retrain.pk, status="failed").exists(), 30, "the cancel", survivor.log)
    row = Trial.everything.get(pk=retrain.pk)
    assert row.error == "cancelled by alice" and row.claimed_by != retrain.claimed_by
    assert Experiment.objects.get(pk=experiment.pk).status == "succeeded"
