"""Experiments and their trials: the source of truth for every search."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils.functional import cached_property

from nasjobs.constraints import Limits
from nasjobs.estimators import Figure, estimator_figure
from nasjobs.planner import FAILURE_POLICIES
from nasjobs.records import DONE, FAILED, IN_FLIGHT, PENDING, RUNNING
from nasjobs.search import ExperimentSpec
from nasjobs.strategies import STRATEGIES


class Experiment(models.Model):
    class Status(models.TextChoices):
        PENDING_REVIEW = "pending_review", "pending review"
        REJECTED = "rejected"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    name = models.CharField(max_length=100)
    team = models.ForeignKey("teams.Team", on_delete=models.PROTECT, related_name="experiments")
    dataset = models.CharField(max_length=50)
    space = models.CharField(max_length=50)
    strategy = models.CharField(max_length=50)
    estimator = models.CharField(max_length=50)
    budget = models.PositiveIntegerField(help_text="Number of trials")
    epochs = models.PositiveIntegerField(help_text="Training epochs per trial")
    seed = models.PositiveIntegerField()
    top_k = models.PositiveIntegerField(default=5, help_text="Trials whose trained weights are kept")
    patience = models.PositiveIntegerField(default=0, help_text="Stop after this many trials without improvement "
                                                                "(0: never)")
    max_seconds = models.PositiveIntegerField(default=0, help_text="Wall-clock limit of the search, seconds "
                                                                   "(0: none)")
    options = models.JSONField(default=dict, blank=True, help_text="Validated options per component")
    parallelism = models.PositiveIntegerField(default=1, help_text="Trials in flight at once, across all workers")
    failure_policy = models.CharField(max_length=10, default="worst", choices=[(k, f"{k}: {v}") for k, v in
                                                                               FAILURE_POLICIES.items()],
                                      help_text="What the strategy is told of a failed trial")
    max_failures = models.PositiveIntegerField(default=3, help_text="The experiment fails after this many failed "
                                                                    "trials in a row")
    bf16 = models.BooleanField(default=False, help_text="Train under bfloat16 autocast (CUDA workers only)")
    channels_last = models.BooleanField(default=False, help_text="Train with channels-last memory")
    max_params = models.PositiveBigIntegerField(null=True, blank=True,
                                                help_text="Deployment limit: networks with more parameters are "
                                                          "skipped, never trained (empty: no limit)")
    max_macs = models.PositiveBigIntegerField(null=True, blank=True,
                                              help_text="Deployment limit on multiply-adds for one input (empty: "
                                                        "no limit)")

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cost = models.PositiveBigIntegerField(default=0, help_text="Estimated compute in trial-epochs (trials x epochs)")
    review_reason = models.CharField(max_length=300, blank=True, help_text="Why it needs a review")
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="reviewed_experiments")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_comment = models.TextField(blank=True)
    admitted_at = models.DateTimeField(null=True, blank=True, help_text="When it was allowed to run (counts "
                                                                         "against that month's quota)")
    trials_done = models.PositiveIntegerField(default=0, help_text="Evaluations done (re-evaluations included)")
    proposals = models.PositiveIntegerField(default=0, help_text="Proposals the strategy made, repeats and skipped "
                                                                 "ones included")
    skipped_proposals = models.PositiveIntegerField(default=0, help_text="Proposals skipped without training: "
                                                                         "over the deployment limits")
    best_val_acc = models.FloatField(null=True, blank=True)
    best_trial_number = models.PositiveIntegerField(null=True, blank=True)
    test_acc = models.FloatField(null=True, blank=True, help_text="Best trial's accuracy on the test split")
    error = models.TextField(blank=True, help_text="What went wrong, in one line")
    traceback = models.TextField(blank=True, help_text="Shown to the team's admins and staff only")

    class StopReason(models.TextChoices):
        BUDGET = "budget", "its trial budget"
        PATIENCE = "patience", "patience (no improvement)"
        TIME_LIMIT = "time_limit", "its time limit"
        EXHAUSTED = "exhausted", "no new architectures left"

    stop_reason = models.CharField(max_length=20, blank=True, choices=StopReason.choices)
    strategy_state = models.JSONField(null=True, blank=True, editable=False)
    plan_version = models.PositiveIntegerField(default=0, editable=False,
                                               help_text="Planning steps taken; a worker's cached planner is current "
                                                         "while it matches")
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    seconds_before = models.FloatField(default=0.0, editable=False, help_text="Search time of earlier runs")
    active_since = models.DateTimeField(null=True, blank=True, editable=False,
                                        help_text="When this run of the search started")

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="experiments")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "-created_at"], name="experiment_team_newest")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_differentiable(self) -> bool:
        """Whether its strategy searches by gradient (one supernet, one trial); False for an unknown strategy."""
        return self.strategy in STRATEGIES and getattr(STRATEGIES.get(self.strategy), "differentiable", False)

    @property
    def progress_percent(self) -> int:
        """Trials done of the budget; for a differentiable search (one trial at its end), search epochs done of
        its epochs, up to 99% until the derived architecture's trial is recorded."""
        if self.trials_done == 0 and self.is_differentiable:
            return min(99, round(100 * self.search_epochs.count() / self.epochs)) if self.epochs else 0
        return round(100 * self.trials_done / self.budget) if self.budget else 0

    @cached_property
    def figure(self) -> Figure:
        """What its trials' figure is: an accuracy or a named score (`Estimator.figure`); worked out once per
        instance, since a page formats every leaderboard row with it."""
        options = None if "options" in self.get_deferred_fields() else (self.options or {}).get("estimator")
        return estimator_figure(self.estimator, options)

    @property
    def limits(self) -> Limits:
        """Its deployment limits (`nasjobs.constraints`); `limits.active` is False without any."""
        return Limits(self.max_params, self.max_macs)

    def spec(self) -> ExperimentSpec:
        return ExperimentSpec(dataset=self.dataset, space=self.space, strategy=self.strategy,
                              estimator=self.estimator, budget=self.budget, epochs=self.epochs, seed=self.seed,
                              options=self.options, top_k=self.top_k, patience=self.patience,
                              max_seconds=self.max_seconds, parallelism=self.parallelism,
                              failure_policy=self.failure_policy, max_failures=self.max_failures,
                              bf16=self.bf16, channels_last=self.channels_last, max_params=self.max_params,
                              max_macs=self.max_macs)

    def search_seconds(self, now: datetime) -> float:
        """Search time so far, summed over its runs."""
        running = (now - self.active_since).total_seconds() if self.active_since else 0.0
        return self.seconds_before + max(0.0, running)

    def clock_stopped(self, now: datetime) -> dict[str, Any]:
        """The fields that stop this run's clock: its search time so far added to the earlier runs'."""
        return {"seconds_before": self.search_seconds(now), "active_since": None}


