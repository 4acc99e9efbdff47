"""The platform benches run verbatim from the repository root with tiny settings and print the figures they promise."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def bench(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, f"bench/{script}", *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_overhead_reports_the_per_trial_time_of_the_platform_and_of_a_bare_loop():
    report = bench("overhead.py", "--trials", "30")
    for key in ("overhead_ms_median", "overhead_ms_p95", "trials_per_s", "first_100_ms_median",
                "last_100_ms_median", "bare_loop_ratio"):
        assert report[key] > 0, key
    assert report["trials"] == 30 and report["database"] == "sqlite"
    assert report["meta"]["options"]["trials"] == 30 and report["meta"]["options"]["strategy"] == "random"
    assert report["meta"]["commit"] and report["meta"]["machine"]["cpus"]


def test_scaling_reports_trials_per_hour_with_one_and_two_workers():
    report = bench("scaling.py", "--trials", "4", "--epochs", "1")
    for key in ("trials_per_hour_1", "trials_per_hour_2", "speedup", "wall_s_1", "wall_s_2"):
        assert report[key] > 0, key
    assert report["workers_used_1"] == 1 and report["same_architectures"]
    assert report["meta"]["options"]["epochs"] == 1 and report["meta"]["components"]["spec"]["parallelism"] == 2


def test_leaderboard_times_the_real_pages_of_a_large_experiment():
    report = bench("leaderboard.py", "--trials", "300", "--experiments", "30", "--repeat", "2", "--checkpoint-kb", "50")
    for key in ("first_page_ms_median", "sorted_page_ms_median", "filtered_page_ms_median", "poll_unchanged_ms_median",
                "list_ms_median"):
        assert report[key] > 0, key
    assert report["trials"] == 300 and report["experiments"] == 30 and report["database"] == "sqlite"
    assert 0 < report["poll_unchanged_bytes"] < 2000
    assert report["meta"]["options"]["trials"] == 300 and report["meta"]["commit"]


def test_load_reports_latencies_of_concurrent_clients_against_gunicorn_while_a_search_runs():
    done = subprocess.run([sys.executable, "bench/load.py", "--seconds", "5", "--clients", "5", "--trials", "200",
                           "--search-budget", "50", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["requests"] > 0 and report["errors"] == 0 and report["status_5xx"] == 0, report["statuses"]
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    # gunicorn's own times of the same requests (the warm-up's left out), never longer than the clients saw
    assert report["server_requests"] == report["requests"] and report["warmup"] == 3
    assert 0 < report["server_p50_ms"] <= report["server_p99_ms"] <= report["p99_ms"]
    assert set(report["per_page_p99_ms"]) == {"list", "experiment", "leaderboard", "trial", "status", "api"}
    assert report["trials"] == 200 and report["gunicorn_workers"] == 2 and report["search_trials_done"] > 0
    assert report["meta"]["options"]["clients"] == 5 and report["meta"]["components"]["spec"]["budget"] == 50
    assert report["think_s"] == report["meta"]["options"]["think"] == 1.5
