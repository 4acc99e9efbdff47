"""Datasets as team objects: built-in rows, uploads refused up front or accepted and decoded by a worker, pages,
the API, isolation between teams, and searches on an upload with a real worker."""
from __future__ import annotations

import io
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from nasjobs.datasets import DATASETS
from nasjobs.search import ExperimentSpec, SpecError
from tests.conftest import holder_of, wait_for
from tests.datafiles import BAD_CSVS, BAD_ZIPS, image_folder
from webapp.datasets import services
from webapp.datasets.models import Dataset
from webapp.experiments.models import Experiment
from webapp.experiments.services import experiment_create


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A private NAS_DATA_DIR, shared with any worker this test starts."""
    root = tmp_path / "data"
    monkeypatch.setenv("NAS_DATA_DIR", str(root))
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def shapes_zip() -> bytes:
    """Two classes a small CNN tells apart: dark and bright 8x8 images with a little noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    members = {}
    for cls, level in (("dark", 40), ("bright", 200)):
        for i in range(24):
            pixels = np.clip(rng.normal(level, 25, (8, 8)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            members[f"shapes/{cls}/{i}.png"] = buffer.getvalue()
    return zip_bytes(members)


def blobs_csv() -> bytes:
    from tests.datafiles import blobs

    x, y = blobs(30, 3, 4)
    names = ["setosa", "versicolor", "virginica"]
    lines = ["f1,f2,species,f3,f4"] + [f"{r[0]:.4f},{r[1]:.4f},{names[c]},{r[2]:.4f},{r[3]:.4f}" for r, c in zip(x, y)]
    return ("\n".join(lines) + "\n").encode()


def upload(user, name: str, content: bytes, kind: str = "imagefolder", filename: str = "", **kwargs):
    filename = filename or f"{name}.{'zip' if kind == 'imagefolder' else 'csv'}"
    return services.dataset_upload(user=user, team=kwargs.pop("team", None), name=name, kind=kind,
                                   upload=SimpleUploadedFile(filename, content), **kwargs)


# built-ins ----------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_builtin_is_a_row_every_team_sees_and_unavailable_ones_say_why(client, carol, bob, data_root,
                                                                              monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_DATA_ROOT", str(tmp_path / "empty"))
    names = set(Dataset.objects.filter(team__isnull=True).values_list("name", flat=True))
    assert names == set(DATASETS.names()) and {"digits", "mnist1d", "nb201-cifar10", "cifar10"} <= names
    shapes = dict(Dataset.objects.filter(team__isnull=True).values_list("name", "input_shape"))
    assert shapes["mnist"] == [1, 28, 28] and shapes["cifar10"] == [3, 32, 32] and shapes["mnist1d"] == [1, 40]
    assert Dataset.objects.get(name="cifar100").num_classes == 100
    for user in (carol, bob):
        client.force_login(user)
        page = client.get("/datasets/").content.decode()
        assert "digits" in page and "mnist1d" in page
    page = client.get("/datasets/?kind=image").content.decode()
    assert "not available here" in page and "NAS_DATA_DOWNLOAD" in page and "mnist1d" not in page
    assert page.index(">cifar10<") < page.index(">digits<") < page.index(">mnist<")  # built-ins by name
    cifar = Dataset.objects.get(name="cifar10", team=None)
    assert "not available here" in client.get(f"/datasets/{cifar.pk}/").content.decode()

    digits = Dataset.objects.get(name="digits", team=None)
    page = client.get(f"/datasets/{digits.pk}/").content.decode()
    assert 'id="preview"' in page and page.count("data:image/png;base64,") == 60  # 6 samples of 10 classes
    digits.refresh_from_db()
    assert digits.input_shape == [1, 8, 8] and digits.num_classes == 10
    assert sum(digits.split_sizes.values()) == 1797 and digits.split_sizes["test"] == sum(digits.class_counts["test"])
    mnist1d = Dataset.objects.get(name="mnist1d", team=None)
    page = client.get(f"/datasets/{mnist1d.pk}/").content.decode()
    assert page.count('class="signal"') == 20 and "polyline" in page
    mnist1d.refresh_from_db()
    assert mnist1d.input_shape == [1, 40] and mnist1d.split_sizes == {"train": 3200, "val": 800, "test": 1000}
    table = Dataset.objects.get(name="nb201-cifar10", team=None)
    assert "figures are looked up in the table" in client.get(f"/datasets/{table.pk}/").content.decode()


# uploads accepted -----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_image_zip_is_checked_at_once_then_decoded_once_and_reaches_the_engine(client, carol, data_root,
                                                                                   django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        dataset = upload(carol, "flowers", zip_bytes(image_folder({"rose": 4, "tulip": 5}, "flowers/")),
                         title="Two flowers")
    assert len(queued) == 1  # the decoding task, sent once the row is committed
    assert dataset.status == "processing" and dataset.team.name == "vision" and dataset.owner == carol
    assert dataset.input_shape == [1, 5, 6] and dataset.class_names == ["rose", "tulip"]
    assert tree(data_root) == ["incoming", f"incoming/{dataset.pk}.zip"]
    client.force_login(carol)
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert 'http-equiv="refresh"' in page and 'id="processing"' in page
    assert dataset.engine_name not in DATASETS  # not usable until it is ready

    assert services.dataset_process(dataset.pk) == "ready"
    assert services.dataset_process(dataset.pk) == "nothing to do"  # a second delivery
    dataset.refresh_from_db()
    assert dataset.status == "ready" and dataset.split_sizes == {"train": 5, "val": 2, "test": 2}
    assert dataset.class_counts["train"] == [2, 3]
    assert not (data_root / "incoming" / f"{dataset.pk}.zip").exists()
    loaded = DATASETS.get(dataset.engine_name)()
    assert loaded.kind == "image" and loaded.input_shape == (1, 5, 6) and loaded.class_names == ("rose", "tulip")
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert 'http-equiv="refresh"' not in page and page.count("data:image/png;base64,") == 5  # from train
    assert 'id="balance"' in page and "Two flowers" in page


@pytest.mark.django_db
def test_a_csv_with_text_labels_becomes_a_table_and_mixed_sizes_pass_with_a_resize(carol, data_root):
    table = upload(carol, "iris-like", blobs_csv(), kind="csv", label_column="species")
    assert table.kind == "table" and table.input_shape == [4] and table.class_names == ["setosa", "versicolor",
                                                                                          "virginica"]
    assert services.dataset_process(table.pk) == "ready"
    loaded = DATASETS.get(table.engine_name)()
    assert loaded.kind == "table" and len(loaded.train) + len(loaded.val) + len(loaded.test) == 90

    mixed = {**image_folder({"a": 3}, size=(8, 8)), **image_folder({"b": 3}, size=(10, 6))}
    with pytest.raises(SpecError, match="resize"):
        upload(carol, "mixed", zip_bytes(mixed))
    resized = upload(carol, "mixed", zip_bytes(mixed), resize=12)
    assert resized.input_shape == [1, 12, 12] and services.dataset_process(resized.pk) == "ready"


@pytest.mark.django_db
def test_one_worker_decodes_a_dataset_and_a_dead_workers_claim_runs_out(carol, data_root, settings, monkeypatch):
    dataset = upload(carol, "claimed", zip_bytes(image_folder({"a": 3, "b": 3})))
    assert services.dataset_claim(dataset.pk, "worker-1")  # ... which then dies mid-decode
    assert services.dataset_process(dataset.pk, "worker-2") == "nothing to do"  # a redelivery meanwhile
    dataset.refresh_from_db()
    assert dataset.status == "processing" and dataset.claimed_by == "worker-1" and dataset.incoming().exists()
    queued = []
    monkeypatch.setattr(services, "dataset_enqueue", queued.append)
    assert services.datasets_recover() == [dataset.pk] and services.datasets_sweep() == []  # its lease still runs
    silent = timezone.now() - timedelta(seconds=settings.NAS_LEASE_SECONDS + 1)
    Dataset.objects.filter(pk=dataset.pk).update(heartbeat_at=silent)  # its worker died: no more heartbeats
    assert services.datasets_sweep() == [dataset.pk] and services.datasets_sweep() == []
    assert queued == [dataset.pk, dataset.pk]  # once by the recovery, once by the sweep
    assert services.dataset_process(dataset.pk, "worker-2") == "ready"
    dataset.refresh_from_db()
    assert dataset.status == "ready" and dataset.claimed_by == "worker-2" and dataset.attempts == 2
    assert services.datasets_recover() == []


def test_a_dataset_deleted_while_it_decodes_leaves_no_files(carol, data_root, monkeypatch, tmp_path):
    dataset = upload(carol, "doomed", zip_bytes(image_folder({"a": 3, "b": 3})))
    decode = services.decode_image_zip

    def deleted_meanwhile(incoming, *args, **kwargs):
        opened = tmp_path / "open.zip"  # the upload as the worker holds it open: its unlinking changes nothing
        opened.write_bytes(incoming.read_bytes())
        services.dataset_delete(Dataset.objects.get(pk=dataset.pk), carol)  # its owner deletes it mid-decode
        return decode(opened, *args, **kwargs)  # ... which goes on to write its folder

    monkeypatch.setattr(services, "decode_image_zip", deleted_meanwhile)
    assert services.dataset_process(dataset.pk, "worker-1") == "deleted"
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert [p for p in tree(data_root) if p not in ("incoming", "uploads")] == []  # the folder written after it too


# uploads refused --------------------------------------------------------------------------------------------------
def bad_uploads(tmp_path: Path) -> dict[str, tuple[dict, str, str]]:
    """case -> (fields of the upload, the field at fault, a piece of its message)."""
    cases = {}
    for case, (make, message) in BAD_ZIPS.items():
        data = make(tmp_path / f"{case}.zip").read_bytes()
        cases[f"zip: {case}"] = ({"kind": "imagefolder", "content": data}, "file", message)
    for case, (content, message) in BAD_CSVS.items():
        cases[f"csv: {case}"] = ({"kind": "csv", "content": content, "label_column": "label"}, "file", message)
    good = zip_bytes(image_folder({"a": 3, "b": 3}))
    mixed = zip_bytes({**image_folder({"a": 3}, size=(8, 8)), **image_folder({"b": 3}, size=(10, 6))})
    cases.update({
        "mixed sizes, no resize": ({"kind": "imagefolder", "content": mixed}, "file", "choose a resize size"),
        "over NAS_MAX_UPLOAD_MB": ({"kind": "imagefolder", "content": good + bytes(1024**2)}, "file",
                                   "NAS_MAX_UPLOAD_MB"),
        "duplicate name in the team": ({"kind": "imagefolder", "content": good, "name": "taken"}, "name",
                                       "already has a dataset named 'taken'"),
        "a built-in's name": ({"kind": "imagefolder", "content": good, "name": "digits"}, "name", "built-in"),
        "a bad name": ({"kind": "imagefolder", "content": good, "name": "../x"}, "name", "letters, digits"),
        "csv without a label column named": ({"kind": "csv", "content": b"a,b\n1,2\n", "label_column": ""},
                                             "label_column", "name the CSV column"),
        "an unknown kind": ({"kind": "parquet", "content": good}, "kind", "parquet"),
        "a resize out of bounds": ({"kind": "imagefolder", "content": good, "resize": 100000}, "resize", ""),
        "an empty file": ({"kind": "imagefolder", "content": b""}, "file", "empty"),
    })
    return cases


CASES = sorted(bad_uploads(Path("/tmp")).keys())


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES)
def test_a_bad_upload_is_a_400_with_a_field_message_and_changes_nothing(case, carol, data_root, settings, tmp_path):
    settings.NAS_MAX_UPLOAD_MB = 1
    upload(carol, "taken", zip_bytes(image_folder({"a": 3, "b": 3})))
    fields, field, message = bad_uploads(tmp_path)[case]
    rows, files = list(Dataset.objects.values_list("pk", "name", "status")), tree(data_root)
    api = APIClient()
    api.force_authenticate(carol)
    content = fields.pop("content")
    body = {"name": "new-data", **fields, "file": SimpleUploadedFile("upload.bin", content)}
    response = api.post("/api/datasets/", body, format="multipart")
    assert response.status_code == 400, response.content
    assert field in response.json() and message in " ".join(response.json()[field]), response.json()
    assert list(Dataset.objects.values_list("pk", "name", "status")) == rows and tree(data_root) == files


@pytest.mark.django_db
def test_the_form_shows_the_message_next_to_its_field_and_creates_nothing(client, carol, data_root):
    client.force_login(carol)
    bad = zip_bytes(image_folder({"only": 5}))
    response = client.post("/datasets/new/", {"team": "vision", "name": "one", "kind": "imagefolder",
                                              "file": SimpleUploadedFile("one.zip", bad)})
    page = response.content.decode()
    assert response.status_code == 200
    assert "at least 2 classes" in page.split('id="field-file"')[1].split('class="field"')[0]  # beside its field
    assert not Dataset.objects.filter(team__isnull=False).exists() and tree(data_root) == []
    good = zip_bytes(image_folder({"a": 3, "b": 3}))
    response = client.post("/datasets/new/", {"team": "vision", "name": "two", "kind": "imagefolder",
                                              "file": SimpleUploadedFile("two.zip", good)})
    dataset = Dataset.objects.get(name="two")
    assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.pk}/"


