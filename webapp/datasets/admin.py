"""Datasets in the admin: read-only figures (they come from decoding), filters by team, kind and status."""
from django.contrib import admin

from webapp.datasets.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "kind", "source", "status", "num_classes", "owner", "created_at")
    list_filter = ("status", "kind", "source", "team")
    search_fields = ("name", "title")
    list_select_related = ("team", "owner")
    readonly_fields = ("team", "owner", "kind", "source", "status", "error", "options", "upload_name",
                       "upload_bytes", "input_shape", "num_classes", "class_names", "split_sizes", "class_counts",
                       "created_at", "ready_at", "claimed_by", "claimed_at")
    fields = ("name", "title") + readonly_fields

    def has_add_permission(self, request) -> bool:  # uploads go through the form or the API, which check them
        return False

    def get_readonly_fields(self, request, obj=None):
        # A name is part of how the team finds it; an experiment stores upload-<pk>, so renaming keeps them linked.
        return self.readonly_fields + (("name",) if obj is not None and obj.is_builtin else ())
