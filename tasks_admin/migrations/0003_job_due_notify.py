"""On PostgreSQL, a job that becomes due wakes the worker clusters at once (LISTEN/NOTIFY).

A trigger, not a call in each Python path: every way a job becomes waiting (enqueued, a retry,
a hand-back, a reaped lease, a dropped pick, an operator's UPDATE in psql) notifies, with no
extra query. The row must be queued and not picked; a pick, or a web process holding its
sync job, sets `picked_until` and so stays silent. NOTIFY inside a transaction is delivered
by PostgreSQL when it commits, and identical ones in one transaction are sent once. A retry
that is due only later wakes the clusters for nothing; their poll finds it when it is due.
"""

from django.db import migrations

CHANNEL = "lingoloop_job_due"  # tasks_admin.broker.NOTIFY_CHANNEL

CREATE = f"""
CREATE OR REPLACE FUNCTION job_due_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER job_due_notify
    AFTER INSERT OR UPDATE OF status, run_after, picked_until ON job
    FOR EACH ROW WHEN (NEW.status = 'queued' AND NEW.picked_until IS NULL)
    EXECUTE FUNCTION job_due_notify();
"""

DROP = """
DROP TRIGGER IF EXISTS job_due_notify ON job;
DROP FUNCTION IF EXISTS job_due_notify();
"""


def on_postgresql(sql: str):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_admin", "0002_job_picked_by"),
    ]

    operations = [migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP))]