@pytest.mark.django_db
def test_a_processing_failure_marks_it_failed_with_the_reason_and_removes_its_files(client, carol, data_root):
    # The headers pass the checks made in the request; the pixel data after them is cut off.
    import numpy as np
    from PIL import Image

    members = image_folder({"a": 3, "b": 3}, size=(40, 40))
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(noise, format="PNG")
    members["b/0.png"] = noise.getvalue()[:200]
    dataset = upload(carol, "truncated", zip_bytes(members))
    assert services.dataset_process(dataset.pk) == "failed"
    dataset.refresh_from_db()
    assert dataset.status == "failed" and "b/0.png" in dataset.error
    assert tree(data_root) == ["incoming"]  # neither the upload nor a partial folder is left
    client.force_login(carol)
    assert "Processing failed" in client.get(f"/datasets/{dataset.pk}/").content.decode()
    spec = ExperimentSpec(dataset=dataset.engine_name, space="chain_cnn", strategy="random", estimator="train", budget=1, epochs=1, seed=0)
    with pytest.raises(SpecError, match="failed to process"):
        experiment_create(user=carol, name="on a failed dataset", spec=spec)


# teams ------------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_another_teams_dataset_is_a_404_everywhere_and_cannot_be_searched(client, carol, bob, data_root):
    dataset = upload(carol, "private", zip_bytes(image_folder({"a": 3, "b": 3})))
    services.dataset_process(dataset.pk)
    client.force_login(bob)
    assert client.get(f"/datasets/{dataset.pk}/").status_code == 404
    assert client.post(f"/datasets/{dataset.pk}/delete/").status_code == 404
    assert "private" not in client.get("/datasets/").content.decode()
    assert dataset.engine_name not in client.get("/experiments/new/").content.decode()
    api = APIClient()
    api.force_authenticate(bob)
    assert api.get(f"/api/datasets/{dataset.pk}/").status_code == 404
    assert "private" not in [d["name"] for d in api.get("/api/datasets/").json()["results"]]
    spec = ExperimentSpec(dataset=dataset.engine_name, space="chain_cnn", strategy="random", estimator="train", budget=1, epochs=1, seed=0)
    with pytest.raises(SpecError, match="unknown dataset"):
        experiment_create(user=bob, name="borrowed", spec=spec)
    response = api.post("/api/experiments/", {"name": "borrowed", "dataset": dataset.engine_name,
                                              "space": "chain_cnn", "strategy": "random", "budget": 1}, format="json")
    assert response.status_code == 400 and "dataset" in response.json()
    assert not Experiment.objects.exists()

    api.force_authenticate(carol)
    detail = api.get(f"/api/datasets/{dataset.pk}/").json()
    assert detail["team"] == "vision" and detail["status"] == "ready" and detail["class_names"] == ["a", "b"]
    client.force_login(carol)
    form = client.get("/experiments/new/").content.decode()
    assert f'value="{dataset.engine_name}" data-kind="image"' in form and "private (team vision)" in form


