"""docker-compose.yml: the services a single-host deployment needs, sharing one volume, set by real settings."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _names_read_by_the_code() -> set[str]:
    """Every environment variable the settings, the engine or the container scripts read."""
    names: set[str] = set()
    settings = (ROOT / "webapp" / "settings.py").read_text()
    names |= set(re.findall(r'env_(?:str|int|bool|list)\(\s*"([A-Z0-9_]+)"', settings))
    for module in (ROOT / "nasjobs").rglob("*.py"):
        names |= set(re.findall(r'(?:environ\.get|_env_path|env_flag)\(\s*"([A-Z0-9_]+)"', module.read_text()))
    for script in ("worker.sh", "docker-entrypoint.sh"):
        names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", (ROOT / "scripts" / script).read_text()))
    return names


def test_it_runs_web_worker_postgres_and_redis(compose):
    services = compose["services"]
    assert set(services) == {"web", "worker", "postgres", "redis"}
    assert services["web"]["command"] == "web" and services["worker"]["command"] == "worker"
    assert services["postgres"]["image"] == "postgres:16" and "healthcheck" in services["postgres"]
    assert services["redis"]["image"] == "redis:7"
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    # Scaling `worker` needs no fixed container name or host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_web_and_workers_share_one_volume_for_artifacts_and_datasets(compose):
    services = compose["services"]
    for name in ("web", "worker"):
        env = services[name]["environment"]
        mounts = dict(volume.split(":", 1)[::-1] for volume in services[name]["volumes"])
        assert mounts == {"/data": "nasboard-data"}, name
        assert env["NAS_ARTIFACTS_DIR"].startswith("/data/") and env["NAS_DATA_DIR"].startswith("/data/"), name
    assert "nasboard-data" in compose["volumes"]


def test_it_points_at_its_own_database_and_broker_in_production_mode(compose):
    env = compose["services"]["web"]["environment"]
    assert env["DEBUG"] == "0"
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")  # required, never a default
    assert env["SECURE_COOKIES"] == "0"  # login over plain HTTP on localhost


def test_every_variable_it_sets_is_one_the_code_reads(compose):
    known = _names_read_by_the_code()
    for name in ("web", "worker"):
        unknown = set(compose["services"][name]["environment"]) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
