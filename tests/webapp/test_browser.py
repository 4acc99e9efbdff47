"""The user's path in a real browser: log in, fill the form, watch progress live, find the result in the list."""
import io
import json
import os
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from webapp.experiments.models import Experiment

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def page():
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed for browser tests: apt-get install chromium"
    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield page
        # ORM calls made while Playwright's loop runs get connections of their own context; close them here, or
        # PostgreSQL refuses to drop the test database at the end ("being accessed by other users").
        connections.close_all()
        browser.close()
        assert errors == [], f"JavaScript errors on the pages: {errors}"
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_a_user_runs_a_search_and_watches_it_finish_without_reloading(page, live_server, alice,
                                                                        celery_worker_factory):
    celery_worker_factory()
    page.goto(live_server.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    page.click("button[type=submit]")
    page.click("text=New experiment")

    # A bad budget re-shows the form with a message and creates nothing.
    page.fill("#id_name", "browser search")
    page.fill("#id_budget", "0")
    page.click("text=Start experiment")
    expect(page.locator("#field-budget .errorlist")).to_contain_text("greater than or equal to 1")
    assert Experiment.objects.count() == 0

    page.fill("#id_budget", "5")
    page.fill("#id_epochs", "8")
    page.click("text=Start experiment")
    page.wait_for_url("**/experiments/*/")
    experiment = Experiment.objects.get()
    page.evaluate("window.__sameDocument = true")

    # The bar and the leaderboard move while the page stays the same document (no reload).
    page.wait_for_function(
        "Number(document.getElementById('trials-done').textContent) >= 1 && window.__sameDocument === true",
        timeout=120_000)
    assert page.locator("#leaderboard tbody tr").count() >= 1
    assert page.locator("#progress-bar").get_attribute("style") != "width: 0%"

    # When the run ends the page shows the final state, the best architecture drawn as a diagram.
    expect(page.locator("#status")).to_have_text("succeeded", timeout=180_000)
    expect(page.locator("#best-diagram svg")).to_be_visible()
    expect(page.locator("#leaderboard tbody tr")).to_have_count(5)
    experiment.refresh_from_db()
    assert experiment.trials_done == 5 and experiment.test_acc is not None

    # The best network is built by a worker as a runnable PyTorch model; the trial page says so, then offers it.
    page.click("#export-best")
    page.click("#export-torch button")
    expect(page.locator("#export-torch a")).to_be_visible(timeout=120_000)  # the page refreshes until then
    with page.expect_download() as download:
        page.click("#export-torch a")
    with zipfile.ZipFile(download.value.path()) as archive:
        model = torch.export.load(io.BytesIO(archive.read("model.pt2"))).module()
        assert json.loads(archive.read("metadata.json"))["trained"] is True
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)

    page.click("text=Experiments")
    row = page.locator("#experiments tbody tr", has_text="browser search")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("random")
    expect(row).to_contain_text(f"{100 * experiment.best_val_acc:.2f}%")


