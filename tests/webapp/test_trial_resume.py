"""A trial handed back mid-way resumes from its checkpoint on the platform; its page and the API say where."""
import pytest
import torch
from django.urls import reverse

from nasjobs.records import SearchCancelled
from nasjobs.search import ExperimentSpec
from webapp.experiments import services
from webapp.experiments.runner import experiment_advance_now, runner_for, trial_run_now
from webapp.experiments.models import Experiment, Trial

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=3, seed=2,
                      options={"space": {"max_layers": 1}})


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def experiment(alice, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR, settings.NAS_CHECKPOINT_SECONDS = tmp_path, 0
    experiment = services.experiment_create(user=alice, name="resumed", spec=SPEC, enqueue=False)
    assert experiment_advance_now(experiment.pk, "planner") == "done"
    return Experiment.objects.get(pk=experiment.pk)


def stopping_after(experiment, epoch: int, error: type[BaseException], monkeypatch) -> None:
    """Make the experiment's estimator (as this process caches it) stop its next trial after `epoch` epochs."""
    estimator = runner_for(experiment).estimator
    evaluate = estimator.evaluate

    def stops(arch, budget, *, seed, hook=None, resume=None):
        def then_stop(n, acc):
            hook(n, acc)
            if n == epoch:
                raise error("stopped after epoch 2")
        monkeypatch.setattr(estimator, "evaluate", evaluate)  # once
        return evaluate(arch, budget, seed=seed, hook=then_stop, resume=resume)

    monkeypatch.setattr(estimator, "evaluate", stops)


def test_a_trial_handed_back_keeps_its_checkpoint_and_the_next_worker_resumes_there(experiment, alice_client,
                                                                                     monkeypatch):
    trial = Trial.objects.get(experiment=experiment)
    partial = runner_for(experiment).trial_checkpoint(trial.number).path
    stopping_after(experiment, 2, SearchCancelled, monkeypatch)
    assert trial_run_now(trial.pk, "worker-a") == "handed back"
    trial.refresh_from_db()
    assert trial.status == "pending" and partial.exists()

    assert trial_run_now(trial.pk, "worker-b") == "done"
    trial.refresh_from_db()
    assert trial.status == "done" and trial.attempts == 2 and trial.resumed_from_epoch == 2
    assert "resumed at epoch 2 of 3 from the trial's checkpoint" in trial.log_tail
    runner = runner_for(experiment)
    straight = runner.estimator.evaluate(runner.space.from_str(trial.arch_key), 3, seed=runner.trial_seed(0))
    assert trial.curve == straight.curve and trial.loss_curve == straight.loss_curve
    assert not partial.exists() and list(partial.parent.glob("*.partial.*")) == []
    assert Experiment.objects.get(pk=experiment.pk).status == "succeeded"

    page = alice_client.get(reverse("trial_detail", args=[experiment.pk, 0])).content.decode()
    assert "at epoch 2 of 3 from the trial&#x27;s checkpoint" in page
    api = alice_client.get(f"/api/experiments/{experiment.pk}/trials/").json()
    assert api["results"][0]["resumed_from_epoch"] == 2


def test_a_failed_trial_leaves_no_checkpoint_and_one_trained_straight_through_says_so(experiment, monkeypatch,
                                                                                      alice_client):
    trial = Trial.objects.get(experiment=experiment)
    partial = runner_for(experiment).trial_checkpoint(trial.number).path
    stopping_after(experiment, 2, RuntimeError, monkeypatch)
    assert trial_run_now(trial.pk, "worker-a") == "failed"
    assert not partial.exists()
    following = Trial.objects.get(experiment=experiment, number=1)  # the search goes on with another
    assert trial_run_now(following.pk, "worker-a") == "done"
    following.refresh_from_db()
    assert following.resumed_from_epoch is None and list(partial.parent.glob("*.partial.*")) == []
    page = alice_client.get(reverse("trial_detail", args=[experiment.pk, 1])).content.decode()
    assert 'id="resumed"' not in page
