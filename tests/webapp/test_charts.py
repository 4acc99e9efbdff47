"""The charts' data (points.json) and the trial page: its learning curve, timings and the log its worker kept."""
import json
import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from nasjobs.estimators import ESTIMATORS
from nasjobs.estimators.train import TrainEstimator
from nasjobs.search import ExperimentSpec
from tests.webapp.test_experiment_views import make
from webapp.experiments import services
from webapp.experiments.models import Experiment, Trial

pytestmark = pytest.mark.django_db
BLOB_COLUMNS = ("curve", "loss_curve", "log_tail", "traceback")


def points(client, experiment) -> dict:
    response = client.get(reverse("experiment_points", args=[experiment.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return json.loads(response.content)


def test_points_are_every_trial_with_a_figure_as_columns_in_number_order(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9), ("c8k3", 0.7)])
    Trial.objects.filter(experiment=e, number=1).update(distance_to_incumbent=2)
    start = timezone.now() - timedelta(minutes=5)
    Experiment.objects.filter(pk=e.pk).update(started_at=start)
    Trial.objects.filter(experiment=e, number=2).update(finished_at=start + timedelta(seconds=12.34))
    Trial.objects.filter(experiment=e, number=0).update(finished_at=None)
    Trial.objects.create(experiment=e, number=3, arch_key="c4k3", arch_display="c4k3", val_acc=0.0, params=0,
                         flops=0, train_seconds=0, estimator="train", status="pending")  # no figure yet: left out
    Trial.objects.create(experiment=e, number=4, arch_key="c4k5", arch_display="c4k5", val_acc=0.0, params=0,
                         flops=0, train_seconds=0, estimator="train", status="failed", error="boom")
    d = points(alice_client, e)
    assert d["number"] == [0, 1, 2]
    assert d["val_acc"] == [0.5, 0.9, 0.7]
    assert d["params"] == [100, 101, 102] and d["flops"] == [1000, 1000, 1000]
    assert d["distance"] == [None, 2, None]
    assert d["arch"] == ["c16k3", "c32k5p", "c8k3"]
    assert d["finished_s"][0] is None and d["finished_s"][2] == 12.3
    assert d["finished_s"][1] is not None and d["finished_s"][1] >= 0
    assert d["search_epochs"] == [] and d["figure"] == {"kind": "accuracy", "name": "validation accuracy"}

    Experiment.objects.filter(pk=e.pk).update(started_at=None)  # never started: no time is known
    assert points(alice_client, e)["finished_s"] == [None, None, None]


def test_points_read_no_blob_column(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9)])
    with CaptureQueriesContext(connection) as queries:
        points(alice_client, e)
    trial_queries = [q["sql"] for q in queries.captured_queries if "experiments_trial" in q["sql"]]
    assert trial_queries
    for sql in trial_queries:
        assert not any(f'"{column}"' in sql for column in BLOB_COLUMNS), sql


def test_points_of_another_teams_experiment_are_a_404_and_need_a_login(client, alice, bob):
    e = make(alice, trials=[("c16k3", 0.5)])
    url = reverse("experiment_points", args=[e.pk])
    assert client.get(url).status_code == 302  # no login: to the login page
    client.force_login(bob)
    response = client.get(url)
    assert response.status_code == 404 and b"c16k3" not in response.content
    assert client.get(reverse("experiment_points", args=[99999])).status_code == 404


def test_points_stay_small_per_trial_and_are_gzipped(alice_client, alice):
    e = make(alice)
    start = timezone.now()
    Experiment.objects.filter(pk=e.pk).update(started_at=start)
    n, arch = 2000, "c32k3p-c64k5-c128k3p"
    Trial.objects.bulk_create([Trial(experiment=e, number=i, arch_key=f"{arch}-{i}", arch_display=f"{arch}-{i}",
                                     val_acc=0.9 + i * 1e-5 / 3, params=123_456 + i, flops=9_876_543 + i,
                                     train_seconds=1.0, estimator="train", distance_to_incumbent=i % 7,
                                     finished_at=start + timedelta(seconds=i * 1.234567), curve=[0.5] * 50,
                                     loss_curve=[1.0] * 50, log_tail="x" * 5000) for i in range(n)])
    response = alice_client.get(reverse("experiment_points", args=[e.pk]))
    arch_bytes = sum(len(f'"{arch}-{i}",') for i in range(n))
    per_trial = (len(response.content) - arch_bytes) / n
    # number, figure (6 significant digits), params, MACs, seconds (0.1 s) and distance, with separators.
    assert per_trial < 48, per_trial
    zipped = alice_client.get(reverse("experiment_points", args=[e.pk]), HTTP_ACCEPT_ENCODING="gzip")
    assert zipped["Content-Encoding"] == "gzip" and len(zipped.content) < len(response.content) / 3


