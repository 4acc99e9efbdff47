"""The experiment page at scale: a server-side leaderboard (sorted, filtered, paged, indexed) and a poll that
sends only what changed since the client's cursor."""
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from nasjobs.search import ExperimentSpec, TrialRecord
from webapp.experiments import runner, selectors, services
from webapp.experiments.models import Experiment, Trial

pytestmark = pytest.mark.django_db
SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=100, epochs=1, seed=0)


def experiment_with(user, n: int, **extra) -> Experiment:
    """An experiment with n trials recorded through the serial store (each a planning step of its own)."""
    experiment = services.experiment_create(user=user, name="board", spec=SPEC, enqueue=False, **extra)
    assert services.experiment_claim(experiment.pk, "w")
    for i in range(n):
        epochs = 1 + i % 3
        services.trial_record(experiment.pk, "w", TrialRecord(
            i, f"c{16 + i}k3", f"arch {i}", (i * 37 % 101) / 100, 1000 + (i * 53 % 89), 50_000 + i, 0.1 * (i % 7),
            {"epochs": epochs}, [0.1], f"w{i}" if i % 4 == 0 else None, "train"), {"s": i}, list(range(0, n, 4)))
    experiment.refresh_from_db()
    return experiment


def board(client, experiment, **query) -> str:
    response = client.get(reverse("experiment_leaderboard", args=[experiment.pk]), query)
    assert response.status_code == 200
    return response.content.decode()


def numbers(html: str) -> list[int]:
    body = html[html.index("<tbody>"):html.index("</tbody>")]
    return [int(cell.split("/trials/")[1].split("/")[0]) for cell in body.split('href="')[1:]]


def test_the_leaderboard_is_a_page_of_the_best_first(alice_client, alice):
    e = experiment_with(alice, 60)
    figures = {t.number: t.val_acc for t in e.trials.all()}
    first = numbers(board(alice_client, e))
    expected = sorted(figures, key=lambda n: (-figures[n], n))
    assert first == expected[:25]
    assert numbers(board(alice_client, e, page=3)) == expected[50:]
    html = board(alice_client, e, page=2)
    assert "trials 26–50 of 60" in html and "page 2 of 3" in html


@pytest.mark.parametrize("sort,key", [("params", lambda t: (t.params, t.number)),
                                      ("-params", lambda t: (-t.params, t.number)),
                                      ("macs", lambda t: (t.flops, t.number)),
                                      ("training", lambda t: (t.train_seconds, t.number)),
                                      ("-trial", lambda t: -t.number), ("figure", lambda t: (t.val_acc, t.number))])
def test_it_sorts_by_any_column(alice_client, alice, sort, key):
    e = experiment_with(alice, 30)
    assert numbers(board(alice_client, e, sort=sort)) == [t.number for t in sorted(e.trials.all(), key=key)][:25]


def test_rank_is_by_figure_whatever_the_order(alice_client, alice):
    e = experiment_with(alice, 10)
    best = e.trials.order_by("-val_acc", "number").first()
    rows = selectors.experiment_leaderboard(e, sort="trial")
    assert {t.number: t.rank for t in rows}[best.number] == 1


def test_it_filters_by_fidelity_and_kept_weights(alice_client, alice):
    e = experiment_with(alice, 30)
    assert set(numbers(board(alice_client, e, epochs=2))) == {n for n in range(30) if n % 3 == 1}
    assert set(numbers(board(alice_client, e, kept=1))) == {n for n in range(30) if n % 4 == 0}
    html = board(alice_client, e, epochs=2, kept=1)
    assert set(numbers(html)) == {n for n in range(30) if n % 3 == 1 and n % 4 == 0}
    assert '<option value="2" selected>' in html and "checked" in html
    assert "No trial matches these filters." in board(alice_client, e, epochs=99)


def test_a_bad_sort_or_filter_falls_back_to_the_default(alice_client, alice):
    e = experiment_with(alice, 5)
    default = numbers(board(alice_client, e))
    for query in ({"sort": "curve"}, {"sort": "-"}, {"epochs": "x"}, {"page": "999"}, {"page": "-1"}):
        assert numbers(board(alice_client, e, **query)) == default


def test_sort_links_toggle_and_keep_the_filters(alice_client, alice):
    e = experiment_with(alice, 5)
    html = board(alice_client, e, sort="params", kept=1)
    assert 'id="sort-params">Params ↑' in html
    assert "?kept=1&amp;sort=-params#leaderboard-box" in html  # a second click reverses, the filter stays
    assert "?kept=1&amp;sort=-figure#leaderboard-box" in html  # another column starts at its natural order


