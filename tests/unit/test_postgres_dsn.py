"""Connection strings that survive any password: parsed back by libpq itself (psycopg's
conninfo_to_dict calls PQconninfoParse) to exactly what went in."""
import pytest
from ansible.errors import AnsibleFilterError
from psycopg.conninfo import conninfo_to_dict

from llm_appliance.postgres import libpq_dsn, postgres_url, systemd_env_value
from tests.unit.test_plan import load_filter_plugin

AWKWARD = ["plain", "with space", "it's", "back\\slash", 'dq"uote', "per%cent/slash?q#h@at:colon", "dollar$HOME",
           "tab\tand ünïcode", "'", "\\"]


@pytest.mark.parametrize("password", AWKWARD)
def test_libpq_dsn_round_trips_any_password(password):
    dsn = libpq_dsn({"host": "127.0.0.1", "port": 5432, "dbname": "llm appliance", "user": "llm_gateway",
                     "password": password, "application_name": "litellm"})
    assert conninfo_to_dict(dsn) == {"host": "127.0.0.1", "port": "5432", "dbname": "llm appliance",
                                     "user": "llm_gateway", "password": password, "application_name": "litellm"}


@pytest.mark.parametrize("password", AWKWARD)
def test_postgres_url_round_trips_any_password(password):
    url = postgres_url("open_webui", password, "127.0.0.1", 5432, "open_webui")
    assert conninfo_to_dict(url) == {"user": "open_webui", "password": password, "host": "127.0.0.1",
                                     "port": "5432", "dbname": "open_webui"}


def test_empty_values_are_left_out_and_bad_keywords_refused():
    assert libpq_dsn({"host": "db", "password": "", "sslmode": None}) == "host='db'"
    with pytest.raises(ValueError, match="not a libpq connection keyword"):
        libpq_dsn({"host name": "db"})


def test_systemd_env_value_escapes_what_systemd_unescapes():
    assert systemd_env_value("host='db' password='a\\'b'") == '"host=\'db\' password=\'a\\\\\'b\'"'
    assert systemd_env_value('say "$HOME" `x`') == '"say \\"\\$HOME\\" \\`x\\`"'
    with pytest.raises(ValueError, match="newline"):
        systemd_env_value("two\nlines")


def test_a_database_on_another_host_is_reached_over_tls_checked_against_the_internal_ca():
    """pg_hba admits the site's other hosts with hostssl: their clients check the server's certificate
    (name or address) against the internal CA; loopback keeps libpq's defaults."""
    postgres = load_filter_plugin("postgres")
    remote = {"host": "10.20.0.10", "port": 5432, "dbname": "llm_appliance", "user": "llm_gateway", "password": "x"}
    ca = "/etc/llm-appliance/ca/ca.crt"
    for conninfo in (postgres.appliance_pg_dsn(remote, ca), postgres.appliance_pg_url(remote, ca)):
        parsed = conninfo_to_dict(conninfo)
        assert (parsed["sslmode"], parsed["sslrootcert"], parsed["host"]) == ("verify-full", ca, "10.20.0.10")
    with pytest.raises(AnsibleFilterError, match="the database at 10.20.0.10 is on another host: the CA file"):
        postgres.appliance_pg_dsn(remote)
    local = dict(remote, host="127.0.0.1")
    for conninfo in (postgres.appliance_pg_dsn(local, ca), postgres.appliance_pg_url(local, ca)):
        assert "sslmode" not in conninfo_to_dict(conninfo) and "sslrootcert" not in conninfo_to_dict(conninfo)
