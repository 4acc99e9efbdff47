"""Downloading a trial as a runnable PyTorch model, from the page and from `nas export`."""
import io
import json
import zipfile

import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo")]


def load(data: bytes) -> tuple[torch.nn.Module, dict]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return (torch.export.load(io.BytesIO(archive.read("model.pt2"))).module(),
                json.loads(archive.read("architecture.json")))


@pytest.fixture
def finished(capsys, settings, tmp_path):
    """A finished 3-trial search whose top 1 keeps its weights."""
    settings.NAS_ARTIFACTS_DIR = tmp_path
    call_command("nas", "submit", "--budget", "3", "--epochs", "2", "--seed", "1", "--top-k", "1", "--option",
                 "max_layers=2", "--inline", "--json")
    return json.loads(capsys.readouterr().out)


def test_the_best_trial_downloads_as_a_trained_model_that_classifies_the_test_split(alice_client, finished):
    best = finished["best"]
    page = alice_client.get(reverse("experiment_detail", args=[finished["id"]])).content.decode()
    url = reverse("trial_export", args=[finished["id"], best["number"]])
    assert f'href="{url}"' in page
    response = alice_client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert f'nasboard-{finished["id"]}-trial-{best["number"]}.zip' in response["Content-Disposition"]
    model, info = load(response.content)
    assert info["trained"] is True and info["arch"] == best["arch"] and info["test_acc"] == best["test_acc"]
    from nasjobs.datasets import load_digits

    test = load_digits().test
    with torch.no_grad():
        accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy == pytest.approx(best["test_acc"], abs=1e-6)  # the very network the platform tested


def test_a_trial_without_kept_weights_exports_untrained_and_the_page_says_so(alice_client, finished):
    others = [row["number"] for row in finished["leaderboard"] if row["number"] != finished["best"]["number"]]
    page = alice_client.get(reverse("trial_detail", args=[finished["id"], others[0]])).content.decode()
    assert "freshly initialised" in page
    model, info = load(alice_client.get(reverse("trial_export", args=[finished["id"], others[0]])).content)
    assert info["trained"] is False and model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert alice_client.get(reverse("trial_export", args=[finished["id"], 99])).status_code == 404


def test_nas_export_writes_the_zip_and_refuses_bad_requests(capsys, finished, tmp_path):
    target = tmp_path / "best.zip"
    call_command("nas", "export", str(finished["id"]), "--output", str(target))
    assert "trained weights" in capsys.readouterr().out
    _, info = load(target.read_bytes())
    assert info["trial"] == finished["best"]["number"]
    with pytest.raises(CommandError, match="has no trial 42"):
        call_command("nas", "export", str(finished["id"]), "--trial", "42", "--output", str(tmp_path / "x.zip"))
    with pytest.raises(CommandError, match="no folder"):
        call_command("nas", "export", str(finished["id"]), "--output", str(tmp_path / "missing" / "x.zip"))
    with pytest.raises(CommandError, match="no experiment with id 999"):
        call_command("nas", "export", "999")
    assert not (tmp_path / "x.zip").exists()
