"""In a real browser: clone an experiment and submit the copy, extend a finished search, compare the two."""
import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT, wait_for
from tests.webapp.test_browser import page  # noqa: F401  (the browser fixture, which fails on JavaScript errors)
from webapp.experiments import services
from webapp.experiments.models import Experiment

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = ROOT / "var" / "screenshots"


def test_clone_extend_and_compare_in_the_browser(page, live_server, alice, celery_worker_factory):  # noqa: F811
    failed: list[str] = []
    # An aborted request is the page's own doing (a fetch cut short by leaving the page), not a failure.
    page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else failed.append(
        f"{r.url} {r.failure}"))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    worker = celery_worker_factory()
    spec = Experiment(dataset="nb201-cifar10", space="nb201", strategy="evolution", estimator="benchmark", budget=6,
                      epochs=1, seed=3, options={"strategy": {"population": 4, "sample_size": 2}}).spec()
    original = services.experiment_create(user=alice, name="table search", spec=spec)
    wait_for(lambda: Experiment.objects.get(pk=original.pk).status == "succeeded", 120, "the search", worker.log)

    page.goto(live_server.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    page.click("button[type=submit]")

    # Clone: the form comes pre-filled; submitted as it is, it runs the same search under a new name.
    page.goto(f"{live_server.url}/experiments/{original.pk}/")
    page.click("#clone")
    expect(page.locator("#id_name")).to_have_value("copy of table search")
    expect(page.locator("#id_strategy")).to_have_value("evolution")
    expect(page.locator("#id_dataset")).to_have_value("nb201-cifar10")
    expect(page.locator("#id_seed")).to_have_value("3")
    expect(page.locator("#id_opt-strategy-evolution-population")).to_have_value("4")
    page.screenshot(path=str(SCREENSHOTS / "cloned-form.png"), full_page=True)
    page.click("text=Start experiment")
    page.wait_for_url("**/experiments/*/")
    copy = Experiment.objects.exclude(pk=original.pk).get()
    assert copy.name == "copy of table search" and copy.spec() == original.spec()
    expect(page.locator("#status")).to_have_text("succeeded", timeout=120_000)

    # Extend the original by 4 trials: the page follows the run until it ends again.
    page.goto(f"{live_server.url}/experiments/{original.pk}/")
    page.fill("#id_trials", "4")
    page.click("#extend")
    expect(page.locator(".messages")).to_contain_text("extended by 4 trials")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#trials-done")).to_have_text("10")
    expect(page.locator("#events")).to_contain_text("by 4 trials to a budget of 10")
    original.refresh_from_db()
    # Evolution's final race may evaluate a leader again: every evaluation counts once.
    assert original.trials_done == 10 == sum(len(t.evaluations) for t in original.trials.all())

    # Compare the two from the list.
    page.click("text=Experiments")
    page.check(f"input[name=ids][value='{original.pk}']")
    page.check(f"input[name=ids][value='{copy.pk}']")
    page.click("#compare-selected")
    page.wait_for_url("**/compare/?ids=*")
    expect(page.locator("#settings tr.differs").first).to_contain_text("name")
    expect(page.locator("#settings tr", has_text="budget")).to_have_class("differs")
    expect(page.locator("#compare-charts canvas")).to_have_count(1)
    expect(page.locator("#best-architectures svg")).to_have_count(2)
    page.wait_for_function("Chart.getChart(document.querySelector('#compare-charts canvas')).data.datasets.length === 2")
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)
    assert failed == [], f"failed requests: {failed}"
