"""deploy/Dockerfile, .dockerignore and the runtime lock, checked without a Docker engine."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from packaging.requirements import Requirement

from tests.deploy.conftest import Tools
from tests.deploy.lockfile import CONSTRAINTS, expected_pins, read_pins, runtime_requirements
from tests.deploy.support import ROOT, Manifests, pod_spec
from worker.settings import Settings

DOCKERFILE: Final = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
BUILD_TOOLS: Final = ("gcc", "g++", "build-essential", "make", "cc ", "clang", "python3-dev")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuations joined and comments dropped (enough for checks)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "dangling line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final_stage() -> list[Instruction]:
    return stages(parse(DOCKERFILE))[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def test_hadolint(tools: Tools) -> None:
    result = subprocess.run(
        [str(tools.hadolint), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_slim_python_3_11() -> None:
    instructions = parse(DOCKERFILE)
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1]
        for i in instructions
        if i.keyword == "ARG" and "=" in i.args
    }
    # Debian 13 (trixie), the current stable, pinned by digest.
    assert re.fullmatch(r"python:3\.11-slim-trixie@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert not froms[-1].split()[1:], "the final stage is unnamed and built last"


def test_an_init_is_pid_1_so_sigterm_works_from_the_first_instant() -> None:
    """A PID 1 without a handler ignores SIGTERM; under tini the worker is not PID 1."""
    stage = final_stage()
    entrypoint = json.loads(only(stage, "ENTRYPOINT").args)
    command = json.loads(only(stage, "CMD").args)
    with (ROOT / "pyproject.toml").open("rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    assert entrypoint == ["/usr/bin/tini", "--", "session-worker"]
    copies = [i.args.split() for i in stage if i.keyword == "COPY"]
    assert ["--from=build", "/usr/bin/tini", "/usr/bin/tini"] in copies
    assert "session-worker" in scripts
    assert command == ["run"]
    stop = [i for i in stage if i.keyword == "STOPSIGNAL"]
    assert all(i.args == "SIGTERM" for i in stop)


def test_runs_as_the_non_root_user_the_pod_expects(overlay: Manifests) -> None:
    user = only(final_stage(), "USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric: runAsNonRoot can only verify a number"
    assert int(uid) > 0
    security = pod_spec(overlay.one("Deployment", "session-worker"))["securityContext"]
    assert security["runAsUser"] == int(uid)
    assert not gid or security["runAsGroup"] == int(gid)
    last_user_index = max(i for i, x in enumerate(final_stage()) if x.keyword == "USER")
    assert all(x.keyword != "RUN" for x in final_stage()[last_user_index:])


def test_final_stage_has_no_build_tools_or_healthcheck() -> None:
    stage = final_stage()
    runs = " ".join(i.args for i in stage if i.keyword == "RUN")
    assert "pip install" not in runs
    assert "pip uninstall --yes pip setuptools wheel" in runs, "no installer at run time"
    assert "rm -rf /usr/local/lib/python3.11/ensurepip" in runs
    assert "apt-get" not in runs
    assert not any(tool in runs for tool in BUILD_TOOLS)
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert copies
    assert all(c.startswith("--from=") for c in copies), "only the built venv"
    assert not any(i.keyword == "HEALTHCHECK" for i in stage), "Kubernetes probes instead"


def test_exposes_the_worker_port() -> None:
    assert only(final_stage(), "EXPOSE").args == str(Settings.model_fields["http_port"].default)


def test_dependencies_come_from_the_lock() -> None:
    installs = [
        part
        for i in parse(DOCKERFILE)
        if i.keyword == "RUN"
        for part in i.args.split("&&")
        if re.search(r"\bpip (--python \S+ )?install\b", part)
    ]
    assert installs, "dependencies are installed with pip"
    for command in installs:
        assert "--no-deps" in command, f"resolution must not go past the lock: {command}"
        from_index = "--requirement" in command
        assert not from_index or "--require-hashes" in command, command
        assert from_index or "--no-index" in command, f"only hashed files from the index: {command}"
    lock = "deploy/constraints.txt"
    assert any(lock in c and "--only-binary=:all:" in c for c in installs)
    assert any("/opt/venv" in c and lock in c for c in installs), "the runtime venv gets the lock"
    runs = " ".join(i.args for i in parse(DOCKERFILE) if i.keyword == "RUN")
    assert "pip --python /opt/venv/bin/python check" in runs
    assert "python -m venv --without-pip /opt/venv" in runs, "no pip in the runtime venv"
    with (ROOT / "pyproject.toml").open("rb") as handle:
        version = tomllib.load(handle)["project"]["version"]
    assert f"session-worker=={version}" in runs, "the worker's own wheel, this version"


def test_constraints_match_the_venv() -> None:
    """Regenerate with `.venv/bin/python -m tests.deploy.lockfile --write`."""
    pins = read_pins(CONSTRAINTS.read_text())
    assert {name: version for name, (version, _) in pins.items()} == expected_pins()


def test_constraints_are_runtime_only_pinned_and_hashed() -> None:
    for path in (CONSTRAINTS, ROOT / "deploy" / "build-constraints.txt"):
        for name, (version, hashes) in read_pins(path.read_text()).items():
            pin = Requirement(f"{name}=={version}")
            assert len(pin.specifier) == 1
            assert hashes, f"{name}: no --hash (the image installs with --require-hashes)"
            assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in hashes), name
    names = set(read_pins(CONSTRAINTS.read_text()))
    assert {r.name for r in runtime_requirements()} <= names
    dev_only = {"pytest", "mypy", "ruff", "hypothesis", "yamllint", "kubernetes-validate"}
    installers = {"pip", "setuptools", "wheel"}
    assert not names & (dev_only | installers)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for instruction in parse(DOCKERFILE):
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            sources.extend(instruction.args.split()[:-1])
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert not _ignored(path, patterns), f"{source} is excluded by .dockerignore"
        if (ROOT / path).is_dir():
            for child in (ROOT / path).rglob("*.py"):
                assert not _ignored(str(child.relative_to(ROOT)), patterns), child
    for private in (".venv", ".git", ".cache", "tests", "deploy/k8s", ".env"):
        assert _ignored(private, patterns), f"{private} would be sent to the builder"