def test_the_detail_page_mounts_the_charts_from_static_files(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5)])
    page = alice_client.get(reverse("experiment_detail", args=[e.pk])).content.decode()
    assert "nasboard/vendor/chartjs/chart.umd.min.js" in page and "nasboard/charts.js" in page
    assert reverse("experiment_points", args=[e.pk]) in page and "NasCharts.mount(" in page
    for chart in ("best-by-number", "best-by-time", "by-params", "by-macs", "distance"):
        assert f'data-chart="{chart}"' in page
    assert "<svg id=\"chart" not in page and "function chart(" not in page  # the hand-drawn SVG is gone


def test_lists_never_load_curves_or_logs(alice, bob):
    from webapp.experiments import selectors

    e = make(alice, trials=[("c16k3", 0.5), ("c32k5p", 0.9)])
    for rows in (selectors.experiment_leaderboard(e), selectors.experiment_in_flight(e),
                 selectors.experiment_failures(e)[1]):
        for trial in rows:
            assert set(BLOB_COLUMNS) <= trial.get_deferred_fields()


class FailsAtEpoch(TrainEstimator):
    """Trains as `train` does, but raises during epoch 3, as a network running out of memory mid-trial would."""

    name = "fails_at_epoch"

    def evaluate(self, arch, budget, *, seed, hook=None):
        def failing(epoch, acc):
            if hook is not None:
                hook(epoch, acc)
            if epoch == 2:
                raise RuntimeError("CUDA out of memory (injected)")
        return super().evaluate(arch, budget, seed=seed, hook=failing)


@pytest.fixture
def failing_estimator():
    ESTIMATORS._items[FailsAtEpoch.name] = FailsAtEpoch
    yield FailsAtEpoch.name
    ESTIMATORS._items.pop(FailsAtEpoch.name, None)


def test_a_real_trial_records_its_loss_curve_and_log_tail_whatever_the_log_level(alice_client, alice, settings,
                                                                                  tmp_path, capfd):
    from webapp.experiments.runner import experiment_run_inline

    settings.NAS_ARTIFACTS_DIR = tmp_path
    engine = logging.getLogger("nasjobs")
    before = (engine.level, engine.propagate, list(engine.handlers), logging.getLogger().getEffectiveLevel())
    assert before[3] == logging.WARNING  # the tests' LOG_LEVEL: INFO lines are not logged anywhere else
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=2, epochs=3, seed=0,
                          options={"space": {"max_layers": 2}})
    e = services.experiment_create(user=alice, name="logged", spec=spec, enqueue=False)
    assert experiment_run_inline(e.pk, "test") == "succeeded"

    assert (engine.level, engine.propagate, list(engine.handlers)) == before[:3]  # the handler detached
    assert "epoch 1/3" not in capfd.readouterr().err  # and the console kept to its level
    for trial in e.trials.order_by("number"):
        assert len(trial.curve) == len(trial.loss_curve) == 3
        assert all(isinstance(v, float) and v > 0 for v in trial.loss_curve)
        lines = trial.log_tail.splitlines()
        epochs = [line for line in lines if "nasjobs.training: epoch " in line]
        assert len(epochs) == 3 and " INFO nasjobs.training: epoch 3/3: train loss " in epochs[2]
        assert f"train loss {trial.loss_curve[2]:.4f}, val acc {100 * trial.curve[2]:.2f}%" in epochs[2]
        assert f"trial {trial.number} {trial.arch_key} val_acc=" in lines[-1]
        assert trial.started_at and trial.finished_at and trial.host

    best = e.trials.order_by("-val_acc").first()
    page = alice_client.get(reverse("trial_detail", args=[e.pk, best.number])).content.decode()
    assert 'id="chart-learning-curve"' in page and "nasboard/charts.js" in page
    curves = page[page.index('<script id="trial-curves" type="application/json">'):]
    data = json.loads(curves[curves.index(">") + 1:curves.index("</script>")])
    assert data == {"val_acc": best.curve, "train_loss": best.loss_curve}
    assert f'<td class="num">{best.loss_curve[0]:.4f}</td>' in page  # the per-epoch table, right-aligned
    assert '<pre class="log" id="log-tail">' in page and "epoch 3/3: train loss" in page
    assert f'<td class="num" id="train-seconds">{best.train_seconds:.2f} s</td>' in page
    assert 'id="waited"' in page and "unknown" not in page[page.index('id="waited"'):page.index('id="job-seconds"')]
    assert f'{best.host} · {best.device}' in page
    assert '<td>epochs</td><td class="num">3</td>' in page  # the fidelity, a number right-aligned


