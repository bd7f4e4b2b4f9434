"""Shared fixtures: a fresh in-process service built by the real container."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from arrwdb.config import Settings
from arrwdb.container import build_container
from arrwdb.domain.service import VectorDBService

# CI is derandomized so that a red build can be reproduced; locally examples vary run to run.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def make_service() -> Iterator[type[VectorDBService]]:
    """Build services through the container; every one built is shut down after the test."""
    containers = []

    def build(**options: object) -> VectorDBService:
        container = build_container(Settings(**options))  # type: ignore[arg-type]
        container.init_resources()
        containers.append(container)
        return container.service()

    yield build  # type: ignore[misc]
    for container in containers:
        container.shutdown_resources()


@pytest.fixture
def service(make_service) -> VectorDBService:  # type: ignore[no-untyped-def]
    return make_service()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema name, dropped after the test (skips without PostgreSQL)."""
    import pg

    pg.require()
    schema = pg.new_schema()
    yield schema
    pg.drop(schema)
