"""The experiment pages in a real browser, as a team uses them: a leaderboard of many trials sorted, filtered and paged
without reloading, the best trial opened and downloaded in both export formats, a running search watched and
cancelled. Every page is saved under var/screenshots/ to be looked at; any JavaScript error, failed request or
error response fails the test."""
import io
import random
import zipfile

import onnx
import pytest
import torch
from django.utils import timezone
from playwright.sync_api import expect

from nasjobs.search import TrialRecord
from nasjobs.spaces import SPACES
from tests.conftest import ROOT
from tests.webapp.test_browser import page  # noqa: F401  (the browser fixture, which fails on JavaScript errors)
from webapp.experiments import services
from webapp.experiments.models import Experiment

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture
def watched(page):  # noqa: F811
    """The page, failing the test on a failed request or an error response."""
    failed: list[str] = []
    # An aborted request is the page's own doing (a link that became a download, a fetch cut short by leaving
    # the page), not a failure; errors come back as answers, checked below.
    page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else failed.append(
        f"{r.url} {r.failure}"))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield page
    assert failed == [], f"failed requests: {failed}"


def log_in(page, live_server) -> None:
    page.goto(live_server.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    with page.expect_navigation():
        page.click("main button[type=submit]")


def searched(user, n: int) -> Experiment:
    """A finished chain_cnn search of n trials of real architectures, recorded through the serial store."""
    spec = Experiment(dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=n, epochs=3,
                      seed=5).spec()
    experiment = services.experiment_create(user=user, name="many trials", spec=spec, enqueue=False)
    assert services.experiment_claim(experiment.pk, "w")
    space, rng, keys = SPACES.get("chain_cnn")(), random.Random(1), []
    while len(keys) < n:
        key = space.to_str(space.sample(rng))
        keys += [] if key in keys else [key]
    for i, key in enumerate(keys):
        services.trial_record(experiment.pk, "w", TrialRecord(
            i, key, key, 0.5 + 0.4 * ((i * 37) % n) / n, 10_000 + (i * 7919) % 90_000, 200_000 + i, 1.0 + i % 9,
            {"epochs": 3 if i % 2 else 1}, [0.5], None, "train", proposals=i + 1, distance_to_incumbent=i % 6),
            {"s": i}, [])
    Experiment.objects.filter(pk=experiment.pk).update(status="succeeded", started_at=timezone.now(),
                                                       finished_at=timezone.now())
    experiment.refresh_from_db()
    return experiment


def numbers(page) -> list[int]:
    return [int(n) for n in page.locator("#leaderboard tbody tr td:nth-child(2)").all_inner_texts()]


def test_a_leaderboard_of_many_trials_sorts_filters_and_pages_in_place_and_exports_the_best(
        watched, live_server, alice, celery_worker_factory):
    page = watched
    celery_worker_factory()
    experiment = searched(alice, 60)
    trials = list(experiment.trials.all())
    log_in(page, live_server)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/experiments/{experiment.pk}/")
    page.evaluate("window.__sameDocument = true")
    best_first = [t.number for t in sorted(trials, key=lambda t: (-t.val_acc, t.number))]
    assert numbers(page) == best_first[:25]
    expect(page.locator("#leaderboard-count")).to_have_text("trials 1–25 of 60")
    page.screenshot(path=str(SCREENSHOTS / "experiment-finished.png"), full_page=True)

    # Sorted by parameters, smallest first, then reversed: the rows change, the document stays.
    smallest = [t.number for t in sorted(trials, key=lambda t: (t.params, t.number))]
    page.click("#sort-params")
    expect(page.locator("#sort-params")).to_contain_text("↑")
    assert numbers(page) == smallest[:25]
    page.click("#sort-params")
    expect(page.locator("#sort-params")).to_contain_text("↓")
    assert numbers(page) == [t.number for t in sorted(trials, key=lambda t: (-t.params, t.number))][:25]

    # Paged, and filtered by fidelity; the address follows, so a reload or a shared link shows the same rows.
    page.click("#sort-params")
    expect(page.locator("#sort-params")).to_contain_text("↑")
    page.click("#leaderboard-pages a[rel=next]")
    expect(page.locator("#leaderboard-pages")).to_contain_text("page 2 of 3")
    assert numbers(page) == smallest[25:50]
    assert "sort=params" in page.url and "page=2" in page.url
    page.select_option("#board-epochs", "3")
    expect(page.locator("#leaderboard-count")).to_have_text("trials 1–25 of 30")
    assert all(n % 2 for n in numbers(page))
    assert page.evaluate("window.__sameDocument") is True
    page.reload()
    expect(page.locator("#leaderboard-count")).to_have_text("trials 1–25 of 30")

    # The best trial opens from the board; both formats are built by the worker and downloaded.
    page.goto(f"{live_server.url}/experiments/{experiment.pk}/")
    page.click(f"#leaderboard tbody tr:first-child a[href$='/trials/{best_first[0]}/']")
    expect(page.locator("h1")).to_contain_text(f"Trial {best_first[0]}")
    page.screenshot(path=str(SCREENSHOTS / "trial.png"), full_page=True)
    page.click("#export-onnx button")
    expect(page.locator("#export-onnx a")).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        page.click("#export-onnx a")
    onnx.checker.check_model(onnx.load(download.value.path()))
    page.click("#export-torch button")
    expect(page.locator("#export-torch a")).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        page.click("#export-torch a")
    with zipfile.ZipFile(download.value.path()) as archive:
        model = torch.export.load(io.BytesIO(archive.read("model.pt2"))).module()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_running_search_is_watched_live_and_cancelled(watched, live_server, alice, celery_worker_factory):
    page = watched
    celery_worker_factory()
    log_in(page, live_server)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.screenshot(path=str(SCREENSHOTS / "list.png"), full_page=True)
    with page.expect_navigation():
        page.click("header >> text=New experiment")
    page.fill("#id_name", "watched and cancelled")
    page.fill("#id_budget", "200")
    page.fill("#id_epochs", "10")
    page.screenshot(path=str(SCREENSHOTS / "form.png"), full_page=True)
    page.click("text=Start experiment")
    page.wait_for_url("**/experiments/*/")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function("Number(document.getElementById('trials-done').textContent) >= 2", timeout=240_000)
    # The rows arrived without a reload.
    page.wait_for_function("document.querySelectorAll('#leaderboard tbody tr:not(.empty)').length >= 2",
                           timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(SCREENSHOTS / "experiment-running.png"), full_page=True)
    page.set_viewport_size({"width": 400, "height": 900})
    # On a phone the page reads without scrolling sideways (wide tables scroll within themselves), once its charts
    # have followed the new width.
    page.wait_for_function("document.documentElement.scrollWidth <= window.innerWidth", timeout=10_000)
    page.screenshot(path=str(SCREENSHOTS / "experiment-running-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 900})
    with page.expect_navigation():
        page.click("form[action$='/cancel/'] button")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=10_000)
    experiment = Experiment.objects.get(name="watched and cancelled")
    assert experiment.status == "cancelled" and experiment.trials_done >= 2
