from django.conf import settings
from django.db import migrations


def into_demo_team(apps, schema_editor):
    """Existing experiments and users move into the demo team, so nobody loses what they could see."""
    Experiment = apps.get_model("experiments", "Experiment")
    Team = apps.get_model("teams", "Team")
    Membership = apps.get_model("teams", "Membership")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    if not Experiment.objects.exists() and not User.objects.exists():
        return
    team, _ = Team.objects.get_or_create(name="demo")
    Experiment.objects.filter(team__isnull=True).update(team=team)
    for experiment in Experiment.objects.all().only("pk", "budget", "epochs", "created_at"):
        Experiment.objects.filter(pk=experiment.pk).update(cost=experiment.budget * experiment.epochs,
                                                           admitted_at=experiment.created_at)
    for user in User.objects.all():
        Membership.objects.get_or_create(user=user, team=team,
                                         defaults={"role": "admin" if user.is_staff else "member"})


class Migration(migrations.Migration):
    """Data only, in a migration of its own: PostgreSQL cannot change a table's schema in the transaction that
    updated its rows (pending trigger events)."""

    dependencies = [("experiments", "0006_teams_review_audit"), ("teams", "0001_initial"),
                    migrations.swappable_dependency(settings.AUTH_USER_MODEL)]

    operations = [migrations.RunPython(into_demo_team, migrations.RunPython.noop)]
