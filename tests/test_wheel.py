"""The built wheel: it carries the cases, migrations and data files, and works installed elsewhere.

Builds the wheel from the repository, installs it into a private directory
and runs its ``kbq`` script from outside the repository, so nothing can be
read from the source checkout by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASE_FILES = sorted(p.name for p in (REPO / "cases").glob("*.yaml"))

pytestmark = pytest.mark.slow


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    common = ("wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), str(REPO))
    built = _pip(*common[:2], "--no-build-isolation", *common[2:], cwd=out)
    if built.returncode != 0:  # hatchling missing from this environment: let pip fetch it
        built = _pip(*common, cwd=out)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(out.glob("kbq-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("target")
    done = _pip("install", "--no-deps", "--disable-pip-version-check", "--target", str(target), str(wheel), cwd=target)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture
def outside_env(installed: Path, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBQ_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(installed), HOME=str(home), KBQ_HOME=str(home / "kbq"), XDG_DATA_HOME=str(home / "xdg"))
    return env


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    bundled_cases = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("kb/_bundled/cases/") and n.endswith(".yaml"))
    assert len(bundled_cases) >= 5
    assert bundled_cases == CASE_FILES
    for required in (
        "kb/_bundled/migrations/env.py",
        "kb/_bundled/migrations/versions/0001_initial.py",
        "kb/_bundled/migrations/versions/0002_feedback_and_chat.py",
        "kb/_bundled/migrations/versions/0003_github_bot.py",
        "kb/_bundled/migrations/versions/0004_case_threads.py",
        "kb/data/github_bot.yaml",
        "kb/data/chat.yaml",
        "api/app.py",
        "kb/data/lexicon.yaml",
        "kb/data/weights.yaml",
        "kb/data/stopwords.yaml",
        "kb/__init__.py",
        "kb/service.py",
        "cli/main.py",
        "cli/render.py",
        "api/web/templates/search.html",
        "api/web/templates/case.html",
        "api/web/static/app.css",
        "api/web/static/app.js",
    ):
        assert required in names, required
    assert not any(n.startswith("tests/") for n in names)
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("kbq-0.1.0.dist-info/METADATA").decode("utf-8")
        licence = archive.read("kbq-0.1.0.dist-info/licenses/LICENSE")
    assert "License-Expression: Apache-2.0" in metadata.splitlines() and "License-File: LICENSE" in metadata.splitlines()
    assert licence == (REPO / "LICENSE").read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "kbq = cli.main:run" in archive.read(entry_points).decode()
        for name in CASE_FILES:
            assert archive.read(f"kb/_bundled/cases/{name}") == (REPO / "cases" / name).read_bytes()


def test_installed_wheel_answers_from_outside_the_repo(installed: Path, outside_env: dict[str, str], tmp_path: Path) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    assert REPO not in workdir.parents

    where = subprocess.run(
        [sys.executable, "-c", "import kb, cli.main, kb.paths as p; print(kb.__file__); print(cli.main.__file__); print(p.bundled_cases_dir())"],
        env=outside_env, cwd=workdir, capture_output=True, text=True, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    kb_file, cli_main_file, cases_dir = (Path(line) for line in where.stdout.splitlines())
    # cli has no __init__.py: check the module the console script imports
    for path in (kb_file, cli_main_file, cases_dir):
        assert installed.resolve() in path.resolve().parents, path
    assert cases_dir.resolve() == (installed / "kb" / "_bundled" / "cases").resolve()

    script = installed / "bin" / "kbq"
    assert script.is_file()
    proc = subprocess.run(
        [str(script), "gemma3 loss 70 zero3", "--json"],
        env=outside_env, cwd=workdir, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["results"][0]["id"] == "llamafactory-7416"
    assert data["case_count"] == len(CASE_FILES)
    assert (Path(outside_env["KBQ_HOME"]) / "kbq.db").is_file()
    assert not list(workdir.iterdir()), "kbq wrote into the working directory"

    version = subprocess.run([str(script), "--version"], env=outside_env, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("kbq ")
