"""Admin: review experiments and their trials; approve, reject and cancel through the same services. An experiment
added or edited here is validated like the form's; its status, results and checkpoints are read-only."""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from nasjobs.search import ExperimentSpec, SpecError, validate_spec
from webapp.experiments import services
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, SearchEpoch, Trial


class TrialInline(admin.TabularInline):
    model = Trial
    extra = 0
    can_delete = False
    fields = ("number", "arch_display", "val_acc", "params", "flops", "train_seconds", "estimator")
    readonly_fields = fields
    ordering = ("-val_acc",)
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*Trial.BLOBS)


def _apply(modeladmin, request, queryset, change, verb: str) -> None:
    done = refused = 0
    for experiment in queryset:
        try:
            ok = change(experiment)
        except (PermissionDenied, SpecError) as exc:
            modeladmin.message_user(request, f"#{experiment.pk}: {exc}", messages.ERROR)
            continue
        done, refused = done + ok, refused + (not ok)
    modeladmin.message_user(request, f"{verb} {done} experiment(s)" + (
        f"; {refused} were not in a state that allows it" if refused else ""),
        messages.SUCCESS if done else messages.WARNING)


@admin.action(description="Approve the selected pending experiments")
def approve(modeladmin, request, queryset):
    _apply(modeladmin, request, queryset, lambda e: services.experiment_approve(e, request.user), "Approved")


@admin.action(description="Reject the selected pending experiments (asks for the reason)")
def reject(modeladmin, request, queryset):
    reason = request.POST.get("reason", "").strip()
    if "confirm" in request.POST and reason:
        _apply(modeladmin, request, queryset, lambda e: services.experiment_reject(e, request.user, reason),
               "Rejected")
        return None
    return TemplateResponse(request, "admin/experiments/reject.html", {
        **modeladmin.admin_site.each_context(request), "experiments": queryset, "title": "Reject experiments",
        "missing": "confirm" in request.POST, "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME})


@admin.action(description="Cancel the selected experiments")
def cancel(modeladmin, request, queryset):
    _apply(modeladmin, request, queryset, lambda e: services.experiment_cancel(e, request.user), "Cancelled")


SPEC_FIELDS = ("dataset", "space", "strategy", "estimator", "budget", "epochs", "seed", "options", "top_k",
               "patience", "max_seconds", "parallelism", "failure_policy", "max_failures",
               "bf16", "channels_last", "max_params", "max_macs")


class ExperimentAdminForm(forms.ModelForm):
    """The experiment's settings checked by the engine's own validation, as the form and `nas submit` are."""

    class Meta:
        model = Experiment
        fields = "__all__"

    def clean(self):
        data = super().clean()
        if self.errors or not set(SPEC_FIELDS) <= set(self.fields):
            return data
        spec = ExperimentSpec(**{f: data.get(f) for f in SPEC_FIELDS if f != "options"},
                              options=data.get("options") or {})
        try:
            team = data.get("team")
            self.spec = services.spec_for_team(spec, team) if team is not None else validate_spec(spec)
            self.cleaned_data["dataset"] = self.spec.dataset
        except SpecError as exc:
            field = exc.field.split(".", 1)[0]
            self.add_error(field if field in self.fields else "options" if "." in exc.field else None, exc.message)
        return data


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentAdminForm
    list_display = ("id", "name", "team", "status", "dataset", "space", "strategy", "estimator", "trials_done",
                    "budget", "cost", "best_val_acc", "test_acc", "created_by", "created_at")
    list_filter = ("status", "team", "dataset", "space", "strategy", "estimator", "created_by")
    list_select_related = ("team", "created_by")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    readonly_fields = ("status", "trials_done", "best_val_acc", "best_trial_number", "test_acc", "error",
                       "stop_reason", "started_at", "finished_at", "heartbeat_at", "claimed_by", "created_at",
                       "created_by", "cost", "review_reason", "reviewed_by", "reviewed_at", "review_comment",
                       "admitted_at", "traceback", "proposals", "skipped_proposals")
    actions = [approve, reject, cancel]
    inlines = [TrialInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("strategy_state")

    def get_readonly_fields(self, request, obj=None):
        # Its settings may change only before anything ran (a trial or a claim would no longer match them).
        started = obj is not None and (obj.trials_done or obj.started_at or obj.status not in (
            Experiment.Status.PENDING_REVIEW, Experiment.Status.QUEUED))
        return self.readonly_fields + (("team",) + SPEC_FIELDS if started else ())

    def save_model(self, request, obj, form, change):
        if change:
            if hasattr(form, "spec"):
                obj.options = form.spec.options
                obj.cost = services.experiment_cost(form.spec)
            super().save_model(request, obj, form, change)
            return
        # A new experiment is created by the service the form uses: team rules, review and quota, the audit log,
        # and the queue.
        created = services.experiment_create(user=request.user, name=obj.name, spec=form.spec, team=obj.team)
        obj.pk, obj.status = created.pk, created.status


@admin.register(ExperimentEvent)
class ExperimentEventAdmin(admin.ModelAdmin):
    """The audit log: read-only, filterable by action, team, actor and date."""

    list_display = ("created_at", "experiment_ref", "experiment_name", "team", "action", "actor_label", "detail")
    list_filter = ("action", "team", "actor")
    search_fields = ("experiment_name", "actor_label", "detail")
    date_hierarchy = "created_at"
    list_select_related = ("team",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Results a worker wrote: shown, never edited or added by hand (delete the experiment instead)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Trial)
class TrialAdmin(ReadOnlyAdmin):
    list_display = ("experiment", "number", "arch_display", "val_acc", "params", "flops", "train_seconds",
                    "estimator")
    list_filter = ("estimator", "experiment__space", "experiment__strategy")
    search_fields = ("arch_key", "experiment__name")
    list_select_related = ("experiment",)

    def get_queryset(self, request):
        # A list row shows none of them; a trial's own page reads them when it shows them.
        return super().get_queryset(request).defer(*Trial.BLOBS)


@admin.register(SearchEpoch)
class SearchEpochAdmin(ReadOnlyAdmin):
    list_display = ("experiment", "epoch", "train_loss", "val_loss", "val_acc", "param_free_fraction", "genotype")
    list_filter = ("stopped_early",)
    list_select_related = ("experiment",)


@admin.register(Calibration)
class CalibrationAdmin(ReadOnlyAdmin):
    list_display = ("experiment", "status", "k", "epochs", "reference", "kendall_tau", "spearman_rho", "created_at")
    list_filter = ("status",)
    list_select_related = ("experiment",)
