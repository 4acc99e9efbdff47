"""`manage.py nas`: submit, watch, cancel and resume experiments from a terminal or a script."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nasjobs.options import option_specs
from nasjobs.search import COMPONENTS, ExperimentSpec, SpecError
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment, Trial

TERMINAL = (Experiment.Status.SUCCEEDED, Experiment.Status.FAILED, Experiment.Status.CANCELLED)


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
    best = "–" if experiment.best_val_acc is None else f"{100 * experiment.best_val_acc:.2f}%"
    elapsed = selectors.experiment_elapsed_seconds(experiment) or 0.0
    minutes, secs = divmod(int(elapsed), 60)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{experiment.budget} trials · best {best} · "
            f"{minutes:02d}:{secs:02d} elapsed · {experiment.status}")


class Command(BaseCommand):
    help = "Submit and inspect NAS experiments."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.__class__ = OneLineParser  # one-line errors; subcommand parsers inherit the class
        sub = parser.add_subparsers(dest="action", required=True)
        submit = sub.add_parser("submit", help="Create an experiment and queue it")
        submit.add_argument("--name", default="", help="Experiment name (default: space/strategy/dataset)")
        submit.add_argument("--dataset", default="digits")
        submit.add_argument("--space", default="chain_cnn")
        submit.add_argument("--strategy", default="random")
        submit.add_argument("--estimator", default="train")
        submit.add_argument("--budget", type=int, default=10, help="Number of trials")
        submit.add_argument("--epochs", type=int, default=3, help="Training epochs per trial")
        submit.add_argument("--seed", type=int, default=0)
        submit.add_argument("--top-k", type=int, default=5, help="Trials whose weights are kept")
        submit.add_argument("--patience", type=int, default=0, help="Stop after N trials without improvement")
        submit.add_argument("--max-seconds", type=int, default=0, help="Wall-clock limit of the search")
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
        sub.add_parser("recover", help="Queue again every queued or running experiment (after losing Redis)")
        cal = sub.add_parser("calibrate", help="Measure how well the experiment's estimator ranks candidates")
        cal.add_argument("id", type=int)
        cal.add_argument("--k", type=int, default=10, help="Candidates trained in full")
        cal.add_argument("--epochs", type=int, default=None, help="Reference epochs (default: 2x the experiment's)")
        cal.add_argument("--seed", type=int, default=0)
        cal.add_argument("--inline", action="store_true", help="Run here instead of on a worker (implies --wait)")
        cal.add_argument("--wait", action="store_true")
        cal.add_argument("--json", action="store_true")

        export = sub.add_parser("export", help="Write a trial as a runnable PyTorch model (a zip)")
        export.add_argument("id", type=int)
        export.add_argument("--trial", type=int, default=None, help="Trial number (default: the best trial)")
        export.add_argument("--output", default=None, help="Zip file to write (default: nasboard-ID-trial-N.zip)")

    def handle(self, *args: Any, **opts: Any) -> None:
        getattr(self, f"handle_{opts['action']}")(**opts)

    def _get(self, pk: int) -> Experiment:
        try:
            return Experiment.objects.get(pk=pk)
        except Experiment.DoesNotExist:
            raise CommandError(f"no experiment with id {pk}") from None

    def handle_submit(self, **opts: Any) -> None:
        spec = ExperimentSpec(dataset=opts["dataset"], space=opts["space"], strategy=opts["strategy"],
                              estimator=opts["estimator"], budget=opts["budget"], epochs=opts["epochs"],
                              seed=opts["seed"], top_k=opts["top_k"], patience=opts["patience"],
                              max_seconds=opts["max_seconds"])
        name = opts["name"] or f"{opts['space']} / {opts['strategy']} / {opts['dataset']}"
        try:
            from nasjobs.search import validate_spec

            validate_spec(spec)  # registries first, so option keys resolve against real components
            spec = ExperimentSpec(**{**spec.__dict__, "options": resolve_options(opts["option"], spec)})
            experiment = services.experiment_create(user=None, name=name, spec=spec, enqueue=not opts["inline"])
        except SpecError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        if opts["inline"]:
            from nasjobs.persistence import run_experiment_now

            run_experiment_now(experiment.pk, f"inline:{os.getpid()}")
        elif not opts["json"] and not opts["wait"]:
            self.stdout.write(f"experiment {experiment.pk} queued; follow it with: manage.py nas show "
                              f"{experiment.pk} --wait")
            return
        self._report(experiment, wait=opts["wait"] or opts["inline"], as_json=opts["json"])

    def handle_show(self, **opts: Any) -> None:
        self._report(self._get(opts["id"]), wait=opts["wait"], as_json=opts["json"])

    def handle_cancel(self, **opts: Any) -> None:
        experiment = self._get(opts["id"])
        if not services.experiment_cancel(experiment):
            raise CommandError(f"experiment {experiment.pk} is {experiment.status}; only queued or running ones "
                               "can be cancelled")
        self.stdout.write(f"experiment {experiment.pk} cancelled")

    def handle_resume(self, **opts: Any) -> None:
        experiment = self._get(opts["id"])
        if not services.experiment_resume(experiment):
            raise CommandError(f"experiment {experiment.pk} is {experiment.status}; only cancelled or failed "
                               "ones can be resumed")
        self.stdout.write(f"experiment {experiment.pk} queued again")

    def handle_calibrate(self, **opts: Any) -> None:
        experiment = self._get(opts["id"])
        epochs = opts["epochs"] if opts["epochs"] is not None else 2 * experiment.epochs
        try:
            calibration = services.calibration_create(experiment=experiment, user=None, k=opts["k"], epochs=epochs,
                                                      seed=opts["seed"], enqueue=not opts["inline"])
        except SpecError as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from None
        if opts["inline"]:
            from nasjobs.persistence import run_calibration_now

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

    def handle_export(self, **opts: Any) -> None:
        experiment = self._get(opts["id"])
        number = opts["trial"] if opts["trial"] is not None else experiment.best_trial_number
        if number is None:
            raise CommandError(f"experiment {experiment.pk} has no best trial yet; name one with --trial")
        trial = Trial.objects.filter(experiment=experiment, number=number).first()
        if trial is None:
            raise CommandError(f"experiment {experiment.pk} has no trial {number}")
        path = Path(opts["output"] or f"nasboard-{experiment.pk}-trial-{number}.zip")
        if not path.parent.is_dir():
            raise CommandError(f"cannot write {path}: no folder {path.parent}")
        path.write_bytes(services.trial_export(experiment, trial))
        self.stdout.write(f"wrote {path} (trial {number}: {trial.arch_key}; "
                          f"{'trained weights' if trial.weights_path else 'untrained: its weights were not kept'})")

    def handle_recover(self, **opts: Any) -> None:
        ids = services.experiments_recover()
        self.stdout.write(f"queued again: {', '.join(map(str, ids)) or 'nothing to recover'}")

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
        if s["best"]:
            b = s["best"]
            test = "–" if b["test_acc"] is None else f"{100 * b['test_acc']:.2f}%"
            w(f"best: trial {b['number']} {b['arch']}  val {100 * b['val_acc']:.2f}%  test {test}  "
              f"params {b['params']:,}")
        for row in s.get("leaderboard", [])[:10]:
            w(f"  {row['rank']:>3}. #{row['number']:<4} {100 * row['val_acc']:6.2f}%  {row['params']:>10,}  "
              f"{row['arch_display']}")
