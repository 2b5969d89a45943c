"""YAML lint (config in .yamllint) and the documentation the manifests point at."""

from __future__ import annotations

import subprocess
from typing import Final

from tests.deploy.conftest import Tools
from tests.deploy.support import ROOT, load_yaml_documents, markdown_anchors

LINTED: Final = (ROOT / "deploy", ROOT / "tests" / "deploy", ROOT / ".yamllint")
README: Final = ROOT / "deploy" / "README.md"


def test_yamllint(tools: Tools) -> None:
    result = subprocess.run(
        [str(tools.yamllint), "--strict", "-c", str(ROOT / ".yamllint"), *map(str, LINTED)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_yaml_file_parses() -> None:
    files = [p for base in LINTED[:2] for p in base.rglob("*.y*ml")]
    assert len(files) >= 15
    for path in files:
        assert list(load_yaml_documents(path)), path


def test_readme_covers_operations() -> None:
    anchors = markdown_anchors(README)
    for section in ("build", "deploy", "configure", "scaling", "topics", "alerts-and-runbooks"):
        assert section in anchors, f"deploy/README.md lacks a '{section}' section"
