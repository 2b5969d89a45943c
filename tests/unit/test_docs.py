"""The README documents what the code really reads (no drift between docs and settings)."""

from __future__ import annotations

from pathlib import Path

from worker.__main__ import flag_name
from worker.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_env_and_flag() -> None:
    missing = [
        name
        for name in Settings.model_fields
        if f"`WORKER_{name.upper()}` | `{flag_name(name)}`" not in README
    ]
    assert missing == []


def test_the_readme_names_no_setting_that_does_not_exist() -> None:
    known = {f"WORKER_{name.upper()}" for name in Settings.model_fields}
    mentioned = {word.strip("`|$\"'=,.:()") for word in README.split() if "WORKER_" in word}
    mentioned = {w[w.index("WORKER_") :].split("=")[0] for w in mentioned}
    assert mentioned - known - {"WORKER_<NAME>"} == set()