def test_a_darts_search_shows_alpha_charts_and_the_derived_cell_per_epoch(page, live_server, alice, settings,
                                                                          tmp_path):
    from webapp.experiments.runner import experiment_run_inline
    from tests.webapp.test_darts_platform import tiny_spec
    from webapp.experiments import services

    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    experiment = services.experiment_create(user=alice, name="darts in the browser", spec=tiny_spec(epochs=2),
                                            enqueue=False)
    assert experiment_run_inline(experiment.pk, "test") == "succeeded"
    page.goto(live_server.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/experiments/{experiment.pk}/")
    expect(page.locator("#search-epochs tbody tr")).to_have_count(2)
    # One chart per edge of the nb201 cell, one line per operation, one point per epoch.
    expect(page.locator("#alpha-charts canvas")).to_have_count(6)
    page.wait_for_function("Chart.getChart(document.querySelector('#alpha-charts canvas')) !== undefined")
    lines = page.evaluate("Chart.getChart(document.querySelector('#alpha-charts canvas')).data.datasets"
                          ".map((d) => [d.label, d.data.length])")
    assert len(lines) == 5 and all(points == 2 for _, points in lines)
    assert "nor_conv_3x3" in [label for label, _ in lines]
    expect(page.locator("#alpha-legend")).to_contain_text("nor_conv_3x3")
    expect(page.locator("#epoch-diagram svg")).to_be_visible()
    expect(page.locator("#best-diagram svg")).to_be_visible()
    Path("var/screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="var/screenshots/darts.png", full_page=True)
    # On a phone too it reads without scrolling sideways: the cell's long genotype string wraps.
    page.set_viewport_size({"width": 400, "height": 900})
    page.wait_for_function("document.documentElement.scrollWidth <= window.innerWidth", timeout=10_000)


def test_two_users_of_two_teams_each_see_only_their_teams_work(page, live_server, carol, bob):
    from nasjobs.search import ExperimentSpec
    from webapp.experiments import services

    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=1, seed=0)
    vision = services.experiment_create(user=carol, name="vision only run", spec=spec, enqueue=False)
    speech = services.experiment_create(user=bob, name="speech only run", spec=spec, enqueue=False)
    for username, own, other in (("carol", vision, speech), ("bob", speech, vision)):
        page.context.clear_cookies()
        page.goto(live_server.url + "/")
        expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/")
        page.fill("#id_username", username)
        page.fill("#id_password", f"{username}-pass-123")
        page.click("button[type=submit]")
        table = page.locator("#experiments")
        expect(table).to_contain_text(own.name)
        expect(table).not_to_contain_text(other.name)
        expect(page.locator("#filters")).not_to_contain_text(other.team.name)
        page.goto(f"{live_server.url}/experiments/{own.pk}/")
        expect(page.locator("#team")).to_have_text(own.team.name)
        # With this browser's session (not a navigation, so the console stays free of the 404's own error).
        for path in (f"/experiments/{other.pk}/", f"/experiments/{other.pk}/status.json", f"/api/experiments/{other.pk}/"):
            response = page.request.get(live_server.url + path)
            assert response.status == 404 and other.name not in response.text(), path
        own_json = page.request.get(f"{live_server.url}/api/experiments/{own.pk}/")
        assert own_json.status == 200 and own_json.json()["team"] == own.team.name


def test_a_team_uploads_images_and_a_table_and_searches_each_with_a_real_worker(page, live_server, carol, tmp_path,
                                                                                monkeypatch, celery_worker_factory):
    from tests.webapp.test_datasets import blobs_csv, shapes_zip
    from webapp.datasets.models import Dataset

    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "data"))
    celery_worker_factory(NAS_DATA_DIR=str(tmp_path / "data"))
    page.goto(live_server.url + "/")
    page.fill("#id_username", "carol")
    page.fill("#id_password", "carol-pass-123")
    page.click("button[type=submit]")

    uploads = [("shapes", "imagefolder", "shapes.zip", shapes_zip(), "chain_cnn"),
               ("flowers-table", "csv", "flowers.csv", blobs_csv(), "mlp")]
    for name, kind, filename, content, _ in uploads:
        page.click("text=Datasets")
        page.click("text=Upload a dataset")
        page.fill("#id_name", name)
        page.select_option("#id_kind", kind)
        expect(page.locator("#field-label_column")).to_be_visible(visible=kind == "csv")
        if kind == "csv":
            page.fill("#id_label_column", "species")
        page.set_input_files("#id_file", files=[{"name": filename, "mimeType": "application/octet-stream",
                                                  "buffer": content}])
        page.click("button:has-text('Upload')")
        page.wait_for_url("**/datasets/*/")
        # The page refreshes itself while a worker decodes, and then shows the preview and the class balance.
        expect(page.locator("#status")).to_have_text("ready", timeout=60_000)
        if kind == "imagefolder":
            expect(page.locator("#preview img")).to_have_count(12)  # 6 training samples of each of 2 classes
        else:
            expect(page.locator("#preview #rows tbody tr")).to_have_count(6)
        expect(page.locator("#balance tbody tr")).to_have_count(2 if kind == "imagefolder" else 3)

    # The form offers the team's uploads and greys out the spaces that cannot build for the chosen one.
    images, table = (Dataset.objects.get(name=n) for n in ("shapes", "flowers-table"))
    page.click("text=New experiment")
    page.select_option("#id_dataset", table.engine_name)
    assert page.locator("#id_space option[value=chain_cnn]").is_disabled()
    assert "image or signal" in page.locator("#id_space option[value=chain_cnn]").get_attribute("title")
    assert not page.locator("#id_space option[value=mlp]").is_disabled()
    page.select_option("#id_dataset", images.engine_name)
    assert not page.locator("#id_space option[value=chain_cnn]").is_disabled()
    assert page.locator("#id_estimator option[value=benchmark]").is_disabled()
    expect(page.locator("#field-epochs")).to_be_visible()
    page.select_option("#id_dataset", "nb201-cifar10")  # a table: looked up, so no epochs are asked
    expect(page.locator("#field-epochs")).to_be_hidden()
    assert page.locator("#id_space option[value=chain_cnn]").is_disabled()
    assert page.locator("#id_space").input_value() == "nb201"
    assert page.locator("#id_estimator").input_value() == "benchmark"

    for name, _, _, _, space in uploads:
        dataset = Dataset.objects.get(name=name)
        page.click("text=New experiment")
        page.fill("#id_name", f"search on {name}")
        page.select_option("#id_dataset", dataset.engine_name)
        page.select_option("#id_space", space)
        page.fill("#id_budget", "2")
        page.fill("#id_epochs", "2")
        page.click("text=Start experiment")
        page.wait_for_url("**/experiments/*/")
        expect(page.locator("#dataset")).to_have_text(name)
        expect(page.locator("#status")).to_have_text("succeeded", timeout=120_000)
        experiment = Experiment.objects.get(name=f"search on {name}")
        assert experiment.trials.count() == 2 and experiment.test_acc is not None
        page.click("#dataset a")
        expect(page.locator("#dataset-experiments")).to_contain_text(f"search on {name}")


