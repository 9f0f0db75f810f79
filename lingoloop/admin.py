"""Admin pieces every app's admin uses."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Lists to read and forms that only show. The rows change through the API, the services
    and the admin's own actions (compare-and-set transitions), never by editing their fields,
    adding rows, or deleting them here: a plain delete would skip what those do (end a run,
    tell its watchers, remove its stored file). A subclass may allow deleting where that is
    safe."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
