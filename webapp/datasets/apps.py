from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DatasetsConfig(AppConfig):
    name = "webapp.datasets"
    label = "datasets"
    verbose_name = "Datasets"

    def ready(self) -> None:
        from nasjobs.datasets import DATASETS
        from webapp.datasets import services

        # Stored datasets reach the engine through this one adapter; the engine itself knows no Django.
        DATASETS.install_resolver(services.dataset_folder_for_engine)
        post_migrate.connect(_sync_builtin, sender=self)


def _sync_builtin(sender, **kwargs) -> None:
    from webapp.datasets.services import datasets_sync_builtin

    datasets_sync_builtin()
