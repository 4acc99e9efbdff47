"""The README's settings table names every environment variable the code reads, so an operator finds them all."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Set by the scripts for the processes they start, or by the environment itself, not by an operator.
NOT_SETTINGS = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "DJANGO_SETTINGS_MODULE", "HOME", "PATH", "PWD"}


def names_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for module in [*(ROOT / "webapp").rglob("*.py"), *(ROOT / "nasjobs").rglob("*.py")]:
        text = module.read_text()
        names |= set(re.findall(r'env_(?:str|int|bool|list)\(\s*"([A-Z0-9_]+)"', text))
        names |= set(re.findall(r'(?:environ\.get|_env_path|env_flag)\(\s*"([A-Z0-9_]+)"', text))
    for script in (ROOT / "scripts").glob("*.sh"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script.read_text()))
    return names - NOT_SETTINGS


def test_every_setting_the_code_reads_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable | default | meaning |"):readme.index("## Running on several machines")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(line.split("|")[1] for line in
                                                                  table.splitlines() if line.startswith("| `"))))
    read = names_read_by_the_code()
    assert {"SECRET_KEY", "SECURE_COOKIES", "NAS_LOGIN_FAILURE_LIMIT", "PORT"} <= read
    assert not read - documented, f"read by the code but not in the README's settings table: {sorted(read - documented)}"
