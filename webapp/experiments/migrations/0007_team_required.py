import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Every experiment belongs to a team (a migration of its own: PostgreSQL cannot alter a table whose rows the
    previous step updated in the same transaction)."""

    dependencies = [("experiments", "0006_teams_review_audit"), ("teams", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="experiment",
            name="team",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="experiments",
                                    to="teams.team"),
        ),
    ]
