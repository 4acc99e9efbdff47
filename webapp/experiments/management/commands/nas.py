"""`manage.py nas`: submit, watch, cancel and resume experiments, and manage teams and users, from a terminal or
a script. Every experiment action runs as a user (`--user`, default: the demo user) under the same rules as
the pages and the API."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from nasjobs.constraints import Limits
from nasjobs.estimators import Figure
from nasjobs.export import EXPORT_FORMATS
from nasjobs.options import option_specs
from nasjobs.planner import FAILURE_POLICIES
from nasjobs.search import COMPONENTS, ExperimentSpec, SpecError
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment
from webapp.experiments.runner import experiment_run_inline, run_calibration_now
from webapp.teams.models import Team
from webapp.teams.services import TeamError, team_create, user_add

TERMINAL = (Experiment.Status.SUCCEEDED, Experiment.Status.FAILED, Experiment.Status.CANCELLED,
            Experiment.Status.REJECTED)
SUBMIT_FIELDS = {"name", "team", "dataset", "space", "strategy", "estimator", "budget", "epochs", "seed", "top_k",
                 "patience", "max_seconds", "parallelism", "failure_policy", "max_failures", "bf16", "channels_last",
                 "max_params", "max_macs", "options"}


def read_experiment_file(path: str) -> dict[str, Any]:
    """An experiment kept in git: a YAML or JSON object with the fields of `nas submit` (options as an object
    per component, or as a list of KEY=VALUE strings)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file", f"no file {path}") from None
    except UnicodeDecodeError:
        raise SpecError("file", f"{path} is not UTF-8 text") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError("file", f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                                f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError("file", f"{path} must hold one object (mapping) of experiment fields")
    unknown = sorted(set(data) - SUBMIT_FIELDS - {"top-k", "max-seconds"})
    if unknown:
        raise SpecError("file", f"unknown field {unknown[0]!r}; fields are {', '.join(sorted(SUBMIT_FIELDS))}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def read_password() -> str:
    """From NAS_PASSWORD, else the first line of stdin: never a command-line argument, which others can read."""
    password = os.environ.get("NAS_PASSWORD")
    if password is None:
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("Password: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
    return password


class OneLineParser(CommandParser):
    """Argument errors become a one-line CommandError instead of a usage dump."""

    def error(self, message: str) -> None:
        if self.called_from_command_line:
            sys.stderr.write(f"error: {message}\n")
            sys.exit(2)
        raise CommandError(message)


def resolve_options(pairs: list[str], spec: ExperimentSpec) -> dict[str, dict[str, Any]]:
    """Turn `KEY=VALUE` pairs into per-component options. KEY is `option` or `component.option`."""
    options: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError("option", f"expected KEY=VALUE, got {pair!r}")
        if "." in key:
            component, name = key.split(".", 1)
            if component not in COMPONENTS:
                raise SpecError("option", f"{key!r}: prefix must be one of {', '.join(COMPONENTS)}")
        else:
            owners = [c for c in COMPONENTS
                      if key in {s.name for s in option_specs(spec.component_class(c).Config)}]
            if not owners:
                raise SpecError("option", f"{key!r} is not an option of {spec.space}, {spec.strategy} or "
                                          f"{spec.estimator}")
            if len(owners) > 1:
                raise SpecError("option", f"{key!r} is ambiguous; write {' or '.join(f'{o}.{key}' for o in owners)}")
            component, name = owners[0], key
        options[component][name] = value
    return options


def progress_line(experiment: Experiment, width: int = 30) -> str:
    done = min(experiment.trials_done, experiment.budget)
    filled = round(width * done / experiment.budget) if experiment.budget else 0
    best = experiment.figure.format(experiment.best_val_acc)
    elapsed = selectors.experiment_elapsed_seconds(experiment) or 0.0
    minutes, secs = divmod(int(elapsed), 60)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{experiment.budget} trials · best {best} · "
            f"{minutes:02d}:{secs:02d} elapsed · {experiment.status}")


class Command(BaseCommand):
    help = "Submit and inspect NAS experiments."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.__class__ = OneLineParser  # one-line errors; subcommand parsers inherit the class
        sub = parser.add_subparsers(dest="action", required=True)
        submit = sub.add_parser("submit", help="Create an experiment and queue it (or leave it for review)")
        submit.add_argument("-f", "--file", default=None, help="A YAML or JSON file of these fields; flags given "
                                                              "as well override it")
        submit.add_argument("--name", default=None, help="Experiment name (default: space/strategy/dataset)")
        submit.add_argument("--team", default=None, help="Team name (default: the user's last used team)")
        submit.add_argument("--dataset", default=None, help="default: digits")
        submit.add_argument("--space", default=None, help="default: chain_cnn")
        submit.add_argument("--strategy", default=None, help="default: random")
        submit.add_argument("--estimator", default=None, help="default: train")
        submit.add_argument("--budget", type=int, default=None, help="Number of trials (default: 10)")
        submit.add_argument("--epochs", type=int, default=None, help="Training epochs per trial (default: 3)")
        submit.add_argument("--seed", type=int, default=None, help="default: 0")
        submit.add_argument("--top-k", type=int, default=None, help="Trials whose weights are kept (default: 5)")
        submit.add_argument("--patience", type=int, default=None, help="Stop after N trials without improvement")
        submit.add_argument("--max-seconds", type=int, default=None, help="Wall-clock limit of the search")
        submit.add_argument("--parallelism", type=int, default=None,
                            help="Trials in flight at once, across all workers (default: 1)")
        submit.add_argument("--failure-policy", choices=sorted(FAILURE_POLICIES), default=None,
                            help="What the strategy is told of a failed trial (default: worst)")
        submit.add_argument("--max-failures", type=int, default=None,
                            help="Fail the experiment after this many failed trials in a row (default: 3)")
        submit.add_argument("--bf16", action="store_true", default=None,
                            help="Train under bfloat16 autocast (CUDA workers only)")
        submit.add_argument("--channels-last", action="store_true", default=None,
                            help="Train with channels-last memory")
        submit.add_argument("--max-params", type=int, default=None, metavar="N",
                            help="Deployment limit: networks with more parameters are skipped, never trained")
        submit.add_argument("--max-macs", type=int, default=None, metavar="N",
                            help="Deployment limit on multiply-adds for one input")
        submit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                            help="An option of the space, strategy or estimator (KEY or component.KEY)")
        submit.add_argument("--wait", action="store_true", help="Wait until the experiment ends")
        submit.add_argument("--inline", action="store_true",
                            help="Run the search in this process instead of a Celery worker (implies --wait)")
        submit.add_argument("--json", action="store_true", help="Print one JSON object")
        show = sub.add_parser("show", help="Show an experiment")
        show.add_argument("id", type=int)
        show.add_argument("--json", action="store_true")
        show.add_argument("--wait", action="store_true")
        for name, help_text in (("cancel", "Cancel a queued or running experiment"),
                                ("resume", "Queue a cancelled or failed experiment again")):
            p = sub.add_parser(name, help=help_text)
            p.add_argument("id", type=int)
        extend = sub.add_parser("extend", help="Give a succeeded search more trials; it continues where it stopped")
        extend.add_argument("id", type=int)
        extend.add_argument("--trials", type=int, required=True, help="How many more trials")
        extend.add_argument("--wait", action="store_true", help="Wait until the search ends again")
        extend.add_argument("--json", action="store_true")
        retrain = sub.add_parser("retrain", help="Train the best architecture again from scratch for N epochs")
        retrain.add_argument("id", type=int)
        retrain.add_argument("--epochs", type=int, required=True)
        retrain.add_argument("--wait", action="store_true", help="Wait until the retraining ends")
        retrain.add_argument("--json", action="store_true")
        sub.add_parser("recover", help="Queue again every unfinished experiment, retraining, export, calibration and "
                                       "dataset (after losing Redis)")
        teams = sub.add_parser("team", help="Manage teams").add_subparsers(dest="team_action", required=True)
        team_add = teams.add_parser("add", help="Create a team")
        team_add.add_argument("team")
        team_add.add_argument("--quota", type=int, default=100_000,
                              help="Trial-epochs per calendar month (default 100000; -1: no quota)")
        team_add.add_argument("--review-threshold", type=int, default=2_000,
                              help="Experiments costing more trial-epochs wait for review (default 2000; -1: none)")
        users = sub.add_parser("user", help="Manage users").add_subparsers(dest="user_action", required=True)
        add_user = users.add_parser("add", help="Create a user (password from NAS_PASSWORD or stdin)")
        add_user.add_argument("username")
        add_user.add_argument("--team", action="append", default=[], help="A team to join (repeatable)")
        add_user.add_argument("--team-admin", action="store_true", help="Admin of the given teams")
        add_user.add_argument("--staff", action="store_true", help="Staff: sees every team, reviews, uses /admin/")
        add_user.add_argument("--email", default="", help="Where notifications of their experiments go")
        cal = sub.add_parser("calibrate", help="Measure how well the experiment's estimator ranks candidates")
        cal.add_argument("id", type=int)
        cal.add_argument("--k", type=int, default=10, help="Candidates trained in full")
        cal.add_argument("--epochs", type=int, default=None, help="Reference epochs (default: 2x the experiment's)")
        cal.add_argument("--seed", type=int, default=0)
        cal.add_argument("--inline", action="store_true", help="Run here instead of on a worker (implies --wait)")
        cal.add_argument("--wait", action="store_true")
        cal.add_argument("--json", action="store_true")
        cal.add_argument("--cancel", action="store_true", help="Cancel its queued or running calibration instead")

        export = sub.add_parser("export", help="Write a trial as a model that runs without the platform (a "
                                               "torch.export zip or an ONNX file), in this process")
        export.add_argument("id", type=int)
        export.add_argument("--trial", type=int, default=None, help="Trial number (default: the best trial)")
        export.add_argument("--format", default="torch", help=f"One of {', '.join(EXPORT_FORMATS)} (default torch)")
        export.add_argument("--output", default=None, help="File to write (default: nasboard-ID-trial-N.zip, or "
                                                           ".onnx)")
        for p in (submit, show, sub.choices["cancel"], sub.choices["resume"], cal, export, extend, retrain):
            p.add_argument("--user", default="demo", help="Act as this user (default: demo)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            getattr(self, f"handle_{opts['action']}")(**opts)
        except PermissionDenied as exc:
            raise CommandError(f"not allowed: {exc}") from None

    def _user(self, opts: dict[str, Any]):
        user = get_user_model().objects.filter(username=opts["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"no user {opts['user']!r}; create one with `manage.py nas user add` or name one "
                               "with --user")
        return user

    def _get(self, pk: int, opts: dict[str, Any]) -> Experiment:
        try:
            return selectors.experiment_for_user(self._user(opts), pk)
        except Http404:
            raise CommandError(f"no experiment with id {pk}") from None

    def _submission(self, opts: dict[str, Any]) -> dict[str, Any]:
        """The fields of the experiment: defaults, then the file (-f), then the flags given."""
        fields: dict[str, Any] = {"dataset": "digits", "space": "chain_cnn", "strategy": "random",
                                  "estimator": "train", "budget": 10, "epochs": 3, "seed": 0, "top_k": 5,
                                  "patience": 0, "max_seconds": 0, "options": {}}
        if opts["file"]:
            fields.update(read_experiment_file(opts["file"]))
        fields.update({k: opts[k] for k in SUBMIT_FIELDS - {"options"} if opts.get(k) is not None})
        for key in ("name", "team"):
            value = fields.get(key)
            if isinstance(value, str) and any(0xDC80 <= ord(c) <= 0xDCFF for c in value):  # undecodable bytes
                raise SpecError(key, "is not valid UTF-8 text")
        return fields

    def handle_submit(self, **opts: Any) -> None:
        user = self._user(opts)
        try:
            fields = self._submission(opts)
            name, team, options = fields.pop("name", None), fields.pop("team", None), fields.pop("options")
            spec = ExperimentSpec(**fields)
            name = name or f"{spec.space} / {spec.strategy} / {spec.dataset}"
            from nasjobs.search import check_names

            check_names(spec, COMPONENTS)  # first, so option keys resolve against real components
            pairs = list(options) if isinstance(options, list) else []
            groups = options if isinstance(options, dict) else {}
            flag_options = resolve_options(pairs + opts["option"], spec)
            merged = {c: {**(groups.get(c) or {}), **flag_options[c]} for c in COMPONENTS}
            spec = ExperimentSpec(**{**spec.__dict__, "options": merged})
            experiment = services.experiment_create(user=user, name=name, team=team, spec=spec,
                                                    enqueue=not opts["inline"])
        except (SpecError, TypeError) as exc:
            raise CommandError(f"{exc.field}: {exc.message}" if isinstance(exc, SpecError) else str(exc)) from None
        if experiment.status == Experiment.Status.PENDING_REVIEW:
            if opts["json"]:
                self.stdout.write(json.dumps(selectors.experiment_summary(experiment)))
            else:
                self.stdout.write(f"experiment {experiment.pk} waits for a reviewer: {experiment.review_reason}")
            return
        if opts["inline"]:
            experiment_run_inline(experiment.pk, f"inline:{os.getpid()}")
        elif not opts["json"] and not opts["wait"]:
            self.stdout.write(f"experiment {experiment.pk} queued; follow it with: manage.py nas show "
                              f"{experiment.pk} --wait")
            return
        self._report(experiment, wait=opts["wait"] or opts["inline"], as_json=opts["json"])

    def handle_show(self, **opts: Any) -> None:
        self._report(self._get(opts["id"], opts), wait=opts["wait"], as_json=opts["json"])

    def handle_cancel(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        if not services.experiment_cancel(experiment, self._user(opts)):
            raise CommandError(f"experiment {experiment.pk} is {experiment.status}; only pending, queued or "
                               "running ones can be cancelled")
        self.stdout.write(f"experiment {experiment.pk} cancelled")

    def handle_resume(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        if not services.experiment_resume(experiment, self._user(opts)):
            raise CommandError(f"experiment {experiment.pk} is {experiment.status}; only cancelled or failed "
                               "ones can be resumed")
        self.stdout.write(f"experiment {experiment.pk} queued again")

    def handle_extend(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        try:
            changed = services.experiment_extend(experiment, self._user(opts), opts["trials"])
        except SpecError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        if not changed:
            raise CommandError(f"experiment {experiment.pk} is {experiment.status}; only a succeeded one can be "
                               "extended")
        experiment.refresh_from_db()
        if not opts["json"] and not opts["wait"]:
            self.stdout.write(f"experiment {experiment.pk} extended to {experiment.budget} trials: "
                              f"{experiment.status.replace('_', ' ')}")
            return
        self._report(experiment, wait=opts["wait"] and experiment.status != Experiment.Status.PENDING_REVIEW,
                     as_json=opts["json"])

    def handle_retrain(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        try:
            trial = services.experiment_retrain(experiment, self._user(opts), opts["epochs"])
        except SpecError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        while opts["wait"] and trial.status in ("pending", "running"):
            time.sleep(0.5)
            trial.refresh_from_db()
        data = selectors.retrain_to_json(trial)
        if opts["json"]:
            self.stdout.write(json.dumps(data))
        elif trial.status == "done":
            self.stdout.write(f"retraining {trial.number} of trial {trial.source_number} ({opts['epochs']} epochs): "
                              f"validation accuracy {100 * trial.val_acc:.2f}%, test accuracy "
                              f"{100 * trial.test_acc:.2f}%")
        else:
            self.stdout.write(f"retraining {trial.number} of trial {trial.source_number} {trial.status}")
        if trial.status == "failed":
            raise CommandError(f"retraining failed: {trial.error}")

    def handle_calibrate(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        if opts["cancel"]:
            return self._cancel_calibration(experiment, opts)
        epochs = opts["epochs"] if opts["epochs"] is not None else 2 * experiment.epochs
        try:
            calibration = services.calibration_create(experiment=experiment, user=self._user(opts), k=opts["k"],
                                                      epochs=epochs,
                                                      seed=opts["seed"], enqueue=not opts["inline"])
        except SpecError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        if opts["inline"]:
            run_calibration_now(calibration.pk, f"inline:{os.getpid()}")
        while (opts["wait"] or opts["inline"]) and calibration.status in ("queued", "running"):
            time.sleep(0.5)
            calibration.refresh_from_db()
        calibration.refresh_from_db()
        data = selectors.calibration_to_json(calibration)
        if opts["json"]:
            self.stdout.write(json.dumps(data))
        elif calibration.status == "succeeded":
            self.stdout.write(f"estimator trust of experiment {experiment.pk} ({experiment.estimator} vs "
                              f"{calibration.reference}, k={calibration.k}): Kendall tau {calibration.kendall_tau:.3f}, "
                              f"Spearman rho {calibration.spearman_rho:.3f}")
        else:
            self.stdout.write(f"calibration {calibration.pk} {calibration.status}")
        if calibration.status == "failed":
            raise CommandError(f"calibration failed: {calibration.error}")

    def _cancel_calibration(self, experiment: Experiment, opts: dict[str, Any]) -> None:
        calibration = experiment.calibrations.first()
        if calibration is None or not services.calibration_cancel(calibration, self._user(opts)):
            state = f"its latest is {calibration.status}" if calibration else "it has none"
            raise CommandError(f"experiment {experiment.pk} has no queued or running calibration ({state})")
        self.stdout.write(f"calibration {calibration.pk} of experiment {experiment.pk} cancelled")

    def handle_export(self, **opts: Any) -> None:
        experiment = self._get(opts["id"], opts)
        number = opts["trial"] if opts["trial"] is not None else experiment.best_trial_number
        if number is None:
            raise CommandError(f"experiment {experiment.pk} has no best trial yet; name one with --trial")
        trial = experiment.trials.filter(number=number).first()
        if trial is None:
            raise CommandError(f"experiment {experiment.pk} has no trial {number}")
        try:
            fmt = selectors.export_format(opts["format"])
        except SpecError as exc:
            raise CommandError(exc.message) from None
        path = Path(opts["output"] or f"nasboard-{experiment.pk}-trial-{number}.{fmt.suffix}")
        if not path.parent.is_dir():
            raise CommandError(f"cannot write {path}: no folder {path.parent}")
        trained = services.trial_export_file(experiment, trial, fmt.name, path)
        self.stdout.write(f"wrote {path} ({fmt.title}; trial {number}: {trial.arch_key}; "
                          f"{'trained weights' if trained else 'untrained: its weights were not kept'})")

    def handle_team(self, **opts: Any) -> None:
        quota, threshold = (None if opts[k] == -1 else opts[k] for k in ("quota", "review_threshold"))
        try:
            team = team_create(name=opts["team"], monthly_quota=quota, review_threshold=threshold)
        except TeamError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"team {team.name} created (quota {'none' if quota is None else f'{quota:,}'} "
                          f"trial-epochs a month, review above {'never' if threshold is None else f'{threshold:,}'})")

    def handle_user(self, **opts: Any) -> None:
        teams = []
        for name in opts["team"]:
            team = Team.objects.filter(name=name).first()
            if team is None:
                raise CommandError(f"no team {name!r}; create it with `manage.py nas team add {name}`")
            teams.append(team)
        try:
            user = user_add(username=opts["username"], password=read_password(), teams=teams,
                            team_admin=opts["team_admin"], staff=opts["staff"], email=opts["email"])
        except TeamError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        role = "team admin" if opts["team_admin"] else "member"
        self.stdout.write(f"user {user.get_username()} created" + (f", {role} of {', '.join(opts['team'])}"
                                                                  if teams else "") + (" (staff)" if opts["staff"]
                                                                                       else ""))

    def handle_recover(self, **opts: Any) -> None:
        from webapp.jobs import jobs_recover

        recovered = jobs_recover()
        experiments = ", ".join(map(str, recovered.pop("experiments")))
        self.stdout.write(f"queued again: {experiments or 'nothing to recover'}")
        for kind, ids in recovered.items():
            if ids:
                self.stdout.write(f"{kind} queued again: {', '.join(map(str, ids))}")

    def _report(self, experiment: Experiment, *, wait: bool, as_json: bool) -> None:
        live = wait and not as_json
        while wait and experiment.status not in TERMINAL:
            if live:
                self.stdout.write("\r" + progress_line(experiment), ending="")
                self.stdout.flush()
            time.sleep(0.5)
            experiment.refresh_from_db()
        if live:
            self.stdout.write("\r" + progress_line(experiment))
        summary = selectors.experiment_summary(experiment, leaderboard=None)
        if as_json:
            self.stdout.write(json.dumps(summary))
        else:
            self._print_summary(summary)
        if wait and experiment.status != Experiment.Status.SUCCEEDED:
            raise CommandError(f"experiment {experiment.pk} ended {experiment.status}"
                               + (f": {experiment.error.splitlines()[0]}" if experiment.error else ""))

    def _print_summary(self, s: dict[str, Any]) -> None:
        w = self.stdout.write
        w(f"experiment {s['id']} '{s['name']}': {s['status']}, {s['trials_done']}/{s['budget']} trials "
          f"({s['space']} / {s['strategy']} / {s['estimator']} on {s['dataset']})")
        figure = Figure(s["figure"]["kind"], s["figure"]["name"], "")
        if s["best"]:
            b = s["best"]
            test = "–" if b["test_acc"] is None else f"{100 * b['test_acc']:.2f}%"
            w(f"best: trial {b['number']} {b['arch']}  {figure.name} {figure.format(b['val_acc'])}  "
              f"test accuracy {test}  params {b['params']:,}")
        if s["max_params"] is not None or s["max_macs"] is not None:
            w(f"{s['exploration']['skipped_proposals']:,} of {s['exploration']['proposals']:,} proposals skipped: over "
              f"the limits ({Limits(s['max_params'], s['max_macs']).describe()})")
        for row in s.get("leaderboard", [])[:10]:
            w(f"  {row['rank']:>3}. #{row['number']:<4} {figure.format(row['val_acc']):>7}  {row['params']:>10,}  "
              f"{row['arch_display']}")
