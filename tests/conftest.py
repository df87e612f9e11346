"""Fixtures shared by the test packages."""
import pytest

from tests.report.pgcluster import ClusterError, throwaway_cluster


@pytest.fixture(scope="session")
def postgres_admin_dsn():
    """The admin DSN of one throwaway PostgreSQL cluster (pgcluster.py) for the whole run."""
    try:
        with throwaway_cluster() as dsn:
            yield dsn
    except ClusterError as exc:
        pytest.fail(str(exc))