def test_the_leaderboard_reads_no_blobs_and_a_fixed_number_of_queries(alice_client, alice):
    e = experiment_with(alice, 40)
    with CaptureQueriesContext(connection) as few:
        board(alice_client, e)
    e2 = experiment_with(alice, 80)
    with CaptureQueriesContext(connection) as many:
        board(alice_client, e2)
    assert len(few) == len(many)
    sql = " ".join(q["sql"] for q in many.captured_queries if '"experiments_trial"' in q["sql"])
    assert '"curve"' not in sql and '"traceback"' not in sql and '"strategy_state"' not in sql


def test_another_teams_leaderboard_is_a_404(client, alice, bob):
    e = experiment_with(alice, 3)
    client.force_login(bob)
    assert client.get(reverse("experiment_leaderboard", args=[e.pk])).status_code == 404


def test_the_detail_page_shows_the_first_page_with_its_controls(alice_client, alice):
    e = experiment_with(alice, 30)
    page = alice_client.get(reverse("experiment_detail", args=[e.pk]), {"sort": "params"}).content.decode()
    assert 'id="leaderboard-box"' in page and 'id="leaderboard-filters"' in page and "page 1 of 2" in page
    assert numbers(page[page.index('id="leaderboard"'):]) == [t.number for t in e.trials.order_by("params", "number")][:25]


def test_a_poll_sends_only_what_changed_since_its_cursor(alice_client, alice):
    e = experiment_with(alice, 3)
    url = reverse("experiment_status", args=[e.pk])
    everything = alice_client.get(url, {"since": 0}).json()
    assert [t["number"] for t in everything["trials"]] == [0, 1, 2] and not everything["more"]
    unchanged = alice_client.get(url, {"since": everything["cursor"]})
    assert unchanged.json()["trials"] == [] and unchanged.json()["cursor"] == everything["cursor"]
    assert alice_client.get(url).json()["trials"] == []  # no cursor: the page shows everything up to now
    services.trial_record(e.pk, "w", TrialRecord(3, "c64k3", "arch 3", 0.99, 1, 1, 0.1, {"epochs": 1}, [0.1], None,
                                                 "train"), {"s": 3}, [3])
    again = alice_client.get(url, {"since": everything["cursor"]}).json()
    assert [t["number"] for t in again["trials"]] == [3] and again["best"] == {"number": 3, "val_acc": 0.99}
    assert set(again["trials"][0]) == {"number", "arch", "val_acc", "params", "flops", "distance", "finished_s"}


def test_a_re_evaluation_is_sent_again_with_its_new_mean(alice_client, alice):
    e = experiment_with(alice, 2)
    url = reverse("experiment_status", args=[e.pk])
    cursor = alice_client.get(url, {"since": 0}).json()["cursor"]
    services.trial_record(e.pk, "w", TrialRecord(0, "c16k3", "arch 0", 0.5, 1000, 50_000, 0.1, {"epochs": 1}, [0.1],
                                                 None, "train", evaluations=[0.0, 1.0]), {"s": 9}, [0])
    assert [(t["number"], t["val_acc"]) for t in alice_client.get(url, {"since": cursor}).json()["trials"]] == [(0, 0.5)]


def test_a_poll_catches_up_in_chunks_without_losing_a_trial(alice_client, alice, monkeypatch):
    monkeypatch.setattr(selectors, "POLL_ROWS", 7)
    e = experiment_with(alice, 20)
    url, cursor, seen = reverse("experiment_status", args=[e.pk]), 0, []
    while True:
        data = alice_client.get(url, {"since": cursor}).json()
        seen += [t["number"] for t in data["trials"]]
        cursor = data["cursor"]
        if not data["more"]:
            break
    assert seen == list(range(20))


def test_an_unchanged_poll_of_a_large_experiment_is_small(alice_client, alice):
    e = experiment_with(alice, 5)
    Trial.objects.bulk_create([Trial(experiment=e, number=n, arch_key=f"k{n}", arch_display=f"a{n}", val_acc=0.5,
                                     params=n, flops=n, train_seconds=1.0, estimator="train", seq=1, curve=[0.1] * 50)
                               for n in range(5, 3000)])
    url = reverse("experiment_status", args=[e.pk])
    cursor = alice_client.get(url).json()["cursor"]
    with CaptureQueriesContext(connection) as queries:
        body = alice_client.get(url, {"since": cursor}).content
    assert len(body) < 2000, len(body)
    assert not any('"curve"' in q["sql"] or '"strategy_state"' in q["sql"] for q in queries.captured_queries)


