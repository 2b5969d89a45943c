"""Fixtures for the offline deploy checks: tools (installed on demand), rendered manifests.

Nothing here is skipped when a tool is missing: the session fixture runs
scripts/install-deploy-tools.sh (idempotent, caches under .cache/) and fails loudly if it
cannot provide a tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.deploy.support import Manifests

ROOT: Final = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT: Final = ROOT / "scripts" / "install-deploy-tools.sh"
TOOLS_BIN: Final = ROOT / ".cache" / "bin"
VENV_BIN: Final = ROOT / ".venv" / "bin"
K8S: Final = ROOT / "deploy" / "k8s"


TOOL_BUILD_TIMEOUT_S: Final = 1800
"""Building promtool from source on a new machine takes minutes (once); see the hook below."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """While a tool is missing, the first deploy test also builds it: give it the time.

    Once everything is installed (the usual case) the suite's normal timeout applies.
    """
    deploy_items = [i for i in items if Path(i.path).is_relative_to(Path(__file__).parent)]
    if not deploy_items:
        return
    check = subprocess.run(["bash", str(INSTALL_SCRIPT), "--check"], check=False)
    if check.returncode != 0:
        for item in deploy_items:
            item.add_marker(pytest.mark.timeout(TOOL_BUILD_TIMEOUT_S))


@dataclass(frozen=True, slots=True)
class Tools:
    kustomize: tuple[str, ...]
    """argv prefix that renders a kustomization directory given as the last argument."""
    hadolint: Path
    yamllint: Path
    promtool: Path

    def render(self, directory: Path) -> list[dict[str, Any]]:
        result = subprocess.run(
            [*self.kustomize, str(directory)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"kustomize failed for {directory}:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kustomize_argv() -> tuple[str, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return (kubectl, "kustomize")
    return (str(TOOLS_BIN / "kustomize"), "build")


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Runs the install script (a no-op once everything is there), then finds each tool."""
    subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, env=os.environ.copy())
    found = Tools(
        kustomize=_kustomize_argv(),
        hadolint=VENV_BIN / "hadolint",
        yamllint=VENV_BIN / "yamllint",
        promtool=TOOLS_BIN / "promtool",
    )
    for path in (Path(found.kustomize[0]), found.hadolint, found.yamllint, found.promtool):
        assert path.is_file(), f"{path} missing after install"
        assert os.access(path, os.X_OK), f"{path} is not executable"
    return found


@pytest.fixture(scope="session")
def overlay(tools: Tools) -> Manifests:
    """The example overlay, rendered: what an environment would apply."""
    return Manifests(tools.render(K8S / "overlays" / "example"))


@pytest.fixture(scope="session")
def base(tools: Tools) -> Manifests:
    return Manifests(tools.render(K8S / "base"))


@pytest.fixture(scope="session")
def topics(tools: Tools) -> Manifests:
    return Manifests(tools.render(K8S / "topics"))


@pytest.fixture
def clean_worker_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No WORKER_* from the caller's environment leaks into a Settings() built in a test."""
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    return monkeypatch
