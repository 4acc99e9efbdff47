"""Request shapes of the REST API; what they mean is checked by the same services the pages use."""
from __future__ import annotations

from rest_framework import serializers


class ExperimentCreateSerializer(serializers.Serializer):
    """The fields of `nas submit`; options are an object per component (space, strategy, estimator)."""

    name = serializers.CharField(max_length=100)
    team = serializers.CharField(required=False, allow_blank=True, help_text="Team name or id (may be left out "
                                                                             "by a member of one team)")
    dataset = serializers.CharField(max_length=50)
    space = serializers.CharField(max_length=50)
    strategy = serializers.CharField(max_length=50)
    estimator = serializers.CharField(max_length=50, default="train")
    budget = serializers.IntegerField(help_text="Number of trials")
    epochs = serializers.IntegerField(default=3, help_text="Training epochs per trial")
    seed = serializers.IntegerField(default=0)
    patience = serializers.IntegerField(default=0)
    max_seconds = serializers.IntegerField(default=0)
    top_k = serializers.IntegerField(default=5)
    parallelism = serializers.IntegerField(default=1, help_text="Trials in flight at once, across all workers")
    failure_policy = serializers.CharField(default="worst", help_text="What the strategy is told of a failed "
                                                                      "trial: worst or ignore")
    max_failures = serializers.IntegerField(default=3, help_text="Fail after this many failed trials in a row")
    bf16 = serializers.BooleanField(default=False, help_text="Train under bfloat16 autocast (CUDA workers only)")
    channels_last = serializers.BooleanField(default=False, help_text="Train with channels-last memory")
    max_params = serializers.IntegerField(required=False, allow_null=True, default=None,
                                          help_text="Deployment limit: networks with more parameters are skipped, "
                                                    "never trained (null: no limit)")
    max_macs = serializers.IntegerField(required=False, allow_null=True, default=None,
                                        help_text="Deployment limit on multiply-adds for one input (null: no limit)")
    options = serializers.DictField(child=serializers.DictField(), required=False, default=dict)


class ReviewSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000,
                                    help_text="Optional to approve; the reason, required to reject")


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class DatasetUploadSerializer(serializers.Serializer):
    """A multipart upload: an ImageFolder zip (`kind=imagefolder`) or a CSV (`kind=csv` with `label_column`)."""

    name = serializers.CharField(max_length=60)
    kind = serializers.ChoiceField(choices=["imagefolder", "csv"])
    file = serializers.FileField(allow_empty_file=True, use_url=False)
    team = serializers.CharField(required=False, allow_blank=True, help_text="Team name or id (may be left out "
                                                                             "by a member of one team)")
    label_column = serializers.CharField(required=False, allow_blank=True, default="",
                                         help_text="CSV: the column holding the class")
    resize = serializers.IntegerField(required=False, allow_null=True, default=None,
                                      help_text="Images: the square size in pixels every image is resized to")
    title = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)


class ExtendSerializer(serializers.Serializer):
    trials = serializers.IntegerField(help_text="More trials for a succeeded search, which continues its strategy")


class RetrainSerializer(serializers.Serializer):
    epochs = serializers.IntegerField(help_text="Epochs to train the best architecture from scratch")