@pytest.mark.django_db
def test_an_experiment_names_its_dataset_by_name_or_by_id_within_its_team(client, carol, bob, data_root):
    dataset = upload(carol, "mine", zip_bytes(image_folder({"a": 3, "b": 3})))
    services.dataset_process(dataset.pk)
    digits = Dataset.objects.get(name="digits", team=None)

    def spec(ref):
        return ExperimentSpec(dataset=ref, space="chain_cnn", strategy="random", estimator="train", budget=1,
                              epochs=1, seed=0)

    for ref, expected in (("mine", dataset.engine_name), (dataset.pk, dataset.engine_name),
                          (str(digits.pk), "digits"), ("digits", "digits")):
        assert experiment_create(user=carol, name=f"by {ref}", spec=spec(ref), enqueue=False).dataset == expected
    api = APIClient()
    api.force_authenticate(carol)
    response = api.post("/api/experiments/", {"name": "by id", "dataset": str(dataset.pk), "space": "chain_cnn",
                                              "strategy": "random", "budget": 1, "epochs": 1}, format="json")
    assert response.status_code == 201 and response.json()["dataset"] == dataset.engine_name
    client.force_login(carol)
    listing = client.get("/").content.decode()  # the list names the upload as the team knows it
    assert "<td>mine</td>" in listing and f'<option value="{dataset.engine_name}">mine</option>' in listing
    for ref in ("mine", dataset.pk):  # bob's team has no dataset of that name, and may not use carol's
        with pytest.raises(SpecError, match="unknown dataset"):
            experiment_create(user=bob, name="borrowed", spec=spec(ref), enqueue=False)


