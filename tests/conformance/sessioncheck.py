"""The SDK conformance checker: build the Go decoder of this directory and run it.

`sessioncheck` (main.go, session.go) decodes snapshots with the seed SDK's Session model as
the SDK's generated code does; see livepeer-go-session.md in the shared spec. The build is
hermetic: standard library only, the local toolchain, and caches under the repo's .cache,
so it works on a clean clone without network. Snapshots the integration suite reads are
collected here (`collect`) and checked once at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

SOURCE: Final = Path(__file__).resolve().parent
ROOT: Final = SOURCE.parents[1]
CACHE: Final = ROOT / ".cache"
BINARY: Final = CACHE / "conformance" / "sessioncheck"
GO_FALLBACKS: Final = (Path("/usr/local/go/bin/go"), Path("/usr/lib/go/bin/go"))
"""Where Go's official installer and Debian put the toolchain, in case PATH lacks it."""
BUILD_TIMEOUT_S: Final = 300


class CheckerError(RuntimeError):
    """The checker could not be built or run (not a decode failure)."""


def _go() -> str:
    found = shutil.which("go") or next((str(p) for p in GO_FALLBACKS if p.exists()), None)
    if found is None:
        raise CheckerError("the Go toolchain is needed for the SDK conformance check: no `go`")
    return found


@functools.cache
def build_checker() -> Path:
    """Build (incrementally, through Go's build cache) and return the checker binary."""
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",  # never download another toolchain
        "GOPROXY": "off",  # no modules to fetch: standard library only
        "GOENV": "off",
        "GOWORK": "off",
        "GOFLAGS": "-buildvcs=false",
        "CGO_ENABLED": "0",
        "GOCACHE": str(CACHE / "go-build"),
        "GOPATH": str(CACHE / "gopath"),
    }
    done = subprocess.run(
        [_go(), "build", "-o", str(BINARY), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise CheckerError(f"go build of {SOURCE} failed:\n{done.stderr}")
    return BINARY


@dataclass(frozen=True)
class CheckResult:
    decoded: int
    failures: list[str]
    """One line per snapshot that did not decode: `line N: <error> (id <id>)`."""


def check_snapshots(snapshots: Iterable[bytes]) -> CheckResult:
    """Decode every snapshot (one JSON value each) with the SDK model."""
    payload = b"".join(snapshot.rstrip(b"\n") + b"\n" for snapshot in snapshots)
    return check_ndjson(payload)


def check_ndjson(payload: bytes) -> CheckResult:
    done = subprocess.run(
        [str(build_checker())], input=payload, capture_output=True, timeout=120, check=False
    )
    if done.returncode not in (0, 1):
        raise CheckerError(f"sessioncheck failed to run: {done.stderr.decode(errors='replace')}")
    failures = done.stdout.decode(errors="replace").splitlines()
    if (done.returncode == 1) != bool(failures):
        raise CheckerError(f"sessioncheck exit {done.returncode} with {len(failures)} failures")
    total = sum(1 for line in payload.splitlines() if line.strip())
    return CheckResult(total - len(failures), failures)


# ------------------------------------------------------------- snapshots of the whole run

_sink: IO[bytes] | None = None
_seen: set[bytes] = set()
"""Digests of the values collected: tests poll whole topics, so most reads repeat."""


def collect(values: Iterable[bytes | None]) -> None:
    """Keep snapshot values for the end-of-run check; a no-op outside a collecting run."""
    if _sink is None:
        return
    for value in values:
        if value is None:
            continue
        digest = hashlib.blake2b(value, digest_size=16).digest()
        if digest not in _seen:
            _seen.add(digest)
            _sink.write(value.rstrip(b"\n") + b"\n")
    _sink.flush()


@contextmanager
def collecting(path: Path) -> Iterator[Path]:
    """Collect into `path` (truncated) while the block runs. Nests: the checker's own tests
    collect inside the run-wide collection, which resumes (with what it had seen) after."""
    global _sink, _seen  # one collection at a time; the session fixture holds the outermost
    path.parent.mkdir(parents=True, exist_ok=True)
    outer = _sink, _seen
    with path.open("wb") as sink:
        _sink, _seen = sink, set()
        try:
            yield path
        finally:
            _sink, _seen = outer


def verify_collected(path: Path) -> tuple[int, str | None]:
    """The end-of-run verdict on a collection file: (snapshots checked, None) when every
    one decodes (the file is then removed), else a report naming the failures (the file is
    kept for inspection)."""
    if path.stat().st_size == 0:
        path.unlink()
        return 0, None
    result = check_ndjson(path.read_bytes())
    total = result.decoded + len(result.failures)
    if not result.failures:
        path.unlink()
        return total, None
    shown = "\n".join(result.failures[:20])
    return total, (
        f"{len(result.failures)} of {total} snapshots of this run do not decode with the seed's"
        f" SDK (tests/conformance; all kept in {path}):\n{shown}"
    )
