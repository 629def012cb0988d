"""The private PostgreSQL cluster of tests/postgres.py, reached as the gateway reaches an
operator's: asyncpg over TCP with a password."""

from __future__ import annotations

import asyncpg
import pytest

from tests.postgres import Postgres, needs_postgres, running_postgres


async def test_a_database_answers_the_gateway_user_over_tcp(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        user, database = await conn.fetchrow("SELECT current_user, current_database()")
    finally:
        await conn.close()
    assert (user, database) == ("gateway", postgres_url.rsplit("/", 1)[1])


async def test_two_databases_do_not_share_tables(postgres: Postgres, postgres_url: str) -> None:
    other_url = postgres.database()
    try:
        first = await asyncpg.connect(postgres_url)
        other = await asyncpg.connect(other_url)
        try:
            await first.execute("CREATE TABLE messages (id bigint PRIMARY KEY)")
            found = await other.fetchval("SELECT to_regclass('messages')")
        finally:
            await first.close()
            await other.close()
    finally:
        postgres.drop(other_url)
    assert found is None


async def test_a_wrong_password_is_refused(postgres: Postgres, postgres_url: str) -> None:
    wrong = postgres.url(postgres_url.rsplit("/", 1)[1], password="not-the-secret")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_a_database_is_dropped_with_a_session_still_connected(
    postgres: Postgres,
) -> None:
    """A test may end with a gateway process still connected: its database goes anyway."""
    url = postgres.database()
    conn = await asyncpg.connect(url)
    try:
        postgres.drop(url)
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(url)


def test_the_test_cluster_does_not_wait_for_the_disk(postgres: Postgres) -> None:
    assert postgres.psql("SHOW fsync").strip() == "off"


@needs_postgres
def test_a_bench_cluster_keeps_the_durable_defaults() -> None:
    with running_postgres(durable=True) as cluster:
        settings = [cluster.psql(f"SHOW {name}").strip() for name in ("fsync", "full_page_writes")]
    assert settings == ["on", "on"]
