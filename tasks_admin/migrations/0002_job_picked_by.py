"""The pick hold gets its own columns: `locked_by`/`locked_until` are only the worker's lease.

A job that was queued with a pick hold in `locked_by` ("pick:…") keeps the hold's end in
`picked_until`, so no second cluster picks it while the first one still may start it.
"""

from django.db import migrations, models
from django.db.models import F, Value


def move_pick_holds(apps, schema_editor):
    Job = apps.get_model("tasks_admin", "Job")
    Job.objects.filter(status="queued").exclude(locked_by="").update(
        picked_by=F("locked_by"), picked_until=F("locked_until"), locked_by=Value(""), locked_until=None
    )


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_admin", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="picked_by",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
        migrations.AddField(
            model_name="job",
            name="picked_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(move_pick_holds, migrations.RunPython.noop),
    ]
