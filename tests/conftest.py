"""Shared fixtures. The broker fixture starts the repo's local Kafka, or reuses a running one;
every snapshot the run reads must decode with the seed's SDK (tests/conformance)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.sessioncheck import collecting, verify_collected

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"
EXTERNAL_BOOTSTRAP = os.environ.get("TEST_KAFKA_BOOTSTRAP")
"""Set it to run the suite against a broker you manage; the suite then never starts or stops one."""


def _broker_up() -> bool:
    status = subprocess.run(["bash", str(KAFKA_SCRIPT), "status"], capture_output=True, check=False)
    return status.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The local broker's address; never skipped: a missing broker fails the tests loudly."""
    if EXTERNAL_BOOTSTRAP:
        yield EXTERNAL_BOOTSTRAP
        return
    started = False
    if not _broker_up():
        subprocess.run(["bash", str(KAFKA_SCRIPT), "up"], check=True)
        started = True
    yield "127.0.0.1:9092"
    if started:
        subprocess.run(["bash", str(KAFKA_SCRIPT), "down"], check=False)


@pytest.fixture(scope="session", autouse=True)
def sdk_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the run if a snapshot the integration tests read or their workers published
    does not decode with the seed SDK's model (session.md: every snapshot must)."""
    path = ROOT / ".cache" / "conformance" / f"snapshots-{os.getpid()}.ndjson"
    with collecting(path):
        yield
    checked, failed = verify_collected(path)
    if failed is not None:
        pytest.fail(failed)
    ran_integration = any("integration" in item.path.parts for item in request.session.items)
    if ran_integration and not request.session.testsfailed and not checked:
        pytest.fail("SDK conformance: the integration tests ran but no snapshot was collected")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if checked and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # a figure worth seeing in every run
            reporter.write_line(f"SDK conformance: {checked} distinct snapshots decode")
