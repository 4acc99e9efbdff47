"""`make run`'s script serves on the port PORT names, and refuses one that is not a number."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def checkout(tmp_path: Path) -> Path:
    """A copy of the scripts beside the repository's code and virtualenv, so the run writes its .env and
    database in a temp dir rather than in the checkout."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("run.sh", "ensure-redis.sh"):
        (root / "scripts" / name).write_bytes((ROOT / "scripts" / name).read_bytes())
        (root / "scripts" / name).chmod(0o755)
    for name in ("manage.py", "webapp", "nasjobs", "templates"):
        (root / name).symlink_to(ROOT / name)
    venv = ROOT / ".venv" if (ROOT / ".venv").exists() else Path(os.environ.get("VIRTUAL_ENV", "/work/main/.venv"))
    (root / ".venv").symlink_to(venv)
    return root


def test_port_chooses_where_the_web_server_listens(tmp_path):
    root = checkout(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = f"run-script-{uuid.uuid4().hex[:8]}"  # queues of its own: it never takes another run's tasks
    env = {**os.environ, "PORT": str(port), "NAS_VAR_DIR": str(tmp_path / "var"), "NAS_GPU_QUEUE": f"{queue}-gpu",
           "NAS_CPU_QUEUE": f"{queue}-cpu", "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}"}
    # Ctrl-C as a terminal delivers it: to a script whose SIGINT is not ignored (a test run started in the
    # background, as CI may start it, would otherwise hand its ignored SIGINT down, and the script's trap with it).
    proc = subprocess.Popen(["scripts/run.sh"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, body = time.monotonic() + 240, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert '"ok"' in body, proc.stdout.read1().decode() if proc.poll() is not None else "no answer"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out = proc.communicate(timeout=180)[0].decode()  # a warm shutdown on a busy machine takes its time
        except subprocess.TimeoutExpired as stuck:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of it outlives the test
            raise AssertionError("make run did not stop within 180 s of Ctrl-C:\n" + (stuck.output or b"").decode(
                errors="replace")[-4000:]) from None
    assert f"running at http://127.0.0.1:{port}/" in out and "nasboard stopped." in out


def test_a_port_that_is_not_a_number_is_refused(tmp_path):
    done = subprocess.run(["scripts/run.sh"], cwd=checkout(tmp_path), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PORT": "80a"})
    assert done.returncode == 2 and "PORT must be a number" in done.stderr
