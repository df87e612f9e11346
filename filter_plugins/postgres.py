"""Ansible adapters over llm_appliance.postgres: quoted connection strings and EnvironmentFile values."""

from ansible.errors import AnsibleFilterError

from llm_appliance.postgres import libpq_dsn, postgres_url, systemd_env_value, tls_for


def appliance_pg_dsn(params, ca_file=""):
    """{{ {'host': h, 'port': p, 'dbname': d, 'user': u, 'password': pw} | appliance_pg_dsn(ca_file) }};
    TLS checked against ca_file (verify-full) when the host is not loopback."""
    try:
        params = dict(params)
        return libpq_dsn({**tls_for(params.get("host", ""), ca_file), **params})
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError(f"appliance_pg_dsn: {exc}") from None


def appliance_pg_url(params, ca_file=""):
    """{{ {'host': h, 'port': p, 'dbname': d, 'user': u, 'password': pw} | appliance_pg_url(ca_file) }};
    TLS checked against ca_file (verify-full) when the host is not loopback."""
    try:
        return postgres_url(params["user"], params["password"], params["host"], params["port"], params["dbname"],
                            tls_for(params["host"], ca_file))
    except (KeyError, ValueError, TypeError) as exc:
        raise AnsibleFilterError(f"appliance_pg_url: needs user, password, host, port and dbname ({exc})") from None


def systemd_env_quote(value):
    """{{ value | systemd_env_quote }} for a KEY=VALUE line of a systemd EnvironmentFile."""
    try:
        return systemd_env_value(value)
    except ValueError as exc:
        raise AnsibleFilterError(f"systemd_env_quote: {exc}") from None


class FilterModule:
    def filters(self):
        return {"appliance_pg_dsn": appliance_pg_dsn, "appliance_pg_url": appliance_pg_url,
                "systemd_env_quote": systemd_env_quote}
