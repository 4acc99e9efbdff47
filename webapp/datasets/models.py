"""Datasets: the built-ins (no team, visible to everyone) and each team's uploads, decoded once under
NAS_DATA_DIR."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from nasjobs.datasets import data_dir

DATASET_NAME = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$",
                              "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 60)")
UPLOAD_PREFIX = "upload-"  # the engine knows an upload as upload-<pk>: unique across teams, never renamed


class Dataset(models.Model):
    class Kind(models.TextChoices):
        IMAGE = "image"
        SIGNAL = "signal"
        TABLE = "table"
        NB201 = "nb201", "NAS-Bench-201 table"

    class Source(models.TextChoices):
        BUILTIN = "builtin", "built-in"
        IMAGEFOLDER = "imagefolder", "image folder zip"
        CSV = "csv", "CSV table"

    class Status(models.TextChoices):
        PROCESSING = "processing"
        READY = "ready"
        FAILED = "failed"

    team = models.ForeignKey("teams.Team", null=True, blank=True, on_delete=models.PROTECT,
                             related_name="datasets", help_text="Empty for a built-in, which every team sees")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="datasets")
    name = models.CharField(max_length=60, validators=[DATASET_NAME])
    title = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    source = models.CharField(max_length=12, choices=Source.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROCESSING)
    error = models.TextField(blank=True, help_text="Why processing failed")
    options = models.JSONField(default=dict, blank=True, help_text="How the upload is decoded (label column, "
                                                                    "resize)")
    upload_name = models.CharField(max_length=255, blank=True)
    upload_bytes = models.PositiveBigIntegerField(default=0)
    input_shape = models.JSONField(default=list, blank=True)
    num_classes = models.PositiveIntegerField(default=0)
    class_names = models.JSONField(default=list, blank=True)
    split_sizes = models.JSONField(default=dict, blank=True, help_text="Samples in train, val and test")
    class_counts = models.JSONField(default=dict, blank=True, help_text="Samples per class in each split")
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True, help_text="The worker decoding it")
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker last took it")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Renewed by its worker while it decodes")
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker took it")

    class Meta:
        ordering = ["team_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="dataset_name_unique_in_team"),
            models.UniqueConstraint(fields=["name"], condition=Q(team__isnull=True), name="builtin_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name if self.team_id is None else f"{self.name} ({self.team})"

    @property
    def is_builtin(self) -> bool:
        return self.team_id is None

    @property
    def engine_name(self) -> str:
        """The name experiments store and the engine's registry resolves."""
        return self.name if self.is_builtin else f"{UPLOAD_PREFIX}{self.pk}"

    def folder(self) -> Path:
        return data_dir() / "uploads" / str(self.pk)

    def incoming(self) -> Path:
        """Where an accepted upload waits for its worker (on the shared volume, so any worker can decode it)."""
        return data_dir() / "incoming" / f"{self.pk}.{'zip' if self.source == self.Source.IMAGEFOLDER else 'csv'}"
