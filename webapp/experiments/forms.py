"""The experiment form: fixed fields plus one field per option of every space, strategy and estimator."""
from __future__ import annotations

from typing import Any

from django import forms

from nasjobs.constraints import LIMIT_FIELDS, LIMIT_RANGE
from nasjobs.datasets import DATASETS, KINDS
from nasjobs.options import OptionSpec, option_specs, parse_config
from nasjobs.planner import FAILURE_POLICIES
from nasjobs.search import COMPONENTS, LIMITS, ExperimentSpec, SpecError, validate_spec
from nasjobs.spaces import SPACES
from nasjobs.strategies import STRATEGIES
from nasjobs.estimators import ESTIMATORS
from webapp.datasets.selectors import datasets_for_submission
from webapp.teams.selectors import member_teams

REGISTRIES = {"space": SPACES, "strategy": STRATEGIES, "estimator": ESTIMATORS}


def option_field_name(component: str, cls_name: str, option: str) -> str:
    return f"opt-{component}-{cls_name}-{option}"


def _option_field(spec: OptionSpec) -> forms.Field:
    # Bounds are checked by the engine's own validation (the same code the `nas` command uses); the field only
    # parses the value. Not required: options of components that are not selected are ignored.
    common: dict[str, Any] = {"required": False, "help_text": spec.help, "label": spec.name.replace("_", " ")}
    if spec.kind == "bool":
        return forms.BooleanField(initial=spec.default, **common)
    if spec.kind == "multi":
        choices = [(str(c), str(c)) for c in spec.choices or ()]
        return forms.MultipleChoiceField(choices=choices, initial=[str(v) for v in spec.default],
                                         widget=forms.CheckboxSelectMultiple, **common)
    if spec.choices is not None:
        return forms.ChoiceField(choices=[(str(c), str(c)) for c in spec.choices], initial=spec.default, **common)
    if spec.kind == "int":
        return forms.IntegerField(initial=spec.default, **common)
    if spec.kind == "float":
        return forms.FloatField(initial=spec.default, **common)
    return forms.CharField(initial=spec.default, **common)


