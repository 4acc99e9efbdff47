import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from webapp.experiments.models import Experiment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo")]
ROOT = Path(__file__).resolve().parents[2]


def nas(*args, capsys):
    call_command("nas", *args)
    return capsys.readouterr().out


def test_submit_inline_runs_the_search_and_prints_json(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    out = nas("submit", "--budget", "3", "--epochs", "1", "--seed", "2", "--top-k", "1", "--option", "max_layers=2",
              "--option", "strategy.no_repeats=true", "--inline", "--json", capsys=capsys)
    data = json.loads(out)
    assert data["status"] == "succeeded" and data["trials_done"] == 3 and data["budget"] == 3
    best = data["best"]
    assert set(best) >= {"arch", "val_acc", "test_acc", "params"}
    assert 0 <= best["val_acc"] <= 1 and 0 <= best["test_acc"] <= 1 and best["params"] > 0
    assert data["options"]["space"]["max_layers"] == 2
    assert len(list((tmp_path / f"experiment-{data['id']}").iterdir())) == 1

    shown = json.loads(nas("show", str(data["id"]), "--json", capsys=capsys))
    assert shown["best"] == best
    text = nas("show", str(data["id"]), capsys=capsys)
    assert f"experiment {data['id']}" in text and "succeeded" in text


def test_an_option_that_makes_the_dataset_fit_the_space_is_applied_before_the_check(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    with pytest.raises(CommandError, match="turn on the chain_cnn option square_kernels"):
        call_command("nas", "submit", "--dataset", "mnist1d", "--budget", "1", "--inline")
    out = nas("submit", "--dataset", "mnist1d", "--budget", "1", "--epochs", "1", "--option", "square_kernels=true",
              "--option", "max_layers=1", "--inline", "--json", capsys=capsys)
    data = json.loads(out)
    assert data["status"] == "succeeded" and data["options"]["space"]["square_kernels"] is True


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "budget: must be an integer from 1 to 100000"),
    (["--strategy", "nope"], "strategy: unknown strategy 'nope'"),
    (["--option", "max_layers=0"], "space.max_layers: must be at least 1"),
    (["--option", "max_layers"], "expected KEY=VALUE"),
    (["--option", "wings=2"], "'wings' is not an option"),
    (["--option", "space.filters=7"], "space.filters: 7 is not one of"),
    (["--budget", "x"], "invalid int value"),
])
def test_bad_arguments_fail_with_one_line_and_create_nothing(args, message):
    with pytest.raises(CommandError) as err:
        call_command("nas", "submit", *args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert Experiment.objects.count() == 0


def test_unknown_ids_and_wrong_states_are_errors():
    with pytest.raises(CommandError, match="no experiment with id 999"):
        call_command("nas", "show", "999")
    with pytest.raises(CommandError, match="no experiment"):
        call_command("nas", "cancel", "999")


def test_from_a_shell_a_bad_argument_exits_non_zero_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "manage.py", "nas", "submit", "--budget", "nope"], cwd=ROOT,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "DEBUG": "1", "NAS_ENV_FILE": "",
                                                               "NAS_VAR_DIR": str(tmp_path)})
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "invalid int value: 'nope'" in done.stderr


def test_settings_refuse_to_start_without_a_secret_key_when_debug_is_off(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "0", "NAS_VAR_DIR": str(tmp_path), "NAS_ENV_FILE": ""}
    done = subprocess.run([sys.executable, "-c", "import webapp.settings"], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert done.returncode != 0 and "SECRET_KEY is required when DEBUG is off" in done.stderr
    done = subprocess.run([sys.executable, "-c", "import webapp.settings"], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "DEBUG": "maybe"})
    assert done.returncode != 0 and "DEBUG must be one of" in done.stderr
    done = subprocess.run([sys.executable, "-c", "import webapp.settings"], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "SECRET_KEY": "s", "DATABASE_URL": "mysql://x/y"})
    assert done.returncode != 0 and "DATABASE_URL must be sqlite:// or postgres://" in done.stderr


def test_demo_user_gets_a_random_password_kept_in_a_local_file(tmp_path, capsys, django_user_model):
    path = tmp_path / "creds"
    call_command("demo_user", "--credentials-file", str(path))
    first = capsys.readouterr().out
    password = path.read_text().strip()
    assert len(password) >= 12 and password in first
    assert oct(path.stat().st_mode)[-3:] == "600"
    call_command("demo_user", "--credentials-file", str(path))
    assert path.read_text().strip() == password
    assert django_user_model.objects.get(username="demo").check_password(password)
    other = tmp_path / "creds2"
    call_command("demo_user", "--credentials-file", str(other), "--username", "demo2")
    assert other.read_text().strip() != password


def test_calibrate_measures_the_estimators_trust(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    data = json.loads(nas("submit", "--budget", "4", "--epochs", "1", "--estimator", "low_fidelity", "--option",
                          "max_layers=2", "--inline", "--json", capsys=capsys))
    report = json.loads(nas("calibrate", str(data["id"]), "--k", "3", "--epochs", "2", "--inline", "--json",
                            capsys=capsys))
    assert report["status"] == "succeeded" and report["k"] == 3 and len(report["pairs"]) == 3
    assert -1 <= report["kendall_tau"] <= 1 and report["reference"] == "train 2 epochs"
    shown = json.loads(nas("show", str(data["id"]), "--json", capsys=capsys))
    assert shown["trust"]["kendall_tau"] == report["kendall_tau"]
    with pytest.raises(CommandError, match="k: measure between 2 and 1000"):
        call_command("nas", "calibrate", str(data["id"]), "--k", "1")


def test_successive_halving_records_every_rung_and_counts_trials_not_promotions(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    data = json.loads(nas("submit", "--budget", "4", "--epochs", "3", "--estimator", "successive_halving",
                          "--option", "max_layers=2", "--option", "bracket_size=3", "--option", "min_epochs=1",
                          "--inline", "--json", capsys=capsys))
    assert data["status"] == "succeeded" and data["trials_done"] == 4
    rungs = sorted(len(row["fidelity"]["rungs"]) for row in data["leaderboard"])
    # A bracket of 3 promotes its best to 3 epochs; the budget leaves one trial for the next, which is promoted too.
    assert rungs == [1, 1, 2, 2]
    for row in data["leaderboard"]:
        assert [r["epochs"] for r in row["fidelity"]["rungs"]] in ([1], [1, 3])


def test_commands_in_a_new_terminal_read_the_local_settings_file(tmp_path):
    """What `make run` writes once (.env) is what a `manage.py` command in another terminal runs with."""
    env_file = tmp_path / "local.env"
    env_file.write_text("# written by make run\nDEBUG=1\nSECRET_KEY='generated-local-key'\n")
    env = {"PATH": "/usr/bin:/bin", "NAS_VAR_DIR": str(tmp_path), "NAS_ENV_FILE": str(env_file)}
    code = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"
    done = subprocess.run([sys.executable, "-c", f"import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = "
                           f"'webapp.settings'; django.setup(); {code}"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "generated-local-key"]
    done = subprocess.run([sys.executable, "-c", "import webapp.settings"], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "DEBUG": "0"})  # the environment wins over the file
    assert done.returncode == 0, done.stderr
    env_file.write_text("DEBUG 1\n")
    done = subprocess.run([sys.executable, "-c", "import webapp.settings"], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    assert done.returncode != 0 and "local.env:1: expected KEY=VALUE" in done.stderr
