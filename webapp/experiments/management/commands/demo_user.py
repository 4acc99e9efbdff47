"""`manage.py demo_user`: make sure the demo login exists, as admin of the demo team; its random password lives
in a git-ignored file."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from webapp.teams.models import Membership, Team


class Command(BaseCommand):
    help = "Create (once) the demo user and print its login."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--team", default="demo")
        parser.add_argument("--credentials-file", default=str(settings.VAR_DIR / "demo-credentials"))
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args: Any, **opts: Any) -> None:
        path = Path(opts["credentials_file"])
        username = opts["username"]
        password = path.read_text().strip() if path.exists() else ""
        if not password:
            password = secrets.token_urlsafe(12)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
        if not user.check_password(password):
            user.set_password(password)
            user.save()
        team, _ = Team.objects.get_or_create(name=opts["team"])
        Membership.objects.update_or_create(user=user, team=team, defaults={"role": Membership.Role.ADMIN})
        self.stdout.write(f"Log in at {opts['url']} as user '{username}' (team '{team.name}') with password "
                          f"'{password}' (kept in {path})")
