from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('experiments', '0017_calibration_lease'),
    ]

    operations = [
        migrations.AddField(
            model_name='trial',
            name='resumed_from_epoch',
            field=models.PositiveIntegerField(
                blank=True, null=True,
                help_text="Its latest evaluation continued the trial's checkpoint at this epoch (an earlier worker "
                          "was lost or handed it back); empty: trained from the start"),
        ),
    ]