@pytest.mark.django_db
def test_only_owner_admin_or_staff_delete_and_never_while_an_experiment_uses_it(client, carol, alice, data_root,
                                                                                 django_user_model):
    from tests.conftest import _member

    dave = _member(django_user_model.objects.create_user("dave", password="dave-pass-123"), "vision")
    dataset = upload(carol, "shared", zip_bytes(image_folder({"a": 3, "b": 3})))
    services.dataset_process(dataset.pk)
    client.force_login(dave)
    client.post(f"/datasets/{dataset.pk}/delete/")
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    experiment_create(user=carol, name="uses it", enqueue=False, spec=ExperimentSpec(
        dataset=dataset.engine_name, space="chain_cnn", strategy="random", estimator="train", budget=1, epochs=1, seed=0))
    client.force_login(carol)
    client.post(f"/datasets/{dataset.pk}/delete/")
    assert Dataset.objects.filter(pk=dataset.pk).exists() and dataset.folder().exists()
    Experiment.objects.all().delete()
    client.post(f"/datasets/{dataset.pk}/delete/")
    assert not Dataset.objects.filter(pk=dataset.pk).exists() and not dataset.folder().exists()


def big_zip(images: int) -> bytes:
    """Images a worker takes about 0.1 s each to decode (4000x4000 pixels, resized), the same smooth JPEG in every
    member so that the zip stays small."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:4000, 0:4000]
    buffer = io.BytesIO()
    Image.fromarray(((x + y) // 16 % 256).astype(np.uint8)).save(buffer, format="JPEG", quality=75)
    return zip_bytes({f"{cls}/{i}.jpg": buffer.getvalue() for cls in ("a", "b") for i in range(images // 2)})


# with a real worker -------------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind, space", [("imagefolder", "chain_cnn"), ("csv", "mlp")])
def test_an_upload_through_the_api_is_decoded_by_a_worker_and_searched_to_the_end(kind, space, carol, data_root,
                                                                                  celery_worker_factory):
    worker = celery_worker_factory(NAS_DATA_DIR=str(data_root))
    api = APIClient()
    token = api.post("/api/token/", {"username": "carol", "password": "carol-pass-123"}, format="json").json()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token['token']}")
    content = shapes_zip() if kind == "imagefolder" else blobs_csv()
    response = api.post("/api/datasets/", {"name": f"mine-{kind}", "kind": kind, "label_column": "species",
                                           "file": SimpleUploadedFile(f"data.{kind}", content)}, format="multipart")
    assert response.status_code == 201, response.content
    pk = response.json()["id"]
    wait_for(lambda: api.get(f"/api/datasets/{pk}/").json()["status"] == "ready", 60, "the worker to decode it",
             worker.log)
    engine_name = api.get(f"/api/datasets/{pk}/").json()["engine_name"]
    response = api.post("/api/experiments/", {"name": f"search on {kind}", "dataset": engine_name, "space": space,
                                              "strategy": "random", "budget": 2, "epochs": 2}, format="json")
    assert response.status_code == 201, response.content
    experiment = Experiment.objects.get(pk=response.json()["id"])
    wait_for(lambda: Experiment.objects.get(pk=experiment.pk).status == "succeeded", 120,
             "the search to finish", worker.log)
    experiment.refresh_from_db()
    assert experiment.trials.count() == 2 and experiment.test_acc is not None
    assert experiment.best_val_acc > 0.6  # both sets are separable: well above chance (0.5 and 0.33)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_decoding_is_finished_by_another_worker(carol, data_root, celery_worker_factory):
    workers = [celery_worker_factory(NAS_DATA_DIR=str(data_root), NAS_SWEEP_SECONDS="1") for _ in range(2)]
    for w in workers:
        w.wait_connected()
    dataset = upload(carol, "big", big_zip(60), resize=8)  # about 6 s of decoding
    logs = lambda: "\n---\n".join(w.log() for w in workers)  # noqa: E731
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).claimed_by != "", 30, "a worker to start decoding", logs)
    first = Dataset.objects.get(pk=dataset.pk)
    time.sleep(1)
    victim = holder_of(workers, first.claimed_by)
    victim.kill()
    killed_at = time.monotonic()
    assert Dataset.objects.get(pk=dataset.pk).status == "processing" and not dataset.folder().exists()
    survivor = next(w for w in workers if w is not victim)
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).status != "processing", 60, "the other worker to decode it",
             survivor.log)
    print(f"decoded by the other worker {time.monotonic() - killed_at:.1f} s after the kill (lease 6 s)")
    dataset.refresh_from_db()
    assert dataset.status == "ready", dataset.error
    assert dataset.attempts == 2 and dataset.claimed_by != first.claimed_by
    assert dataset.split_sizes and sum(dataset.split_sizes.values()) == 60 and dataset.input_shape == [1, 8, 8]
    assert tree(data_root / "uploads") == [str(dataset.pk), *(f"{dataset.pk}/{f}" for f in
                                                             sorted(p.name for p in dataset.folder().iterdir()))]
    assert not dataset.incoming().exists()
