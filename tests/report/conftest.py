"""Fixtures of the report tests: a fresh database with the usage schema per test, in the run's
throwaway PostgreSQL cluster (postgres_admin_dsn, tests/conftest.py)."""
from pathlib import Path

import pytest

SCHEMA = Path(__file__).resolve().parents[2] / "llm_appliance/usage_report/schema.sql"


@pytest.fixture()
def database(postgres_admin_dsn, request):
    """A fresh database with the usage schema; yields its DSN."""
    import psycopg

    name = "report_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as connection:
        connection.execute('DROP DATABASE IF EXISTS "%s"' % name)
        connection.execute('CREATE DATABASE "%s"' % name)
    dsn = postgres_admin_dsn.replace("dbname=postgres", "dbname=" + name)
    with psycopg.connect(dsn) as connection:
        connection.execute(SCHEMA.read_text())
    return dsn