class KindSelect(forms.Select):
    """A select whose options carry `data-kind` (datasets), so the page can disable what does not fit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kinds: dict[str, str] = {}

    def create_option(self, name, value, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option = super().create_option(name, value, *args, **kwargs)
        if str(value) in self.kinds:
            option["attrs"]["data-kind"] = self.kinds[str(value)]
        return option


def kind_conflicts() -> dict[str, dict[str, dict[str, str]]]:
    """For the form: per space and estimator (with default options), why it cannot take each dataset kind ("" when
    it can). Submission checks the chosen options again; this only greys out what never fits."""
    out: dict[str, dict[str, dict[str, str]]] = {"space": {}, "estimator": {}}
    for name in SPACES.names():
        cls = SPACES.get(name)
        out["space"][name] = {k: "" if k in cls.kinds else f"builds for {' or '.join(cls.kinds)} data"
                              for k in KINDS}
    for name in ESTIMATORS.names():
        cls = ESTIMATORS.get(name)
        config = parse_config(cls.Config, {})
        reasons = {}
        for kind in KINDS:
            try:
                cls.check_dataset(config, "this dataset", kind)
                reasons[kind] = ""
            except ValueError as exc:
                reasons[kind] = str(exc)
        out["estimator"][name] = reasons
    return out


def _choices(registry) -> list[tuple[str, str]]:
    return [(name, getattr(registry.get(name), "title", name)) for name in registry.names()]


class ExperimentForm(forms.Form):
    name = forms.CharField(max_length=100)
    team = forms.ChoiceField(choices=(), help_text="Who owns it, sees it and pays its compute")
    dataset = forms.ChoiceField(choices=(), widget=KindSelect, help_text="Built-in, or one of your team's uploads")
    space = forms.ChoiceField(choices=(), label="Search space")
    strategy = forms.ChoiceField(choices=())
    estimator = forms.ChoiceField(choices=(), label="Performance estimator")
    budget = forms.IntegerField(min_value=LIMITS["budget"][0], max_value=LIMITS["budget"][1], initial=10,
                                help_text="Number of evaluations (a strategy's re-evaluation of an architecture "
                                          "counts as one)")
    epochs = forms.IntegerField(min_value=LIMITS["epochs"][0], max_value=LIMITS["epochs"][1], initial=3,
                                help_text="Training epochs per trial")
    seed = forms.IntegerField(min_value=LIMITS["seed"][0], max_value=LIMITS["seed"][1], initial=0)
    patience = forms.IntegerField(min_value=LIMITS["patience"][0], max_value=LIMITS["patience"][1], initial=0,
                                  help_text="Stop after this many trials without a better result (0: never)")
    max_seconds = forms.IntegerField(min_value=LIMITS["max_seconds"][0], max_value=LIMITS["max_seconds"][1],
                                     initial=0, label="Time limit (seconds)",
                                     help_text="Stop the search after this much running time (0: no limit)")
    top_k = forms.IntegerField(min_value=LIMITS["top_k"][0], max_value=LIMITS["top_k"][1], initial=5,
                               label="Keep weights of top k", help_text="Trained weights kept on disk")
    parallelism = forms.IntegerField(min_value=LIMITS["parallelism"][0], max_value=LIMITS["parallelism"][1],
                                     initial=1, help_text="Trials in flight at once, across all workers")
    failure_policy = forms.ChoiceField(choices=[(k, f"{k}: {v}") for k, v in FAILURE_POLICIES.items()],
                                       initial="worst", label="A failed trial is",
                                       help_text="What the strategy is told of a trial that failed")
    max_failures = forms.IntegerField(min_value=LIMITS["max_failures"][0], max_value=LIMITS["max_failures"][1],
                                      initial=3, label="Failures in a row allowed",
                                      help_text="The experiment fails after this many failed trials in a row")
    bf16 = forms.BooleanField(required=False, label="bf16 autocast",
                              help_text="Train in bfloat16 mixed precision (needs CUDA workers)")
    channels_last = forms.BooleanField(required=False, label="Channels-last memory",
                                       help_text="Faster convolutions on tensor cores; no change in results")
    # Deployment constraints (their own group on the page): blank is no limit.
    max_params = forms.IntegerField(required=False, min_value=LIMIT_RANGE[0], max_value=LIMIT_RANGE[1],
                                    label="Max parameters",
                                    help_text="Networks with more parameters are skipped, never trained (blank: "
                                              "no limit)")
    max_macs = forms.IntegerField(required=False, min_value=LIMIT_RANGE[0], max_value=LIMIT_RANGE[1],
                                  label="Max MACs", help_text="Most multiply-adds for one input (blank: no limit)")
    constraint_fields = LIMIT_FIELDS

    def __init__(self, *args: Any, user=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        teams = list(member_teams(user)) if user is not None else []
        self.fields["team"].choices = [(t.name, t.name) for t in teams]
        self.fields["team"].initial = teams[0].name if teams else None
        if user is not None:
            datasets = [(d.engine_name, d.name if d.is_builtin else f"{d.name} (team {d.team.name})", d.kind)
                        for d in datasets_for_submission(user)]
        else:  # no user, no uploads: the built-ins as the engine registers them
            datasets = [(n, n, DATASETS.get(n).kind) for n in DATASETS.names()]
        self.fields["dataset"].choices = [(value, label) for value, label, _ in datasets]
        self.fields["dataset"].widget.kinds = {value: kind for value, _, kind in datasets}
        self.fields["dataset"].initial = "digits"
        self.option_groups: list[dict[str, Any]] = []
        for component in COMPONENTS:
            registry = REGISTRIES[component]
            self.fields[component].choices = _choices(registry)
            for cls_name in registry.names():
                names = []
                for spec in option_specs(registry.get(cls_name).Config):
                    field_name = option_field_name(component, cls_name, spec.name)
                    self.fields[field_name] = _option_field(spec)
                    names.append(field_name)
                self.option_groups.append({"component": component, "name": cls_name, "fields": names})
        self.fields["space"].initial = "chain_cnn"
        self.fields["strategy"].initial = "random"
        self.fields["estimator"].initial = "train"

    def bound_option_groups(self) -> list[dict[str, Any]]:
        return [dict(group, bound=[self[f] for f in group["fields"]]) for group in self.option_groups]

    # The form's sections, in the order a search is thought through; a component's options sit beside its choice.
    SECTIONS = (("experiment", "Experiment", ("name", "team", "dataset"), None),
                ("section-space", "Search space", ("space",), "space"),
                ("section-strategy", "Search strategy", ("strategy",), "strategy"),
                ("section-estimator", "Performance estimation", ("estimator", "epochs"), "estimator"),
                ("section-budget", "Budget and stopping", ("budget", "seed", "patience", "max_seconds", "top_k"),
                 None),
                ("section-workers", "Workers", ("parallelism", "failure_policy", "max_failures", "bf16",
                                                "channels_last"), None),
                ("deployment-constraints", "Deployment constraints", LIMIT_FIELDS, None))

    def sections(self) -> list[dict[str, Any]]:
        """The sections with their bound fields and, for a component, its option groups (one per choice, the page
        shows the chosen one's). A field no section names is shown in the first, so none is ever left out."""
        placed = {name for _, _, names, _ in self.SECTIONS for name in names}
        options = {f for group in self.option_groups for f in group["fields"]}
        rest = [name for name in self.fields if name not in placed and name not in options]
        groups = self.bound_option_groups()
        return [{"id": key, "title": title, "component": component,
                 "fields": [self[n] for n in (*names, *(rest if i == 0 else ()))],
                 "groups": [g for g in groups if g["component"] == component and g["bound"]]}
                for i, (key, title, names, component) in enumerate(self.SECTIONS)]

    def _options(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        options: dict[str, dict[str, Any]] = {}
        for component in COMPONENTS:
            cls_name = data[component]
            values = {}
            for spec in option_specs(REGISTRIES[component].get(cls_name).Config):
                value = data.get(option_field_name(component, cls_name, spec.name))
                if value is None or (value == "" and spec.kind != "str"):
                    continue  # left empty: the option's default
                values[spec.name] = value
            options[component] = values
        return options

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self._ignore_unselected_groups(data)
        if self.errors:
            return data
        spec = ExperimentSpec(dataset=data["dataset"], space=data["space"], strategy=data["strategy"],
                              estimator=data["estimator"], budget=data["budget"], epochs=data["epochs"],
                              seed=data["seed"], options=self._options(data), top_k=data["top_k"],
                              patience=data["patience"], max_seconds=data["max_seconds"],
                              parallelism=data["parallelism"], failure_policy=data["failure_policy"],
                              max_failures=data["max_failures"], bf16=data["bf16"],
                              channels_last=data["channels_last"], max_params=data.get("max_params"),
                              max_macs=data.get("max_macs"))
        try:
            self.spec = validate_spec(spec)
        except SpecError as exc:
            self.add_error(self._field_for(exc.field, data), exc.message)
        return data

    def _ignore_unselected_groups(self, data: dict[str, Any]) -> None:
        """Forget the values and errors of option groups whose component is not the one selected (or when none
        could be): the page hides those groups, so an error there would block the form where nobody can see it."""
        for group in self.option_groups:
            if data.get(group["component"]) != group["name"]:
                for name in group["fields"]:
                    self._errors.pop(name, None)
                    data.pop(name, None)

    def _field_for(self, spec_field: str, data: dict[str, Any]) -> str | None:
        if "." in spec_field:
            component, option = spec_field.split(".", 1)
            name = option_field_name(component, data[component], option)
            return name if name in self.fields else None
        return spec_field if spec_field in self.fields else None


# The fields of an experiment a clone copies as they are (name, team and options are worked out).
CLONED_FIELDS = ("dataset", "space", "strategy", "estimator", "budget", "epochs", "seed", "patience", "max_seconds",
                 "top_k", "parallelism", "failure_policy", "max_failures", "bf16", "channels_last")


def clone_initial(experiment: Any) -> dict[str, Any]:
    """The experiment form's initial values for a copy of `experiment`: every field and every option of its
    components, named "copy of ..."."""
    initial: dict[str, Any] = {f: getattr(experiment, f) for f in CLONED_FIELDS}
    initial["name"] = f"copy of {experiment.name}"[:ExperimentForm.base_fields["name"].max_length]
    initial["team"] = experiment.team.name
    for component in COMPONENTS:
        cls_name = getattr(experiment, component)
        for option, value in ((experiment.options or {}).get(component) or {}).items():
            name = option_field_name(component, cls_name, option)
            initial[name] = [str(v) for v in value] if isinstance(value, (list, tuple)) else value
    return initial


class ExtendForm(forms.Form):
    trials = forms.IntegerField(min_value=1, max_value=LIMITS["budget"][1], initial=10, label="Extend by",
                                help_text="More trials, continuing the same search")


class RetrainForm(forms.Form):
    epochs = forms.IntegerField(min_value=LIMITS["epochs"][0], max_value=LIMITS["epochs"][1], label="Retrain for",
                                help_text="Epochs of training from scratch")

    @staticmethod
    def defaults(experiment: Any) -> dict[str, int]:
        return {"epochs": min(LIMITS["epochs"][1], 2 * experiment.epochs)}


class CalibrationForm(forms.Form):
    k = forms.IntegerField(min_value=2, max_value=1000, label="Candidates (K)",
                           help_text="How many of the experiment's trials to train in full")
    epochs = forms.IntegerField(min_value=1, max_value=10_000, label="Reference epochs",
                                help_text="Epochs of the full training the estimates are compared with")

    @staticmethod
    def defaults(experiment) -> dict[str, int]:
        return {"k": max(2, min(10, experiment.trials_done)), "epochs": 2 * experiment.epochs}


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(
        attrs={"placeholder": "comment (the reason, to reject)"}))
