"""Ansible adapters over llm_appliance.postgres: quoted connection strings and EnvironmentFile values."""

from ansible.errors import AnsibleFilterError

from llm_appliance.postgres import libpq_dsn, postgres_url, sslmode_for, systemd_env_value


def appliance_pg_dsn(params):
    """{{ {'host': h, 'port': p, 'dbname': d, 'user': u, 'password': pw} | appliance_pg_dsn }}; TLS
    required (sslmode) when the host is not loopback."""
    try:
        params = dict(params)
        params.setdefault("sslmode", sslmode_for(params.get("host", "")))
        return libpq_dsn(params)
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError(f"appliance_pg_dsn: {exc}") from None


def appliance_pg_url(params):
    """{{ {'host': h, 'port': p, 'dbname': d, 'user': u, 'password': pw} | appliance_pg_url }}; TLS
    required when the host is not loopback."""
    try:
        return postgres_url(params["user"], params["password"], params["host"], params["port"], params["dbname"],
                            params.get("sslmode", sslmode_for(params["host"])))
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