def test_an_invalid_option_of_the_selected_strategy_shows_its_error_where_the_user_sees_it(page, live_server, alice):
    page.goto(live_server.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-pass-123")
    page.click("button[type=submit]")
    page.click("text=New experiment")
    page.fill("#id_name", "bad population")
    page.select_option("#id_strategy", "evolution")
    page.fill("#id_opt-strategy-evolution-population", "0")
    page.click("text=Start experiment")
    error = page.locator("#field-opt-strategy-evolution-population .errorlist")
    expect(error).to_contain_text("must be at least")
    expect(error).to_be_visible()
    assert Experiment.objects.count() == 0


def log_in(page, live_server, username="alice"):
    page.goto(live_server.url + "/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")


def point_on_screen(page, selector, dataset, index):
    """Where a chart draws one of its points, in page coordinates, after scrolling it into view."""
    page.locator(selector).scroll_into_view_if_needed()
    return page.evaluate("""([selector, dataset, index]) => {
        const canvas = document.querySelector(selector), box = canvas.getBoundingClientRect();
        const point = Chart.getChart(canvas).getDatasetMeta(dataset).data[index];
        return {x: box.left + point.x, y: box.top + point.y};
    }""", [selector, dataset, index])


def test_the_charts_draw_every_trial_and_a_point_opens_its_trial(page, live_server, alice, settings, tmp_path):
    from nasjobs.search import ExperimentSpec
    from webapp.experiments import services
    from webapp.experiments.runner import experiment_run_inline

    settings.NAS_ARTIFACTS_DIR = str(tmp_path)
    spec = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=6, epochs=3, seed=1,
                          options={"space": {"max_layers": 3}})
    experiment = services.experiment_create(user=alice, name="charted search", spec=spec, enqueue=False)
    assert experiment_run_inline(experiment.pk, "test") == "succeeded"
    # A search over in under half a second (as a fast machine runs this one), so its time axis ticks in 0.05 s.
    experiment.refresh_from_db()
    for t in experiment.trials.all():
        finished = experiment.started_at + timedelta(seconds=0.07 * (t.number + 1))
        experiment.trials.filter(pk=t.pk).update(finished_at=finished)
    trials = list(experiment.trials.order_by("number"))
    bad: list[str] = []
    page.on("requestfailed", lambda request: bad.append(f"{request.url} {request.failure}"))
    page.on("response", lambda response: bad.append(f"{response.url} {response.status}") if response.status >= 400
            else None)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/experiments/{experiment.pk}/")

    charts = ("best-by-number", "best-by-time", "by-params", "by-macs", "distance")
    page.wait_for_function("""(names) => names.every((name) => {
        const chart = Chart.getChart(document.querySelector('[data-chart="' + name + '"]'));
        return chart && chart.data.datasets[0].data.length > 0;
    })""", arg=list(charts))
    drawn = page.evaluate("""(names) => Object.fromEntries(names.map((name) => {
        const chart = Chart.getChart(document.querySelector('[data-chart="' + name + '"]'));
        return [name, chart.data.datasets.map((d) => d.data.map((p) => p.n === undefined ? null : p.n))];
    }))""", list(charts))
    numbers = [t.number for t in trials]
    assert drawn["best-by-number"][0] == numbers and drawn["by-params"][0] != []
    assert sorted(drawn["best-by-time"][0]) == numbers  # every trial has its finishing time
    # The step line holds the trials that raised the best (and the end of the run, no trial of its own).
    best, raised = -1.0, []
    for t in trials:
        if t.val_acc > best:
            best, raised = t.val_acc, raised + [t.number]
    assert [n for n in drawn["best-by-number"][1] if n is not None] == raised
    # The Pareto front: the trials that no other trial dominates (as few parameters and a figure as high, one of
    # them strictly; of two equal trials the earlier).
    def dominates(o, t):
        return o.params <= t.params and o.val_acc >= t.val_acc and (o.params, -o.val_acc, o.number) < (
            t.params, -t.val_acc, t.number)
    front = [t.number for t in trials if not any(dominates(o, t) for o in trials)]
    assert sorted(drawn["by-params"][1]) == sorted(front)
    by_params = "Chart.getChart(document.querySelector('[data-chart=\"by-params\"]'))"
    assert page.evaluate(by_params + ".options.scales.y.title.text") == "validation accuracy (%)"
    assert page.evaluate(by_params + ".scales.x.type") == "logarithmic"
    # However short the search, no two ticks of the wall-time axis read the same.
    by_time = "Chart.getChart(document.querySelector('[data-chart=\"best-by-time\"]'))"
    labels = page.evaluate(by_time + ".scales.x.ticks.map((t) => t.label)")
    assert len(labels) > 2 and len(set(labels)) == len(labels) and all(label.endswith(" s") for label in labels), labels

    Path("var/screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="var/screenshots/experiment.png", full_page=True)

    # Hovering a point shows its trial; clicking it opens the trial's page.
    where = point_on_screen(page, '[data-chart="by-params"]', 0, 0)
    page.mouse.move(where["x"], where["y"])
    page.wait_for_function("Chart.getChart(document.querySelector('[data-chart=\"by-params\"]')).tooltip.opacity > 0")
    tooltip = page.evaluate("""() => {
        const tip = Chart.getChart(document.querySelector('[data-chart="by-params"]')).tooltip;
        return {title: tip.title, lines: tip.body.flatMap((b) => b.lines)};
    }""")
    number = int(tooltip["title"][0].removeprefix("trial "))
    shown = next(t for t in trials if t.number == number)
    assert tooltip["lines"][:3] == [shown.arch_display, f"validation accuracy: {100 * shown.val_acc:.2f}%",
                                    f"params: {shown.params:,}"]
    page.mouse.click(where["x"], where["y"])
    page.wait_for_url(f"{live_server.url}/experiments/{experiment.pk}/trials/{number}/")

    page.wait_for_function("Chart.getChart(document.getElementById('chart-learning-curve')) !== undefined")
    series = page.evaluate("Chart.getChart(document.getElementById('chart-learning-curve')).data.datasets"
                           ".map((d) => d.data.map((p) => p.y))")
    assert series == [shown.curve, shown.loss_curve] and len(shown.loss_curve) == 3
    expect(page.locator("#log-tail")).to_contain_text("epoch 3/3: train loss")
    expect(page.locator("#worker")).to_contain_text(shown.host)
    page.screenshot(path="var/screenshots/trial.png", full_page=True)
    # A trial of one epoch (or a table lookup's single figure) is a point well inside the chart, not on its edge.
    single = next(t for t in trials if t.number != number)
    experiment.trials.filter(pk=single.pk).update(curve=[0.5], loss_curve=[1.2])
    page.goto(f"{live_server.url}/experiments/{experiment.pk}/trials/{single.number}/")
    page.wait_for_function("Chart.getChart(document.getElementById('chart-learning-curve')) !== undefined")
    inside = page.evaluate("""() => {
        const chart = Chart.getChart(document.getElementById('chart-learning-curve')), area = chart.chartArea;
        return chart.data.datasets.map((d, i) => {
            const point = chart.getDatasetMeta(i).data[0];
            return point.x > area.left + 20 && point.x < area.right - 20;
        });
    }""")
    assert inside == [True, True]
    ticks = page.evaluate("Chart.getChart(document.getElementById('chart-learning-curve')).scales.x.ticks"
                          ".map((t) => t.label)")
    assert ticks == ["1"], ticks  # an epoch axis counts whole epochs
    assert bad == [], bad
