from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from nasjobs.search import ExperimentSpec, TrialRecord
from webapp.experiments import services
from webapp.experiments.models import Experiment, Trial, Worker

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)


def make(user, name="exp", status=None, trials=()):
    experiment = services.experiment_create(user=user, name=name, spec=SPEC, enqueue=False)
    if trials:
        assert services.experiment_claim(experiment.pk, "w")
        for i, (key, acc) in enumerate(trials):
            services.trial_record(experiment.pk, "w", TrialRecord(i, key, key, acc, 100 + i, 1000, 0.5, {"epochs": 1},
                                                                  [acc], None, "train"), {"s": i}, [i])
    if status:
        Experiment.objects.filter(pk=experiment.pk).update(status=status)
    experiment.refresh_from_db()
    return experiment


def test_pages_need_a_login(client):
    for url in (reverse("experiment_list"), reverse("experiment_status", args=[1])):
        assert client.get(url).status_code == 302


def test_the_list_shows_everyones_experiments_newest_first(alice_client, alice, bob):
    make(alice, "first")
    make(bob, "second", status="succeeded", trials=[("c16k3", 0.91)])
    page = alice_client.get(reverse("experiment_list")).content.decode()
    assert page.index("second") < page.index("first")
    assert "91.00%" in page and "succeeded" in page and "random" in page


def test_the_detail_page_shows_progress_leaderboard_and_best_diagram(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9)])
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert "2</span> / 3 trials" in page
    board = page[page.index('id="leaderboard"'):]
    assert board.index("c32k5p") < board.index("c16k3")  # ranked by validation accuracy
    assert "<svg" in page and "conv 5x5, 32" in page  # the best architecture, drawn by Graphviz
    assert 'width: 67%' in page
    assert 'id="chart-acc"' in page and 'id="chart-dist"' in page and "unique architectures" in page


def test_the_status_endpoint_returns_the_progress_and_the_api_the_summary(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9)])
    data = alice_client.get(reverse("experiment_status", args=[e.pk]), {"since": 0}).json()
    assert data["trials_done"] == 2 and data["budget"] == 3 and data["best"] == {"number": 1, "val_acc": 0.9}
    assert [t["arch"] for t in data["trials"]] == ["c16k3", "c32k5p"]
    assert data["exploration"]["unique_architectures"] == 2
    summary = alice_client.get(f"/api/experiments/{e.pk}/").json()
    assert summary["id"] == e.pk and summary["best"]["arch"] == "c32k5p" and summary["best"]["val_acc"] == 0.9
    assert summary["patience"] == 0 and summary["max_seconds"] == 0 and summary["stop_reason"] == ""


def test_the_trial_page_draws_the_architecture(alice_client, alice):
    e = make(alice, trials=[("c16k3p-c32k5", 0.5)])
    page = alice_client.get(reverse("trial_detail", args=[e.pk, 0])).content.decode()
    assert "conv 3x3, 16" in page and "max pool 2x2" in page and "<svg" in page
    assert alice_client.get(reverse("trial_detail", args=[e.pk, 7])).status_code == 404


def test_cancel_and_resume(alice_client, alice, django_capture_on_commit_callbacks):
    e = make(alice)
    alice_client.post(reverse("experiment_cancel", args=[e.pk]))
    e.refresh_from_db()
    assert e.status == "cancelled"
    response = alice_client.post(reverse("experiment_cancel", args=[e.pk]), follow=True)
    assert "Only a pending, queued or running experiment can be cancelled" in response.content.decode()
    with django_capture_on_commit_callbacks() as callbacks:
        alice_client.post(reverse("experiment_resume", args=[e.pk]))
    e.refresh_from_db()
    assert e.status == "queued" and len(callbacks) == 1
    assert alice_client.get(reverse("experiment_cancel", args=[e.pk])).status_code == 405


def test_admin_lists_experiments_and_trials(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5)])
    for url in ("/admin/experiments/experiment/", "/admin/experiments/trial/",
                f"/admin/experiments/experiment/{e.pk}/change/", "/admin/experiments/experiment/?status__exact=running"):
        response = alice_client.get(url)
        assert response.status_code == 200, url
    assert "c16k3" in alice_client.get("/admin/experiments/trial/").content.decode()


