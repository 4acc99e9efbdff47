"""Existing experiments and users move into the demo team when the teams migrations run."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)
BEFORE = [("experiments", "0005_calibration")]


def test_existing_experiments_and_users_migrate_into_the_demo_team():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    User = old.get_model("auth", "User")
    owner = User.objects.create(username="old-owner")
    User.objects.create(username="old-staff", is_staff=True)
    old.get_model("experiments", "Experiment").objects.create(
        name="legacy", dataset="digits", space="chain_cnn", strategy="random", estimator="train", budget=4, epochs=2,
        seed=0, created_by_id=owner.pk)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from webapp.experiments.models import Experiment
    from webapp.teams.models import Membership

    legacy = Experiment.objects.get(name="legacy")
    assert legacy.team.name == "demo" and legacy.cost == 8 and legacy.admitted_at is not None
    assert sorted(Membership.objects.values_list("user__username", "role")) == [
        ("old-owner", "member"), ("old-staff", "admin")]
