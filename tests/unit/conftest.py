"""Unit-test fixtures: no broker, no clock, no network."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from tests.unit.builders import DEFAULT_RULES, load_schema
from worker.store import SessionStore


@pytest.fixture(scope="session")
def schema() -> Draft202012Validator:
    """A validator for docs/session.schema.json (the schema itself is checked first)."""
    document = load_schema()
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


@pytest.fixture
def store() -> SessionStore:
    return SessionStore(DEFAULT_RULES)
