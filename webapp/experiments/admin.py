"""Admin: review experiments and their trials; approve, reject and cancel through the same services."""
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from nasjobs.search import SpecError
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


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "team", "status", "dataset", "space", "strategy", "estimator", "trials_done",
                    "budget", "cost", "best_val_acc", "test_acc", "created_by", "created_at")
    list_filter = ("status", "team", "dataset", "space", "strategy", "estimator", "created_by")
    list_select_related = ("team", "created_by")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    readonly_fields = ("trials_done", "best_val_acc", "best_trial_number", "test_acc", "started_at", "finished_at",
                       "heartbeat_at", "claimed_by", "created_at", "cost", "review_reason", "reviewed_by",
                       "reviewed_at", "admitted_at", "traceback")
    actions = [approve, reject, cancel]
    inlines = [TrialInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("strategy_state")


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


@admin.register(Trial)
class TrialAdmin(admin.ModelAdmin):
    list_display = ("experiment", "number", "arch_display", "val_acc", "params", "flops", "train_seconds",
                    "estimator")
    list_filter = ("estimator", "experiment__space", "experiment__strategy")
    search_fields = ("arch_key", "experiment__name")
    list_select_related = ("experiment",)


@admin.register(SearchEpoch)
class SearchEpochAdmin(admin.ModelAdmin):
    list_display = ("experiment", "epoch", "train_loss", "val_loss", "val_acc", "param_free_fraction", "genotype")
    list_filter = ("stopped_early",)
    list_select_related = ("experiment",)


@admin.register(Calibration)
class CalibrationAdmin(admin.ModelAdmin):
    list_display = ("experiment", "status", "k", "epochs", "reference", "kendall_tau", "spearman_rho", "created_at")
    list_filter = ("status",)
    list_select_related = ("experiment",)
