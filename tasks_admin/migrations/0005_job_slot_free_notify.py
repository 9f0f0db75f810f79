"""On PostgreSQL, a job that ends wakes the worker clusters too (LISTEN/NOTIFY).

A cluster picks only for its idle worker processes (tasks_admin.broker, `idle_slots`), so a
worker process that finishes a job is a reason to pick: without this its cluster would find
the next job at its next poll only (POLL_INTERVAL) while the queue waits. The notification
is 0003's function on the same channel.
"""

from importlib import import_module

from django.db import migrations

# 0003's: runs the SQL on PostgreSQL only.
on_postgresql = import_module("tasks_admin.migrations.0003_job_due_notify").on_postgresql

CREATE = """
CREATE TRIGGER job_slot_free_notify
    AFTER UPDATE OF status ON job
    FOR EACH ROW WHEN (OLD.status = 'processing' AND NEW.status <> 'processing')
    EXECUTE FUNCTION job_due_notify();
"""

DROP = "DROP TRIGGER IF EXISTS job_slot_free_notify ON job;"


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_admin", "0004_job_error_code_and_stats_indexes"),
    ]

    operations = [migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP))]
