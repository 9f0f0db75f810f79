from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class TasksAdminConfig(AppConfig):
    name = "tasks_admin"
    verbose_name = "Job queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Handlers of other apps register themselves in their own ready(); these are extra
        # ones named by configuration (for example a deployment's own job types).
        for module in settings.JOB_HANDLER_MODULES:
            import_module(module)

        from lingoloop.metrics import register_collector
        from tasks_admin.metrics import JobTableCollector

        register_collector(JobTableCollector())
