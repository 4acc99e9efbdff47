"""The upload form; every check beyond parsing is the service's (`dataset_upload`), shared with the API."""
from __future__ import annotations

from typing import Any

from django import forms

from webapp.datasets.services import RESIZE_LIMITS
from webapp.teams.selectors import member_teams


class DatasetUploadForm(forms.Form):
    team = forms.ChoiceField(choices=(), help_text="Who owns it and may search on it")
    name = forms.CharField(max_length=60, help_text="Unique in the team: letters, digits, '.', '_' or '-'")
    title = forms.CharField(max_length=200, required=False, help_text="A longer description (optional)")
    kind = forms.ChoiceField(choices=[("imagefolder", "Image folder zip (one folder per class)"),
                                      ("csv", "CSV table (numeric features, one label column)")])
    file = forms.FileField(allow_empty_file=True, help_text="A .zip of class folders holding PNG, JPEG, BMP or "
                                                            "WebP images, or a .csv with a header row")
    label_column = forms.CharField(max_length=200, required=False, help_text="CSV: the column holding the class")
    resize = forms.IntegerField(required=False, min_value=RESIZE_LIMITS[0], max_value=RESIZE_LIMITS[1],
                                label="Resize to (pixels)", help_text="Images: bring every image to this square "
                                                                      "size (needed when sizes differ)")

    def __init__(self, *args: Any, user=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        teams = list(member_teams(user)) if user is not None else []
        self.fields["team"].choices = [(t.name, t.name) for t in teams]
        self.fields["team"].initial = teams[0].name if teams else None
