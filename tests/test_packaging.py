"""The licence: the repository's LICENSE is the Apache License 2.0 that pyproject names, and
the source distribution carries it with the licence expression (the wheel is checked in
test_wheel.py)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_license_file_is_the_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


@pytest.mark.slow
def test_sdist_carries_the_license_and_the_examples(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="hatchling is in the test extras")
    built = subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = tmp_path.glob("kbq-*.tar.gz")
    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/")[0]
        names = set(archive.getnames())
        metadata = archive.extractfile(f"{root}/PKG-INFO").read().decode("utf-8").splitlines()
        licence = archive.extractfile(f"{root}/LICENSE").read()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert licence == (REPO / "LICENSE").read_bytes()
    # the README's examples and the tests read these files
    for example in (REPO / "examples").rglob("*"):
        if example.is_file():
            assert f"{root}/{example.relative_to(REPO).as_posix()}" in names, example
