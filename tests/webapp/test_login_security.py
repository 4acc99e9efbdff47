"""Logins: throttled after repeated failures (web, admin, API token), a password reset offered only with a mail
server, and production settings that log in over plain HTTP when told to and pass `check --deploy`."""
from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
import requests
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.conftest import ROOT

LIMIT = 3


@pytest.fixture
def throttled(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    return settings


def client_from(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def fail(client: Client, url: str, username: str, times: int) -> None:
    for _ in range(times):
        response = client.post(url, {"username": username, "password": "not-the-password"})
        assert response.status_code in (200, 400), response.status_code  # the form again: no lockout yet


def test_failed_logins_lock_out_the_user_and_address_and_a_correct_password_is_refused(throttled, alice, carol):
    mallory = client_from("203.0.113.7")
    fail(mallory, reverse("login"), "alice", LIMIT - 1)
    locked = mallory.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429
    text = locked.content.decode()
    assert "Too many failed logins" in text and "try again in 15 minutes" in text and "UTC" in text
    assert locked["Retry-After"] == "900"
    during = mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"})
    assert during.status_code == 429 and "_auth_user_id" not in mallory.session
    # The lockout is for this (user, address) pair: alice from elsewhere, and carol from here, still log in.
    assert client_from("198.51.100.2").post(reverse("login"), {"username": "alice",
                                                               "password": "alice-pass-123"}).status_code == 302
    assert mallory.post(reverse("login"), {"username": "carol", "password": "carol-pass-123"}).status_code == 302


def test_the_admin_login_and_the_api_token_share_the_lockout(throttled, alice):
    mallory = client_from("203.0.113.8")
    fail(mallory, reverse("admin:login"), "alice", 1)
    fail(mallory, reverse("api-token"), "alice", 1)
    locked = mallory.post(reverse("api-token"), {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429 and locked["Content-Type"] == "application/json"
    assert "try again in 15 minutes" in locked.json()["detail"] and locked.json()["retry_after_seconds"] == 900
    refused = mallory.post(reverse("api-token"), {"username": "alice", "password": "alice-pass-123"})
    assert refused.status_code == 429 and "token" not in refused.json()
    admin = mallory.post(reverse("admin:login"), {"username": "alice", "password": "alice-pass-123"})
    assert admin.status_code == 429 and "_auth_user_id" not in mallory.session


def test_the_lockout_ends_after_the_cool_off(throttled, alice):
    throttled.AXES_COOLOFF_TIME = timedelta(seconds=4)  # longer than the failures take here
    mallory = client_from("203.0.113.9")
    fail(mallory, reverse("login"), "alice", LIMIT - 1)
    assert mallory.post(reverse("login"), {"username": "alice", "password": "wrong"}).status_code == 429
    assert mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"}).status_code == 429
    time.sleep(4.2)
    assert mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"}).status_code == 302


def test_axes_reset_lifts_a_lockout_at_once(throttled, alice):
    mallory = client_from("203.0.113.10")
    fail(mallory, reverse("login"), "alice", LIMIT - 1)
    assert mallory.post(reverse("login"), {"username": "alice", "password": "wrong"}).status_code == 429
    assert mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"}).status_code == 429
    call_command("axes_reset_username", "alice")
    assert mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"}).status_code == 302


def test_only_failures_in_a_row_count(throttled, alice):
    mallory = client_from("203.0.113.11")
    for _ in range(3):
        fail(mallory, reverse("login"), "alice", LIMIT - 1)
        assert mallory.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"}).status_code == 302
        mallory.logout()


def test_without_a_mail_server_no_password_reset_is_offered(client, settings, alice):
    settings.NAS_PASSWORD_RESET = False
    page = client.get(reverse("login")).content.decode()
    assert "password_reset" not in page and "Forgot" not in page
    admin_page = client.get(reverse("admin:login")).content.decode()
    assert "Forgotten your password" not in admin_page
    for url in (reverse("password_reset"), reverse("password_reset_done"), reverse("password_reset_complete")):
        assert client.get(url).status_code == 404
    assert client.post(reverse("password_reset"), {"email": "alice@example.org"}).status_code == 404
    assert not mail.outbox


def test_with_a_mail_server_a_password_reset_mails_a_working_link(client, settings, alice):
    settings.NAS_PASSWORD_RESET = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    alice.email = "alice@example.org"
    alice.save()
    assert reverse("password_reset") in client.get(reverse("login")).content.decode()
    sent = client.post(reverse("password_reset"), {"email": "alice@example.org"})
    assert sent.status_code == 302 and sent["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.org"]
    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert form.status_code == 200
    done = client.post(form.redirect_chain[-1][0], {"new_password1": "a-new-long-pass-42",
                                                     "new_password2": "a-new-long-pass-42"})
    assert done.status_code == 302 and done["Location"] == reverse("password_reset_complete")
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-pass-42")


# Production settings, in processes of their own (DEBUG and the cookie flags are read once, at start-up) --------

def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50),
            "NAS_ENV_FILE": "", "NAS_VAR_DIR": str(tmp_path), "LOG_LEVEL": "WARNING", **extra}


def test_check_deploy_is_clean_with_secure_cookies_on(tmp_path):
    env = production_env(tmp_path, SECURE_COOKIES="1", ALLOWED_HOSTS="nas.example.org")
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout and "WARNING" not in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SET_UP = """
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
call_command("nas", "team", "add", "ops")
call_command("nas", "user", "add", "olga", "--team", "ops")
"""


@pytest.fixture(scope="module")
def production_site(tmp_path_factory) -> Iterator[callable]:
    """Starts gunicorn with production settings over plain HTTP on a fresh database with one user."""
    tmp_path = tmp_path_factory.mktemp("production")
    base = production_env(tmp_path, ALLOWED_HOSTS="127.0.0.1", SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="0",
                          DJANGO_SETTINGS_MODULE="webapp.settings", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SET_UP], cwd=ROOT, capture_output=True, text=True,
                          env={**base, "NAS_PASSWORD": "olga-pass-12345"}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    started: list[subprocess.Popen] = []

    def start(**extra: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind",
                                 f"127.0.0.1:{port}", "--workers", "1"], cwd=ROOT, env={**base, **extra},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # a busy 2-core machine takes tens of seconds to import torch
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                    return url
            except requests.RequestException:
                time.sleep(0.5)
        proc.kill()
        raise AssertionError(proc.stderr.read().decode()[-3000:])

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def log_in(url: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{url}/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session, session.post(f"{url}/accounts/login/", timeout=10, allow_redirects=False,
                                 data={"username": "olga", "password": "olga-pass-12345",
                                       "csrfmiddlewaretoken": token}, headers={"Referer": f"{url}/accounts/login/"})


def test_production_settings_log_in_over_plain_http_with_secure_cookies_off(production_site):
    url = production_site(SECURE_COOKIES="0")
    session, response = log_in(url)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    home = session.get(f"{url}/", timeout=10)
    assert home.status_code == 200 and "olga" in home.text and home.url == f"{url}/"


def test_secure_cookies_over_plain_http_are_what_breaks_the_login(production_site):
    url = production_site(SECURE_COOKIES="1")
    _, response = log_in(url)
    assert response.status_code == 403 and "CSRF" in response.text  # the browser never sent the Secure cookie back