def test_a_failed_trial_keeps_its_log_and_its_page_shows_the_error(alice_client, alice, carol, settings, tmp_path,
                                                                   failing_estimator):
    from webapp.experiments.runner import experiment_run_inline

    settings.NAS_ARTIFACTS_DIR = tmp_path
    spec = ExperimentSpec("digits", "chain_cnn", "random", failing_estimator, budget=2, epochs=4, seed=0,
                          max_failures=1, options={"space": {"max_layers": 1}})
    e = services.experiment_create(user=alice, name="failing", spec=spec, enqueue=False)
    assert experiment_run_inline(e.pk, "test") == "failed"
    trial = e.trials.get(status="failed")
    assert trial.error == "RuntimeError: CUDA out of memory (injected)"
    lines = trial.log_tail.splitlines()
    assert [line.split(": ", 1)[1][:9] for line in lines[:2]] == ["epoch 1/4", "epoch 2/4"]
    assert lines[-1].endswith(f"ERROR webapp.experiments.runner: trial {trial.number} of experiment {e.pk} "
                              "failed: RuntimeError: CUDA out of memory (injected)")
    assert "Traceback" not in trial.log_tail  # server paths stay in the traceback, for admins only
    alice_client.force_login(carol)  # a member who is not an admin
    page = alice_client.get(reverse("trial_detail", args=[e.pk, trial.number])).content.decode()
    assert "Failed: RuntimeError: CUDA out of memory (injected)</p>" in page
    assert "epoch 2/4: train loss" in page and 'id="trial-traceback"' not in page


def test_the_trial_page_of_a_trial_without_curves_or_log_says_so(alice_client, alice):
    e = make(alice, trials=[("c16k3", 0.5)])
    Trial.objects.filter(experiment=e).update(curve=[], loss_curve=[])
    page = alice_client.get(reverse("trial_detail", args=[e.pk, 0])).content.decode()
    assert "No per-epoch figures" in page and "No log lines recorded" in page and "chart.umd.min.js" not in page
    Trial.objects.filter(experiment=e).update(curve=[0.4, 0.5], loss_curve=[])  # recorded before losses were
    page = alice_client.get(reverse("trial_detail", args=[e.pk, 0])).content.decode()
    assert '<td class="num">–</td><td class="num">50.00%</td>' in page


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_keeps_the_last_lines_of_a_trials_log_refreshed_while_it_runs(alice, celery_worker_factory):
    from tests.conftest import wait_for

    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=1, epochs=240, seed=2,
                          options={"space": {"max_layers": 1}})
    e = services.experiment_create(user=alice, name="long trial", spec=spec)
    # An epoch of this network takes about 0.03 s: 240 of them span several heartbeats even on an idle machine.
    worker = celery_worker_factory(NAS_TORCH_THREADS="1", LOG_LEVEL="WARNING", NAS_HEARTBEAT_SECONDS="1")
    # While it trains, each heartbeat stores the log so far.
    wait_for(lambda: Trial.objects.filter(experiment=e, status="running", log_tail__contains="epoch ").exists(), 180,
             "a running trial's log", worker.log)
    wait_for(lambda: Experiment.objects.get(pk=e.pk).status not in Experiment.ACTIVE, 300, "the experiment",
             worker.log)
    trial = e.trials.get()
    assert trial.status == "done" and len(trial.loss_curve) == len(trial.curve) == 240
    lines = trial.log_tail.splitlines()
    assert len(lines) == 50  # 240 epochs and the trial's own line: the last 50 are kept
    assert "nasjobs.training: epoch 192/240: train loss " in lines[0]
    assert "nasjobs.training: epoch 240/240: train loss " in lines[-2] and "val_acc=" in lines[-1]
