"""Datasets: upload (every check made in the request), processing by a worker, the built-ins' rows, and the
adapter through which the engine finds a stored dataset's folder."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from nasjobs.datasets import DATASETS, builtin_folder
from nasjobs.search import SpecError
from nasjobs.uploads import DecodeError, DecodeLimits, dataset_preview, decode_csv, decode_image_zip, parse_csv, \
    scan_image_zip
from webapp.datasets.models import DATASET_NAME, Dataset
from webapp.datasets.selectors import upload_pk
from webapp.experiments.leases import Lease, LostClaim, RowJobs, heartbeat_seconds
from webapp.experiments.services import submission_team

log = logging.getLogger(__name__)

UPLOAD_KINDS = {"imagefolder": Dataset.Source.IMAGEFOLDER, "csv": Dataset.Source.CSV}
RESIZE_LIMITS = (4, 512)  # pixels per side a resize may ask for


def dataset_folder_for_engine(name: str) -> Path | None:
    """The resolver the engine's registry asks for a name it does not know: `upload-<pk>` of a ready upload."""
    pk = upload_pk(name)
    if pk is None:
        return None
    dataset = Dataset.objects.filter(pk=pk, team__isnull=False, status=Dataset.Status.READY).first()
    return dataset.folder() if dataset is not None and dataset.folder().exists() else None


def _limits() -> DecodeLimits:
    return DecodeLimits(max_total_bytes=settings.NAS_MAX_DECODED_MB * 1024**2)


def _validate_name(name: str, team) -> str:
    name = (name or "").strip()
    if not name:
        raise SpecError("name", "give the dataset a name")
    try:
        DATASET_NAME(name)
    except ValidationError as exc:
        raise SpecError("name", f"{name!r}: {exc.messages[0]}") from None
    if name in DATASETS.names():
        raise SpecError("name", f"{name!r} is a built-in dataset; choose another name")
    if Dataset.objects.filter(team=team, name=name).exists():
        raise SpecError("name", f"team {team.name} already has a dataset named {name!r}")
    return name


def _validate_resize(resize: Any) -> tuple[int, int] | None:
    if resize in (None, "", 0, [], ()):
        return None
    low, high = RESIZE_LIMITS
    try:
        height, width = (int(resize), int(resize)) if isinstance(resize, (int, str)) else map(int, resize)
    except (TypeError, ValueError):
        raise SpecError("resize", "a size in pixels, e.g. 32 (or height and width)") from None
    if not (low <= height <= high and low <= width <= high):
        raise SpecError("resize", f"each side must be from {low} to {high} pixels")
    return height, width


