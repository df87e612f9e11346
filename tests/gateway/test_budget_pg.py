"""The monthly token budgets' read against a real PostgreSQL (a throwaway cluster), with the roles
as the appliance makes them: the tables' owner applies the schema, the gateway's role may insert
rows and call tokens_used_since, and reads the month's sums of the names it asks for, not the rows."""

import datetime as dt
import uuid

import psycopg
import pytest

from llm_appliance.gateway import budget
from llm_appliance.gateway import usage_logger as ul
from tests.gateway.test_usage_writer_pg import SCHEMA, row


@pytest.fixture()
def gateway_dsn(postgres_admin_dsn):
    name = "budget_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        for role, login in ((f"{name}_owner", "NOLOGIN"), (f"{name}_gw", "LOGIN")):
            conn.execute(f'CREATE ROLE "{role}" {login}')
    admin = postgres_admin_dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{name}_owner"')
        conn.execute(f'SET ROLE "{name}_owner"')
        conn.execute(SCHEMA.read_text())
        conn.execute("RESET ROLE")
        # What usage_report's schema tasks grant the gateway.
        conn.execute(f'GRANT INSERT ON usage_events TO "{name}_gw"')
        conn.execute(f'GRANT USAGE ON SEQUENCE usage_events_id_seq TO "{name}_gw"')
        conn.execute(f'GRANT EXECUTE ON FUNCTION tokens_used_since(timestamptz, text[]) TO "{name}_gw"')
    return admin.replace("user=postgres", f"user={name}_gw")


def test_the_gateway_reads_the_months_sums_of_the_names_it_asks_for_and_not_the_rows(gateway_dsn, tmp_path):
    writer = ul.Writer(ul.PostgresInserter(gateway_dsn), ul.Spool(tmp_path / "spool"), batch=50, flush_s=0.0,
                       dead_letter=ul.DeadLetter(tmp_path / "dead-letter.jsonl"))
    for values in (
            dict(key_alias="alice", prompt_tokens=10, completion_tokens=5),
            dict(key_alias="alice", prompt_tokens=2_000_000_000, completion_tokens=2_000_000_000),  # bigint sum
            dict(key_alias="alice", started_at="2026-11-30T23:59:59+00:00", prompt_tokens=7),  # last month
            dict(key_alias="bob", prompt_tokens=3),
            dict(key_alias="carol", prompt_tokens=99)):
        writer.put(row(**values))
    writer.flush_once()
    assert writer.spool.files() == []
    read = budget.PostgresTotals(gateway_dsn, ul.connect_postgres)
    december = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert read(december, ["alice", "bob", "dave"]) == {"alice": 4_000_000_015, "bob": 4}
    # One connection serves every read.
    connection = read._conn
    assert read(december, ["carol"]) == {"carol": 100} and read._conn is connection
    with psycopg.connect(gateway_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM usage_events")


def test_a_database_that_cannot_be_reached_raises_and_the_next_read_reconnects(gateway_dsn):
    read = budget.PostgresTotals(gateway_dsn, ul.connect_postgres)
    december = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert read(december, ["alice"]) == {}
    read._conn.close()
    read._conn = _Broken()
    with pytest.raises(psycopg.OperationalError):
        read(december, ["alice"])
    assert read._conn is None
    assert read(december, ["alice"]) == {}


class _Broken:
    closed = False

    def cursor(self):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def close(self):
        pass