def test_the_calibrate_button_queues_a_calibration_and_the_page_shows_trust(alice_client, alice,
                                                                           django_capture_on_commit_callbacks):
    from webapp.experiments.models import Calibration

    lonely = make(alice, trials=[("c16k3", 0.5)])
    response = alice_client.post(reverse("experiment_calibrate", args=[lonely.pk]), {"k": 2, "epochs": 1}, follow=True)
    assert "at least two evaluated trials" in response.content.decode()
    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9)])
    assert "Not measured yet" in alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    response = alice_client.post(reverse("experiment_calibrate", args=[e.pk]), {"k": 1, "epochs": 1}, follow=True)
    assert "greater than or equal to 2" in response.content.decode() and not Calibration.objects.exists()
    with django_capture_on_commit_callbacks() as callbacks:
        alice_client.post(reverse("experiment_calibrate", args=[e.pk]), {"k": 2, "epochs": 3})
    assert len(callbacks) == 1
    calibration = Calibration.objects.get()
    assert (calibration.k, calibration.epochs, calibration.status) == (2, 3, "queued")
    Calibration.objects.filter(pk=calibration.pk).update(status="succeeded", kendall_tau=0.75, spearman_rho=0.8,
                                                         reference="train 3 epochs", seconds=1.0)
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert "Kendall τ <strong id=\"kendall-tau\">0.750</strong>" in page and "train 3 epochs" in page


def test_a_zero_cost_score_is_shown_as_a_named_score_and_an_accuracy_as_a_percentage(alice_client, alice, settings,
                                                                                       tmp_path, capsys):
    from django.core.management import call_command

    from webapp.experiments.runner import experiment_run_inline

    settings.NAS_ARTIFACTS_DIR = tmp_path
    spec = ExperimentSpec("digits", "chain_cnn", "random", "zero_cost", budget=2, epochs=1, seed=0,
                          options={"space": {"max_layers": 1}})
    scored = services.experiment_create(user=alice, name="scored", spec=spec, enqueue=False)
    assert experiment_run_inline(scored.pk, "test") == "succeeded"
    scored.refresh_from_db()
    assert scored.best_val_acc > 1  # log synflow: no fraction
    shown = f"{scored.best_val_acc:.4g}"
    page = alice_client.get(reverse("experiment_detail", args=[scored.pk])).content.decode()
    assert f'best log synflow score <strong id="best-val">{shown}</strong>' in page
    assert 'id="sort-figure" title="log synflow score">Score ↓</a></th>' in page and "best validation accuracy" not in page and f"{100 * scored.best_val_acc:.2f}%" not in page
    trial = scored.trials.get(number=scored.best_trial_number)
    trial_page = alice_client.get(reverse("trial_detail", args=[scored.pk, trial.number])).content.decode()
    assert "Log synflow score" in trial_page and f'<dd id="figure">{shown}</dd>' in trial_page
    listing = alice_client.get(reverse("experiment_list")).content.decode()
    assert f'<td class="num">{shown}</td>' in listing
    data = alice_client.get(f"/api/experiments/{scored.pk}/").json()
    assert data["figure"] == {"kind": "score", "name": "log synflow score"}
    call_command("nas", "show", str(scored.pk), "--user", "alice")
    assert f"log synflow score {shown}" in capsys.readouterr().out

    accurate = make(alice, "accurate", trials=[("c16k3", 0.5)])
    page = alice_client.get(reverse("experiment_detail", args=[accurate.pk])).content.decode()
    assert 'best validation accuracy <strong id="best-val">50.00%</strong>' in page and 'id="sort-figure" title="validation accuracy">Val acc ↓</a></th>' in page
    assert alice_client.get(f"/api/experiments/{accurate.pk}/").json()["figure"]["kind"] == "accuracy"


