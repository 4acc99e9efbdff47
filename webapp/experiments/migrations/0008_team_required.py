import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Every experiment belongs to a team."""

    dependencies = [("experiments", "0007_into_demo_team"), ("teams", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="experiment",
            name="team",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="experiments",
                                    to="teams.team"),
        ),
    ]
