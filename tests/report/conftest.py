"""Fixtures of the report tests: a throwaway PostgreSQL cluster (pgcluster.py) and a fresh
database with the usage schema per test."""
from pathlib import Path

import pytest

from tests.report.pgcluster import ClusterError, throwaway_cluster

SCHEMA = Path(__file__).resolve().parents[2] / "llm_appliance/usage_report/schema.sql"


@pytest.fixture(scope="session")
def postgres_admin_dsn():
    try:
        with throwaway_cluster() as dsn:
            yield dsn
    except ClusterError as exc:
        pytest.fail(str(exc))


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
