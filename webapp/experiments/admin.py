"""Admin: review experiments and their trials."""
from django.contrib import admin

from webapp.experiments.models import Calibration, Experiment, SearchEpoch, Trial


class TrialInline(admin.TabularInline):
    model = Trial
    extra = 0
    can_delete = False
    fields = ("number", "arch_display", "val_acc", "params", "flops", "train_seconds", "estimator")
    readonly_fields = fields
    ordering = ("-val_acc",)
    show_change_link = True


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "dataset", "space", "strategy", "estimator", "trials_done", "budget",
                    "best_val_acc", "test_acc", "created_by", "created_at")
    list_filter = ("status", "dataset", "space", "strategy", "estimator", "created_by")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    readonly_fields = ("trials_done", "best_val_acc", "best_trial_number", "test_acc", "started_at", "finished_at",
                       "heartbeat_at", "claimed_by", "created_at")
    inlines = [TrialInline]


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