def test_bad_cursors_are_refused(alice_client, alice):
    e = experiment_with(alice, 1)
    url = reverse("experiment_status", args=[e.pk])
    for query in ({"since": "-1"}, {"since": "x"}, {"epochs": "a"}):
        response = alice_client.get(url, query)
        assert response.status_code == 400 and "integer" in response.json()["error"]


def test_the_platform_runner_numbers_its_steps_in_order(alice, settings, django_capture_on_commit_callbacks):
    """Trial-level runner: each report is a planning step under the experiment's lock; its trial carries it."""
    spec = ExperimentSpec("nb201-cifar10", "nb201", "random", "benchmark", budget=6, epochs=1, seed=1, parallelism=2)
    e = services.experiment_create(user=alice, name="seq", spec=spec, enqueue=False)
    assert runner.experiment_run_inline(e.pk, "w") == "succeeded"
    seqs = list(Trial.objects.filter(experiment=e).order_by("told").values_list("seq", flat=True))
    assert len(seqs) == 6 and seqs == sorted(seqs) and len(set(seqs)) == 6 and seqs[0] >= 1
    assert json.loads(json.dumps(selectors.experiment_progress(e, 0)))["cursor"] == seqs[-1] + 1


def test_ranks_are_the_same_whether_read_from_the_order_or_computed(alice):
    e = experiment_with(alice, 40)
    by_figure = selectors.experiment_leaderboard(e)[25:40]  # the rank is the place
    computed = {t.number: t.rank for t in selectors.experiment_leaderboard(e, sort="trial")[0:40]}  # the window's
    assert [t.rank for t in by_figure] == list(range(26, 41)) == [computed[t.number] for t in by_figure]


def chance_experiment(user) -> Experiment:
    """Three trials, the second trained to chance level (its estimator's mark in its fidelity)."""
    experiment = services.experiment_create(user=user, name="chance", spec=SPEC, enqueue=False)
    assert services.experiment_claim(experiment.pk, "w")
    for i, (acc, fidelity) in enumerate([(0.9, {"epochs": 1}), (0.1, {"epochs": 1, "chance_level": True}),
                                         (0.5, {"epochs": 1})]):
        services.trial_record(experiment.pk, "w", TrialRecord(i, f"c{16 + i}k3", f"arch {i}", acc, 1000, 5000, 0.1,
                                                              fidelity, [acc], None, "train"), {"s": i}, [i])
    return experiment


def rows_by_number(html: str) -> dict[int, str]:
    body = html[html.index("<tbody>"):html.index("</tbody>")]
    return {int(row.split("/trials/")[1].split("/")[0]): row for row in body.split("<tr>")[1:]}


def test_a_trial_at_chance_level_is_marked_in_its_leaderboard_row_without_loading_its_fidelity(alice_client, alice,
                                                                                               django_assert_num_queries):
    e = chance_experiment(alice)
    rows = rows_by_number(board(alice_client, e))
    assert 'class="tag chance-level"' in rows[1] and "no better than guessing the most common class" in rows[1]
    assert "chance-level" not in rows[0] and "chance-level" not in rows[2]
    trials = selectors.experiment_leaderboard(e)[:25]
    with django_assert_num_queries(0):  # the mark came with the row, read out of the fidelity by the database
        assert [t.at_chance_level for t in trials] == [False, False, True]  # best first: 0, 2, 1
    assert all("fidelity" in t.get_deferred_fields() for t in trials)


def query_plan(sql: str) -> str:
    """The database's plan for a query, as text; PostgreSQL is told to avoid a sequential scan where it can, as it
    would on a large table (on a test's few rows a scan is cheaper and the plan would say nothing of the index)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            return "\n".join(str(row[-1]) for row in cursor.fetchall())
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize("sort", ["params", "-macs", "training", "-figure", "figure"])
def test_a_page_and_its_ranks_are_read_from_an_index_alone(alice, sort):
    """Rows skipped over by a deep page, and the rows a rank is counted over, are read from the sort's index, never
    from the table (where every row carries its learning curve); so a page deep into 100,000 trials stays fast."""
    e = experiment_with(alice, 30)
    with CaptureQueriesContext(connection) as queries:
        rows = selectors.experiment_leaderboard(e, sort=sort)[10:20]
    assert len(rows) == 10
    # the page's numbers, then its rows by number, then (unless the order is the rank's) the ranks
    skipped_over = [queries.captured_queries[0]] + ([queries.captured_queries[2]] if sort != "-figure" else [])
    for query in skipped_over:
        plan = query_plan(query["sql"])
        assert "COVERING INDEX" in plan or "Index Only Scan" in plan, (query["sql"], plan)
