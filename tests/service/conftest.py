"""Fixtures for the service tests: the app in process, real servers on loopback where a process is needed;
SQLite always, PostgreSQL when configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.service.harness import Api, InProcessServer, ServerProcess

POSTGRES_URL_VARIABLE = "SECAGG_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgres")


def postgres_url_or_skip() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (set by .ci/run); skipped locally without it")
    return url


def fresh_postgres_database(base_url: str) -> str:
    """A new, empty database on the test cluster (one per server fixture), so runs never share state."""
    import sqlalchemy

    name = "secagg_" + uuid.uuid4().hex[:16]
    admin_engine = sqlalchemy.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin_engine.dispose()
    return str(sqlalchemy.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False))


def database_url_for(backend: str) -> str | None:
    if backend == "sqlite":
        return None
    return fresh_postgres_database(postgres_url_or_skip())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        postgres_url_or_skip()
    return request.param


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    started: list[ServerProcess] = []

    def start(backend: str = "sqlite", *, workers: int = 1) -> ServerProcess:
        server = ServerProcess(
            directory=tmp_path_factory.mktemp("server"),
            database_url=database_url_for(backend),
            workers=workers,
            poll_seconds=0.1,
            dev=False,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """One SQLite server in process for tests that only need independent rounds."""
    server = InProcessServer(directory=tmp_path_factory.mktemp("shared-server"), poll_seconds=0.1, dev=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_api(shared_server: InProcessServer) -> Iterator[Api]:
    api = Api(shared_server)
    yield api
    api.close()


@pytest.fixture(scope="module")
def socket_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One SQLite server subprocess for tests that need what only a real one has: its sockets."""
    server = ServerProcess(directory=tmp_path_factory.mktemp("socket-server"), poll_seconds=0.1, dev=False).start()
    yield server
    server.kill()
