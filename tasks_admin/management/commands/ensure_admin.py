"""Make sure an admin account exists; print its password once, when it is created."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the admin account (ADMIN_USERNAME / ADMIN_PASSWORD) if it does not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        username = os.environ.get("ADMIN_USERNAME", "admin")
        if User.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin account: {username!r} (exists; set a new password with "
                f"`python manage.py changepassword {username}`)."
            )
            return
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, password=password, email="")
        Token.objects.get_or_create(user=user)
        shown = password if "ADMIN_PASSWORD" not in os.environ else "(from ADMIN_PASSWORD)"
        self.stdout.write(
            self.style.SUCCESS(
                f"Created admin account {username!r} with password {shown}. "
                "This is the only time it is printed."
            )
        )
