"""Exporting a trial: requested from the page or the API, built once by a worker into the artifact store, streamed to
every download; the file runs without the platform on raw samples (torch.export zip and ONNX) and `nas export`."""
import io
import json
import os
import time
import zipfile

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from sklearn.datasets import load_digits as sklearn_digits

from nasjobs.artifacts import ArtifactStore
from nasjobs.datasets import dataset_splits
from tests.conftest import wait_for
from webapp.experiments import services
from webapp.experiments.models import Experiment, Export
from webapp.experiments.runner import export_run_now

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("demo")]


def raw_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The digits' test split as scikit-learn ships it (pixel counts 0..16), in the platform's split order."""
    bunch = sklearn_digits()
    test = dataset_splits(bunch.target)[2]
    return bunch.images[test, None].astype(np.float32), bunch.target[test]


def load_zip(data: bytes) -> tuple[torch.nn.Module, dict, str]:
    """What a user does with the download: torch.export.load, nothing of this platform."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        with archive.open("model.pt2") as f:
            model = torch.export.load(f).module()
        return model, json.loads(archive.read("metadata.json")), archive.read("README.txt").decode()


def zip_accuracy(data: bytes) -> float:
    model, _, _ = load_zip(data)
    x, y = raw_digits_test()
    with torch.no_grad():
        return (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean().item()


def onnx_accuracy(data: bytes) -> float:
    onnx.checker.check_model(onnx.load_from_string(data))
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x, y = raw_digits_test()
    return (session.run(None, {"raw": x})[0].argmax(1) == y).mean().item()


def body(response) -> bytes:
    """A streamed body; consuming it closes the file (the test client closes the response at its end)."""
    return b"".join(response.streaming_content)


def urls(experiment_id: int, number: int, fmt: str) -> tuple[str, str]:
    return (reverse("trial_export_request", args=[experiment_id, number, fmt]),
            reverse("trial_export_download", args=[experiment_id, number, fmt]))


def submit(capsys) -> dict:
    """A finished 3-trial search of real training whose top 1 keeps its weights."""
    call_command("nas", "submit", "--budget", "3", "--epochs", "3", "--seed", "1", "--top-k", "1", "--option",
                 "max_layers=2", "--inline", "--json")
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def finished(capsys, settings, tmp_path):
    settings.NAS_ARTIFACTS_DIR = tmp_path
    return submit(capsys)


def build_here(export_id: int) -> str:
    """What the worker's task runs, in this process (the tests that need a real worker start one)."""
    return export_run_now(export_id, f"test:{os.getpid()}")


def test_the_best_trial_is_built_once_and_streamed_and_scores_its_test_accuracy_on_raw_pixels(alice_client,
                                                                                              finished):
    best, pk = finished["best"], finished["id"]
    page = alice_client.get(reverse("experiment_detail", args=[pk])).content.decode()
    trial_page = reverse("trial_detail", args=[pk, best["number"]])
    assert f'href="{trial_page}#exports"' in page
    request, download = urls(pk, best["number"], "torch")
    assert f'action="{request}"' in alice_client.get(trial_page).content.decode()
    assert alice_client.get(download).status_code == 404  # not requested: nothing is built by a GET
    assert alice_client.post(request)["Location"] == f"{trial_page}#exports"
    export = Export.objects.get()
    assert export.status == "queued"
    page = alice_client.get(trial_page).content.decode()
    assert "building…" in page and 'window.location.reload()' in page
    refused = alice_client.get(download)
    assert refused.status_code == 409 and "a worker builds it" in refused.content.decode()
    assert build_here(export.pk) == "done"
    page = alice_client.get(trial_page).content.decode()
    assert f'href="{download}"' in page and 'http-equiv="refresh"' not in page
    response = alice_client.get(download)
    assert response.status_code == 200 and response.streaming and response["Content-Type"] == "application/zip"
    assert f'nasboard-{pk}-trial-{best["number"]}.zip' in response["Content-Disposition"]
    data = body(response)
    stored = services.export_path(pk, best["number"], "torch")
    assert data == stored.read_bytes() and Export.objects.get().size == len(data)
    _, info, readme = load_zip(data)
    assert info["trained"] is True and info["arch"] == best["arch"] and info["test_acc"] == best["test_acc"]
    assert info["input"]["dtype"] == "float32" and info["input"]["range"].startswith("0..16") and "0..16" in readme
    assert zip_accuracy(data) == pytest.approx(best["test_acc"], abs=1e-9)  # the very network the platform tested
    # A second request reuses the row and its file: nothing is built again.
    mtime = stored.stat().st_mtime_ns
    alice_client.post(request)
    export = Export.objects.get()
    assert export.status == "ready" and export.attempts == 1 and stored.stat().st_mtime_ns == mtime


def test_the_onnx_download_passes_the_checker_and_scores_the_same_on_raw_pixels(alice_client, finished):
    best, pk = finished["best"], finished["id"]
    request, download = urls(pk, best["number"], "onnx")
    alice_client.post(request)
    assert build_here(Export.objects.get(format="onnx").pk) == "done"
    response = alice_client.get(download)
    assert response["Content-Type"] == "application/octet-stream" and ".onnx" in response["Content-Disposition"]
    assert onnx_accuracy(body(response)) == pytest.approx(best["test_acc"], abs=1e-9)


def test_a_trial_without_kept_weights_exports_untrained_and_the_page_says_so(alice_client, finished):
    pk = finished["id"]
    other = next(row["number"] for row in finished["leaderboard"] if row["number"] != finished["best"]["number"])
    request, download = urls(pk, other, "torch")
    alice_client.post(request)
    build_here(Export.objects.get().pk)
    page = alice_client.get(reverse("trial_detail", args=[pk, other])).content.decode()
    assert "freshly initialised" in page and "untrained" in page
    model, info, readme = load_zip(body(alice_client.get(download)))
    assert info["trained"] is False and "NOT trained" in readme and model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert alice_client.post(urls(pk, 99, "torch")[0]).status_code == 404


def test_a_failed_build_records_its_error_and_a_new_request_retries_it(alice_client, finished, settings):
    best, pk = finished["best"], finished["id"]
    weights = ArtifactStore(settings.NAS_ARTIFACTS_DIR, pk).path(best["number"])
    good = weights.read_bytes()
    weights.write_bytes(b"not a checkpoint")
    request, download = urls(pk, best["number"], "torch")
    alice_client.post(request)
    export = Export.objects.get()
    assert build_here(export.pk) == "failed"
    export.refresh_from_db()
    assert export.status == "failed" and export.error and "Traceback" in export.traceback
    page = alice_client.get(reverse("trial_detail", args=[pk, best["number"]])).content.decode()
    assert f"failed: {export.error}" in page and "Try again" in page
    assert alice_client.get(download).status_code == 409
    assert not services.export_path(pk, best["number"], "torch").exists()  # nothing half-written left
    weights.write_bytes(good)
    alice_client.post(request)
    assert Export.objects.get().status == "queued" and build_here(export.pk) == "done"
    assert zip_accuracy(body(alice_client.get(download))) == pytest.approx(best["test_acc"], abs=1e-9)


def test_deleting_the_experiment_deletes_its_exports_and_their_files(alice_client, finished,
                                                                    django_capture_on_commit_callbacks):
    best, pk = finished["best"], finished["id"]
    alice_client.post(urls(pk, best["number"], "torch")[0])
    export = Export.objects.get()
    build_here(export.pk)
    stored = services.export_path(pk, best["number"], "torch")
    assert stored.is_file()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.experiment_delete(Experiment.objects.get(pk=pk))
    assert not Export.objects.exists() and not stored.exists()
    assert build_here(export.pk) == "skipped"  # a message still queued for it finds nothing to build


def test_another_teams_export_is_a_404_everywhere_and_a_bad_format_says_why(alice_client, bob, finished):
    best, pk = finished["best"], finished["id"]
    request, download = urls(pk, best["number"], "torch")
    alice_client.post(request)
    build_here(Export.objects.get().pk)
    client = Client()
    client.force_login(bob)
    api = f"/api/experiments/{pk}/trials/{best['number']}/exports/torch/"
    for response in (client.post(request), client.get(download), client.get(api), client.post(api),
                     client.get(api + "download/")):
        assert response.status_code == 404
    assert Export.objects.count() == 1
    for response in (alice_client.post(urls(pk, best["number"], "tflite")[0]),
                     alice_client.get(urls(pk, best["number"], "tflite")[1])):
        assert response.status_code == 404 and "unknown export format 'tflite'" in response.content.decode()
    bad = alice_client.post(f"/api/experiments/{pk}/trials/{best['number']}/exports/tflite/")
    assert bad.status_code == 400 and "choose one of onnx, torch" in bad.json()["format"][0]
    assert Export.objects.count() == 1


def test_the_api_requests_an_export_and_streams_it(alice_client, finished):
    best, pk = finished["best"], finished["id"]
    api = f"/api/experiments/{pk}/trials/{best['number']}/exports/onnx/"
    assert alice_client.get(api).json()["status"] == "none"
    assert alice_client.get(api + "download/").status_code == 404
    accepted = alice_client.post(api)
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert accepted.json()["download"].endswith(api + "download/")
    assert alice_client.get(api + "download/").status_code == 409
    build_here(Export.objects.get().pk)
    ready = alice_client.post(api)
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["trained"] is True
    response = alice_client.get(api + "download/")
    assert response.status_code == 200 and response.streaming
    assert onnx_accuracy(body(response)) == pytest.approx(best["test_acc"], abs=1e-9)


def test_nas_export_writes_either_format_and_refuses_bad_requests(capsys, finished, tmp_path):
    target = tmp_path / "best.zip"
    call_command("nas", "export", str(finished["id"]), "--output", str(target))
    assert "trained weights" in capsys.readouterr().out
    _, info, _ = load_zip(target.read_bytes())
    assert info["trial"] == finished["best"]["number"]
    call_command("nas", "export", str(finished["id"]), "--format", "onnx", "--output", str(tmp_path / "best.onnx"))
    assert onnx_accuracy((tmp_path / "best.onnx").read_bytes()) == pytest.approx(finished["best"]["test_acc"],
                                                                                  abs=1e-9)
    with pytest.raises(CommandError, match="unknown export format 'keras'"):
        call_command("nas", "export", str(finished["id"]), "--format", "keras", "--output", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="has no trial 42"):
        call_command("nas", "export", str(finished["id"]), "--trial", "42", "--output", str(tmp_path / "x.zip"))
    with pytest.raises(CommandError, match="no folder"):
        call_command("nas", "export", str(finished["id"]), "--output", str(tmp_path / "missing" / "x.zip"))
    with pytest.raises(CommandError, match="no experiment with id 999"):
        call_command("nas", "export", "999")
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ with real workers
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_builds_the_export_and_the_page_streams_it(alice_client, capsys, celery_worker_factory):
    finished = submit(capsys)  # committed, and in the workers' artifact store
    best, pk = finished["best"], finished["id"]
    worker = celery_worker_factory(NAS_TORCH_THREADS="1")
    request, download = urls(pk, best["number"], "torch")
    alice_client.post(request)
    wait_for(lambda: Export.objects.filter(status="ready").exists(), 180, "the worker to build the export", worker.log)
    export = Export.objects.get()
    assert export.claimed_by.endswith(":export") and export.attempts == 1 and export.trained
    assert zip_accuracy(body(alice_client.get(download))) == pytest.approx(best["test_acc"], abs=1e-9)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_export_is_built_by_another_worker(alice_client, capsys, celery_worker_factory, settings):
    lease = 6
    settings.NAS_LEASE_SECONDS = lease
    finished = submit(capsys)
    best, pk = finished["best"], finished["id"]
    workers = [celery_worker_factory(NAS_LEASE_SECONDS=str(lease), NAS_SWEEP_SECONDS="1", NAS_TORCH_THREADS="1")
               for _ in range(2)]
    time.sleep(5)  # both connected, so either may take the message
    alice_client.post(urls(pk, best["number"], "onnx")[0])  # the slower format: the kill lands mid-build
    wait_for(lambda: Export.objects.filter(status="running").exists(), 120, "a worker to start the build",
             lambda: "\n---\n".join(w.log() for w in workers))
    first = Export.objects.get()
    victim = next(w for w in workers if os.getpgid(int(first.claimed_by.split(":")[1])) == w.proc.pid)
    victim.kill()
    killed_at = time.monotonic()
    survivor = next(w for w in workers if w is not victim)
    wait_for(lambda: Export.objects.filter(status="ready").exists(), 120, "the other worker to build it",
             survivor.log)
    print(f"built by the other worker {time.monotonic() - killed_at:.1f} s after the kill (lease {lease} s)")
    export = Export.objects.get()
    assert export.attempts == 2 and export.claimed_by != first.claimed_by
    assert onnx_accuracy(body(alice_client.get(urls(pk, best["number"], "onnx")[1]))) == pytest.approx(
        best["test_acc"], abs=1e-9)
    leftovers = [p.name for p in services.export_path(pk, best["number"], "onnx").parent.iterdir()]
    assert leftovers == [f"trial-{best['number']:05d}.onnx"]