def _store_temporarily(upload: Any, folder: Path) -> Path:
    """An uploaded file (Django's, or a path) copied into a private temporary folder outside NAS_DATA_DIR."""
    target = folder / "upload"
    if isinstance(upload, (str, Path)):
        shutil.copyfile(upload, target)
        return target
    with open(target, "wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return target


def dataset_upload(*, user: AbstractBaseUser | None, team: Any, name: str, kind: str, upload: Any,
                   label_column: str = "", resize: Any = None, title: str = "") -> Dataset:
    """Accept an upload for a team and queue its decoding; every check that can refuse it is made here, so a bad
    upload raises SpecError(field, message) and leaves no row and no file under NAS_DATA_DIR.

    `kind` is `imagefolder` (a zip, one folder per class) or `csv` (a label column named `label_column`);
    `upload` is an UploadedFile or a path."""
    user = user if user is not None and user.is_authenticated else None
    team = submission_team(user, team)
    if kind not in UPLOAD_KINDS:
        raise SpecError("kind", f"unknown kind {kind!r}; choose imagefolder (a zip of class folders) or csv")
    name = _validate_name(name, team)
    options: dict[str, Any] = {}
    size = None
    if kind == "csv":
        label_column = (label_column or "").strip()
        if not label_column:
            raise SpecError("label_column", "name the CSV column that holds the labels")
        options["label_column"] = label_column
    else:
        size = _validate_resize(resize)
        options["resize"] = list(size) if size else None
    if upload is None:
        raise SpecError("file", "choose a file to upload")
    size_bytes = Path(upload).stat().st_size if isinstance(upload, (str, Path)) else upload.size
    max_bytes = settings.NAS_MAX_UPLOAD_MB * 1024**2
    if size_bytes > max_bytes:
        raise SpecError("file", f"the file is {size_bytes / 1024**2:.1f} MiB; at most {settings.NAS_MAX_UPLOAD_MB} "
                                "MiB is accepted (NAS_MAX_UPLOAD_MB)")
    if size_bytes == 0:
        raise SpecError("file", "the file is empty")
    upload_name = Path(str(getattr(upload, "name", upload))).name[:255]
    scratch = Path(tempfile.mkdtemp(prefix="nasboard-upload-"))
    try:
        path = _store_temporarily(upload, scratch)
        try:
            if kind == "csv":
                parsed = parse_csv(path, label=label_column, limits=_limits(), max_bytes=max_bytes)
                shape, classes = [parsed.x.shape[1]], parsed.class_names
                data_kind = Dataset.Kind.TABLE
            else:
                plan = scan_image_zip(path, resize=size, limits=_limits())
                shape, classes = list(plan.shape), list(plan.class_names)
                data_kind = Dataset.Kind.IMAGE
        except DecodeError as exc:
            raise SpecError("file", str(exc)) from None
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(
                    team=team, owner=user, name=name, title=(title or "").strip()[:200], kind=data_kind,
                    source=UPLOAD_KINDS[kind], options=options, upload_name=upload_name, upload_bytes=size_bytes,
                    input_shape=shape, num_classes=len(classes), class_names=classes)
                incoming = dataset.incoming()
                try:
                    incoming.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, incoming)
                except BaseException:
                    incoming.unlink(missing_ok=True)
                    raise
                transaction.on_commit(lambda: dataset_enqueue(dataset.pk))
        except IntegrityError:  # the same name, created meanwhile by another request
            raise SpecError("name", f"team {team.name} already has a dataset named {name!r}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dataset


def dataset_enqueue(dataset_id: int) -> None:
    from webapp.datasets.tasks import process_dataset

    try:
        process_dataset.apply_async((dataset_id,), queue=settings.NAS_CPU_QUEUE)
    except Exception:  # the broker is down: a worker queues it again when it connects (datasets_recover)
        log.exception("could not queue dataset %s; it is queued again when a worker connects", dataset_id)


# A dataset is `processing` from its upload until it is decoded: with no worker while it waits in the queue, then
# claimed by the worker that decodes it, which renews its heartbeat until it is done.
DECODING = RowJobs(Dataset, Dataset.Status.PROCESSING, Dataset.Status.PROCESSING, lambda pk: dataset_enqueue(pk),
                   started="claimed_at")
dataset_claim = DECODING.claim
datasets_recover = DECODING.recover
datasets_sweep = DECODING.sweep


def _stats(folder: Path) -> dict[str, Any]:
    preview = dataset_preview(folder, samples_per_class=0)
    counts = preview["counts"]
    return {"input_shape": preview["input_shape"], "class_names": preview["class_names"],
            "num_classes": len(preview["class_names"]), "class_counts": counts,
            "split_sizes": {split: sum(c) for split, c in counts.items()}}


def dataset_process(dataset_id: int, worker: str = "inline") -> str:
    """Decode an accepted upload into its folder once, fill in its figures and mark it ready; on any failure mark
    it failed with the reason and remove its files. Idempotent: a second delivery finds it claimed or done.

    It runs under a lease like every job (`DECODING`): a killed worker's decoding is taken over once its heartbeat
    is older than NAS_LEASE_SECONDS, a stopping one hands it back, and one deleted meanwhile stops at the next image
    and leaves no files behind."""
    if not dataset_claim(dataset_id, worker):
        return "nothing to do"
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:  # deleted between the claim and now
        return "deleted"
    folder, incoming = dataset.folder(), dataset.incoming()
    mine = DECODING.mine(dataset_id, worker)
    try:
        with Lease(lambda: DECODING.heartbeat(dataset_id, worker), heartbeat_seconds()) as lease:
            if not folder.exists():  # a folder is whole or absent (`save_decoded`): one there is a finished decode
                if not incoming.exists():
                    raise DecodeError("the uploaded file is gone from NAS_DATA_DIR/incoming; upload it again")
                if dataset.source == Dataset.Source.CSV:
                    decode_csv(incoming, folder, label=dataset.options["label_column"], limits=_limits(),
                               title=dataset.title, max_bytes=settings.NAS_MAX_UPLOAD_MB * 1024**2, check=lease.check)
                else:
                    resize = dataset.options.get("resize")
                    decode_image_zip(incoming, folder, resize=tuple(resize) if resize else None, limits=_limits(),
                                     title=dataset.title, check=lease.check)
            stats = _stats(folder)
    except SystemExit:  # the pool process told to stop: the next worker decodes it
        DECODING.hand_back(dataset_id, worker)
        raise
    except LostClaim:
        log.info("dataset %s: decoding stopped, its claim is lost", dataset_id)
        return _decoding_orphaned(dataset_id, folder)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong is the dataset's failure, told to its owner
        reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
        log.warning("dataset %s failed: %s", dataset_id, reason)
        if not mine.update(status=Dataset.Status.FAILED, error=reason[:2000]):  # only while the claim is ours
            return _decoding_orphaned(dataset_id, folder)
        shutil.rmtree(folder, ignore_errors=True)
        incoming.unlink(missing_ok=True)
        return "failed"
    if not mine.update(status=Dataset.Status.READY, ready_at=timezone.now(), error="", **stats):
        return _decoding_orphaned(dataset_id, folder)
    incoming.unlink(missing_ok=True)
    return "ready"


def _decoding_orphaned(dataset_id: int, folder: Path) -> str:
    """A decoding that lost its claim: when its dataset was deleted meanwhile, remove the folder it may have
    written after the delete removed its files; else another worker owns the dataset and its folder."""
    if Dataset.objects.filter(pk=dataset_id).exists():
        return "handed back"
    shutil.rmtree(folder, ignore_errors=True)
    return "deleted"


def dataset_delete(dataset: Dataset, user: AbstractBaseUser) -> None:
    """Remove an upload and its files: its owner, an admin of its team or staff, and only while no experiment
    uses it (an experiment's resume and export need its data)."""
    from webapp.experiments.models import Experiment
    from webapp.teams.selectors import is_team_admin

    if dataset.is_builtin:
        raise PermissionDenied("a built-in dataset cannot be deleted")
    if not (user.is_staff or dataset.owner_id == user.pk or is_team_admin(user, dataset.team_id)):
        raise PermissionDenied("only its owner, a team admin or staff may delete it")
    used = Experiment.objects.filter(dataset=dataset.engine_name).count()
    if used:
        raise SpecError("dataset", f"{used} experiment(s) use {dataset.name!r}; delete them first")
    folder, incoming = dataset.folder(), dataset.incoming()
    dataset.delete()
    shutil.rmtree(folder, ignore_errors=True)
    incoming.unlink(missing_ok=True)


def datasets_sync_builtin() -> None:
    """A row for every built-in the engine registers (created after each migrate), so built-ins are listed,
    previewed and linked to their experiments like uploads."""
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        kind = getattr(entry, "kind", "image")
        defaults: dict[str, Any] = {"title": getattr(entry, "title", name), "kind": kind,
                                    "source": Dataset.Source.BUILTIN, "status": Dataset.Status.READY,
                                    "input_shape": list(getattr(entry, "input_shape", ())),
                                    "num_classes": getattr(entry, "num_classes", 0)}
        Dataset.objects.update_or_create(name=name, team=None, defaults=defaults)


def builtin_stats_fill(dataset: Dataset) -> Dataset:
    """A generated built-in's figures, computed from its samples the first time its page is shown."""
    if not dataset.is_builtin or dataset.class_counts:
        return dataset
    folder = builtin_folder(dataset.name)
    if folder is None:
        return dataset
    stats = _stats(folder)
    Dataset.objects.filter(pk=dataset.pk).update(**stats)
    for key, value in stats.items():
        setattr(dataset, key, value)
    return dataset
