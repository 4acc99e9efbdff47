"""Site-wide views: the health check a load balancer or `docker compose` polls, the login and its lockout."""
from __future__ import annotations

import functools
import math
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers, 503 otherwise; says nothing else about the site."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})


class LoginView(auth_views.LoginView):
    """Django's login, offering a password reset only where one can actually send its mail."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "password_reset": settings.NAS_PASSWORD_RESET}


def only_with_mail(view):
    """A password-reset view that is a 404 unless a mail server is configured (`EMAIL_HOST`)."""
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.NAS_PASSWORD_RESET:
            raise Http404("password reset is not offered: no mail server is configured")
        return view(request, *args, **kwargs)
    return login_not_required(wrapped)


def lockout(request: HttpRequest, original_response: HttpResponse | None = None,
            credentials: dict | None = None) -> HttpResponse:
    """django-axes' answer to a login refused for too many failures: 429 saying when to try again (JSON with a
    Retry-After under /api/). A failure during the lockout restarts the cool-off, so it runs from now."""
    cool_off = settings.AXES_COOLOFF_TIME
    seconds = int(cool_off.total_seconds())
    retry_at = timezone.now() + cool_off
    wait = f"{math.ceil(seconds / 60)} minutes" if seconds >= 120 else f"{seconds} seconds"
    message = (f"Too many failed logins for this username from your address: try again in {wait} "
               f"(after {retry_at:%H:%M:%S} UTC). Each further attempt before then restarts the wait.")
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": message, "retry_after_seconds": seconds}, status=429)
    else:
        response = render(request, "registration/lockout.html", {"message": message}, status=429)
    response["Retry-After"] = str(seconds)
    return response
