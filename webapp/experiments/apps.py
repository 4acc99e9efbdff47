import importlib

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class ExperimentsConfig(AppConfig):
    name = "webapp.experiments"
    label = "experiments"
    verbose_name = "NAS experiments"

    def ready(self) -> None:
        """Import the modules NAS_PLUGINS names: each registers its own spaces, strategies or estimators, in the
        web process and in every worker alike (a package can use entry points instead)."""
        for module in settings.NAS_PLUGINS:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ImproperlyConfigured(f"NAS_PLUGINS: cannot import {module!r}: {exc}") from exc