def test_a_running_experiment_whose_worker_went_quiet_says_so_and_when_it_is_taken_over(alice_client, alice,
                                                                                          settings):
    settings.NAS_LEASE_SECONDS, settings.NAS_SWEEP_SECONDS = 600, 10
    e = make(alice, "quiet", trials=[("c16k3", 0.5)])  # a search run as one job, held by worker "w"
    assert e.status == "running"
    beat = timezone.now() - timedelta(seconds=100)
    Experiment.objects.filter(pk=e.pk).update(heartbeat_at=beat)
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    takeover = beat + timedelta(seconds=610)  # the lease, then the next sweep
    assert ("Running, but no heartbeat from its worker for 100 s; another worker takes over by "
            + takeover.strftime("%H:%M:%S")) in page
    live = alice_client.get(reverse("experiment_status", args=[e.pk])).json()["liveness"]
    assert live["silent_seconds"] >= 100 and live["takeover_at"].startswith(takeover.date().isoformat())

    assert services.experiment_heartbeat(e.pk, "w") == "running"  # the worker is heard from again
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert '<p class="errorlist" id="liveness" hidden></p>' in page
    assert alice_client.get(reverse("experiment_status", args=[e.pk])).json()["liveness"] is None

    # A search of trial jobs: the silent one is a running trial's worker.
    Experiment.objects.filter(pk=e.pk).update(claimed_by="")
    Trial.objects.create(experiment=e, number=1, arch_key="c32k5", arch_display="c32k5", val_acc=0.0, params=0,
                         flops=0, train_seconds=0.0, estimator="train", status="running", host="gpu-box-3",
                         heartbeat_at=timezone.now() - timedelta(seconds=40))
    live = alice_client.get(reverse("experiment_status", args=[e.pk])).json()["liveness"]
    assert live["message"].startswith("no heartbeat from the worker of trial 1 (on gpu-box-3) for 40 s")


def test_trials_in_flight_and_failed_trials_are_shown_apart_from_the_leaderboard(alice_client, alice, carol):
    e = make(alice, trials=[("c16k3", 0.5)])
    Trial.objects.create(experiment=e, number=1, arch_key="c32k5", arch_display="c32k5", val_acc=0.0, params=0,
                         flops=0, train_seconds=0.0, estimator="train", status="running", host="gpu-box-7",
                         device="cuda:0 NVIDIA H200", attempts=2, heartbeat_at=timezone.now())
    Trial.objects.create(experiment=e, number=2, arch_key="c64k3", arch_display="c64k3", val_acc=0.0, params=0,
                         flops=0, train_seconds=0.0, estimator="train", status="failed", host="gpu-box-7",
                         error="OutOfMemoryError: CUDA out of memory", traceback="Traceback: /srv/secret/path.py")
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    board = page[page.index('id="leaderboard"'):]
    assert "c16k3" in board and "c32k5" not in board and "c64k3" not in board  # no placeholder 0% rows
    flight = page[page.index('id="in-flight"'):page.index('id="leaderboard"')]
    assert "c32k5" in flight and "gpu-box-7" in flight and "cuda:0 NVIDIA H200" in flight
    assert "Failed trials (1)" in page and "CUDA out of memory" in page and "/srv/secret" not in page
    status = alice_client.get(reverse("experiment_status", args=[e.pk]), {"since": 0}).json()
    assert [t["number"] for t in status["trials"]] == [0]
    assert status["in_flight"] == [{"number": 1, "arch_display": "c32k5", "status": "running", "host": "gpu-box-7",
                                    "device": "cuda:0 NVIDIA H200", "attempts": 2, "job": ""}]
    assert status["failed_trials"] == 1 and status["exploration"]["unique_architectures"] == 1

    trial_page = alice_client.get(reverse("trial_detail", args=[e.pk, 2])).content.decode()
    assert "Failed: OutOfMemoryError: CUDA out of memory" in trial_page and "/srv/secret/path.py" in trial_page
    alice_client.force_login(carol)  # a member, not an admin: the error without the traceback
    trial_page = alice_client.get(reverse("trial_detail", args=[e.pk, 2])).content.decode()
    assert "CUDA out of memory" in trial_page and "/srv/secret" not in trial_page


def test_the_workers_page_is_for_staff_only(alice_client, alice, carol, client):
    e = make(alice, trials=[("c16k3", 0.5)])
    Worker.objects.create(name="gpu-box-7:123", host="gpu-box-7", device="cuda:1 NVIDIA H200",
                          trial=e.trials.get(), seen_at=timezone.now())
    Worker.objects.create(name="old:1", host="old-box", seen_at=timezone.now() - timedelta(hours=1))
    page = alice_client.get(reverse("worker_list")).content.decode()
    assert "gpu-box-7:123" in page and "cuda:1 NVIDIA H200" in page and "trial 0" in page
    assert "old-box" not in page  # not heard from in the last minutes
    client.force_login(carol)
    assert client.get(reverse("worker_list")).status_code == 404


def test_the_list_filters_offer_each_value_once(alice_client, alice):
    for name in ("one", "two", "three"):
        make(alice, name)
    page = alice_client.get(reverse("experiment_list")).content.decode()
    assert page.count('<option value="digits"') == 1 and page.count('<option value="chain_cnn"') == 1