# The search's own trials (what `Trial.objects` holds), and among them those with a figure (`Trial.WITH_FIGURE`):
# the leaderboard's indexes hold only these rows, so a trial waiting for a worker, being claimed or sending its
# heartbeat (most of a trial row's writes) changes none of them.
SEARCH_TRIALS = models.Q(kind="search")
FIGURED = models.Q(status=DONE) | ~models.Q(job="")


class SearchTrials(models.Manager):
    """The trials of the search itself: what the strategy was told, the budget spent, the leaderboard. A retraining
    (`Trial.Kind.RETRAIN`) is left out, so no query of the search can count one by mistake; `Trial.everything`
    sees both."""

    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(SEARCH_TRIALS)


class Trial(models.Model):
    class Status(models.TextChoices):
        PENDING = PENDING
        RUNNING = RUNNING
        DONE = DONE
        FAILED = FAILED

    class Kind(models.TextChoices):
        SEARCH = "search", "search"
        RETRAIN = "retrain", "retraining"

    # Trials that have a figure: evaluated, or evaluated and now in flight for more (once more, or a higher rung).
    # Pending, running and failed first evaluations have none (their val_acc is a placeholder 0).
    WITH_FIGURE = FIGURED
    # The columns a list never shows: per-epoch curves, the log tail and the traceback (`.defer(*Trial.BLOBS)`).
    BLOBS = ("curve", "loss_curve", "log_tail", "traceback")
    # Whether training left its figure no better than guessing the most common class (the estimator's mark,
    # `Estimator.mark_chance_level`), as a boolean the database reads out of the fidelity: a list annotates its
    # rows with it (`chance_level`) and so shows the mark without loading any row's fidelity.
    CHANCE_LEVEL = models.ExpressionWrapper(models.Q(fidelity__chance_level=True), output_field=models.BooleanField())

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="trials")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SEARCH,
                            help_text="A trial of the search, or a retraining of its best architecture from scratch "
                                      "(never told to the strategy, spends no budget)")
    source_number = models.PositiveIntegerField(null=True, blank=True,
                                                help_text="A retraining: the number of the search trial it retrains")
    test_acc = models.FloatField(null=True, blank=True, help_text="A retraining: accuracy on the test split")
    number = models.PositiveIntegerField(help_text="Order in which the strategy proposed it, from 0 (a "
                                                   "retraining: its own count, from 0)")
    arch_key = models.TextField(help_text="Canonical architecture string")
    arch_display = models.TextField()
    val_acc = models.FloatField(help_text="Validation accuracy, fraction")
    params = models.BigIntegerField()
    flops = models.BigIntegerField(help_text="Multiply-adds for one input")
    train_seconds = models.FloatField()
    estimator = models.CharField(max_length=50)
    fidelity = models.JSONField(default=dict, blank=True)
    curve = models.JSONField(default=list, blank=True, help_text="Validation accuracy after each epoch")
    loss_curve = models.JSONField(default=list, blank=True, help_text="Mean training loss of each epoch of the "
                                                                      "curve (null where unknown)")
    log_tail = models.TextField(blank=True, help_text="The last lines its worker logged while evaluating it")
    weights_path = models.CharField(max_length=500, blank=True)
    search_seconds = models.FloatField(default=0.0, help_text="Search time when the trial finished")
    proposals = models.PositiveIntegerField(default=0, help_text="Proposals so far, repeats included")
    distance_to_incumbent = models.PositiveIntegerField(null=True, blank=True,
                                                        help_text="Edit distance to the best known when proposed")
    evaluations = models.JSONField(default=list, blank=True,
                                   help_text="Every observed value; val_acc is their mean")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    job = models.CharField(max_length=10, blank=True, help_text="While in flight: empty for its first evaluation, "
                                                                "'again' for one more, 'rung' for its next rung")
    told = models.PositiveIntegerField(null=True, blank=True, help_text="Place in the order results were told to "
                                                                        "the strategy")
    claimed_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker took it")
    resumed_from_epoch = models.PositiveIntegerField(
        null=True, blank=True, help_text="Its latest evaluation continued the trial's checkpoint at this epoch (an "
                                         "earlier worker was lost or handed it back); empty: trained from the start")
    host = models.CharField(max_length=200, blank=True, help_text="Machine that evaluated it")
    device = models.CharField(max_length=200, blank=True, help_text="Device it was evaluated on")
    error = models.TextField(blank=True, help_text="Why it failed, in one line")
    traceback = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    epochs_trained = models.PositiveIntegerField(null=True, blank=True,
                                                 help_text="Epochs behind its figure (its fidelity)")
    seq = models.PositiveBigIntegerField(default=0, help_text="The planning step that last gave it a figure: the "
                                                              "cursor of the page's live updates")

    objects = SearchTrials()
    everything = models.Manager()

    class Meta:
        ordering = ["experiment", "number"]
        # The leaderboard's orders (every sortable column, per experiment) each hold what its filters read
        # (WITH_FIGURE's status and job, the fidelity, kept weights), so a page, its count and the ranks are read
        # from an index, not from rows that carry curves; the progress index serves the counts, the exploration
        # figures and the trials in flight or failed; the seq index the live updates' cursor.
        indexes = [models.Index(fields=["experiment", "status", "number", "job", "proposals",
                                        "distance_to_incumbent", "kind"], name="trial_progress"),
                   models.Index(fields=["status", "heartbeat_at"], name="trial_status_heartbeat"),
                   models.Index(fields=["experiment", "seq"], name="trial_experiment_seq"),
                   *(models.Index(fields=["experiment", *order, "number", "status", "job", "epochs_trained",
                                          "weights_path", "kind"], name=f"trial_by_{name}",
                                 condition=SEARCH_TRIALS & FIGURED)
                     for name, order in (("figure", ["-val_acc"]), ("params", ["params"]), ("macs", ["flops"]),
                                         ("training", ["train_seconds"])))]
        constraints = [
            # A retraining repeats its source's architecture, and counts its own numbers.
            models.UniqueConstraint(fields=["experiment", "arch_key"], condition=models.Q(kind="search"),
                                    name="unique_arch_per_experiment"),
            models.UniqueConstraint(fields=["experiment", "number"], condition=models.Q(kind="search"),
                                    name="unique_number_per_experiment"),
            models.UniqueConstraint(fields=["experiment", "number"], condition=models.Q(kind="retrain"),
                                    name="unique_retrain_number_per_experiment"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}/{self.number} {self.arch_key}"

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    @property
    def has_figure(self) -> bool:
        return self.status == DONE or bool(self.job)

    @property
    def is_retrain(self) -> bool:
        return self.kind == self.Kind.RETRAIN

    @property
    def at_chance_level(self) -> bool:
        """Whether its figure is no better than guessing the most common class, so says little: a list row's
        `chance_level` annotation (`CHANCE_LEVEL`) where it has one, else the mark in its fidelity."""
        if "chance_level" in self.__dict__:
            return bool(self.__dict__["chance_level"])
        return bool((self.fidelity or {}).get("chance_level"))


class SearchEpoch(models.Model):
    """One epoch of a differentiable (DARTS) search: the supernet's figures and the architecture weights."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="search_epochs")
    epoch = models.PositiveIntegerField()
    train_loss = models.FloatField()
    train_acc = models.FloatField()
    val_loss = models.FloatField()
    val_acc = models.FloatField()
    alphas = models.JSONField(help_text="Softmaxed architecture weights per cell type: rows edges, columns ops")
    ops = models.JSONField(default=list)
    edges = models.JSONField(default=dict)
    genotype = models.TextField(help_text="Architecture derived after this epoch")
    param_free_fraction = models.FloatField(help_text="Share of parameter-free operations in the derived cells")
    stopped_early = models.BooleanField(default=False)
    seconds = models.FloatField(default=0.0)

    class Meta:
        ordering = ["experiment", "epoch"]
        constraints = [models.UniqueConstraint(fields=["experiment", "epoch"], name="unique_epoch_per_experiment")]

    def __str__(self) -> str:
        return f"{self.experiment_id}/epoch {self.epoch}"


class Calibration(models.Model):
    """How far an experiment's estimator can be trusted: its figures rank-correlated with full results. Run by a
    worker under a lease like an export's (`services.CALIBRATIONS`), each candidate's reference kept as it is
    measured, so a killed worker's calibration is taken over and continues from there."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="calibrations")
    k = models.PositiveIntegerField(help_text="Candidates measured in full")
    epochs = models.PositiveIntegerField(help_text="Epochs of the full training used as reference")
    seed = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reference = models.CharField(max_length=100, blank=True)
    kendall_tau = models.FloatField(null=True, blank=True)
    spearman_rho = models.FloatField(null=True, blank=True)
    pairs = models.JSONField(default=list, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker took it")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When a worker last took it")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="calibration_status_heartbeat")]

    def __str__(self) -> str:
        return f"calibration {self.pk} of {self.experiment_id}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ExperimentEvent(models.Model):
    """The audit log: every state change of an experiment, with who made it and when. Kept after deletion."""

    class Action(models.TextChoices):
        CREATED = "created"
        APPROVED = "approved"
        REJECTED = "rejected"
        STARTED = "started"
        RESUMED = "resumed"
        CANCELLED = "cancelled"
        FINISHED = "finished"
        FAILED = "failed"
        DELETED = "deleted"
        EXTENDED = "extended"
        RETRAIN = "retrain", "retraining queued"
        RETRAINED = "retrained"

    experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="events")
    experiment_ref = models.PositiveBigIntegerField(db_index=True, help_text="The experiment's id, kept after "
                                                                             "deletion")
    experiment_name = models.CharField(max_length=100)
    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=20, choices=Action.choices, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="experiment_events")
    actor_label = models.CharField(max_length=200, blank=True, help_text="The user or the worker")
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.experiment_ref} {self.action} by {self.actor_label or '-'}"


class Worker(models.Model):
    """A worker process as last seen by its own heartbeat: what it runs, where, and when it last said so."""

    name = models.CharField(max_length=200, unique=True, help_text="host:pid")
    host = models.CharField(max_length=200)
    device = models.CharField(max_length=200, blank=True)
    trial = models.ForeignKey(Trial, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-seen_at"]

    def __str__(self) -> str:
        return self.name


class Export(models.Model):
    """A trial written as a file in one format (`nasjobs.export.EXPORT_FORMATS`): requested once, built by a
    worker under a lease like a trial's, kept in the artifact store beside the trial's weights
    (`ArtifactStore.export_path`), and streamed from there to every later download."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        READY = "ready"
        FAILED = "failed"

    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=20)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trained = models.BooleanField(default=False, help_text="Built with the trial's kept weights")
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes of the built file")
    error = models.TextField(blank=True, help_text="Why the last build failed, in one line")
    traceback = models.TextField(blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker took it")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    class Meta:
        ordering = ["trial", "format"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="export_status_heartbeat")]
        constraints = [models.UniqueConstraint(fields=["trial", "format"], name="unique_export_per_trial_format")]

    def __str__(self) -> str:
        return f"{self.trial_id} as {self.format} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE
