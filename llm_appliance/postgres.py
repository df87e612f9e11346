"""PostgreSQL connection strings, built in one place and quoted, so that any password works.

libpq's keyword/value form quotes every value in single quotes with backslash escapes; the URL
form percent-encodes user, password and database. Values written to a systemd EnvironmentFile go
in double quotes with systemd's escapes (backslash, double quote, dollar, backquote), so that the
service sees the string unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote


def libpq_dsn(params: Mapping[str, object]) -> str:
    """host='db' port='5432' ... from a mapping; empty or None values are left out."""
    parts = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        if not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"{key!r} is not a libpq connection keyword")
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


def postgres_url(user: str, password: str, host: str, port: int | str, dbname: str,
                 tls: Mapping[str, str] | None = None) -> str:
    """postgresql://user:password@host:port/dbname[?sslmode=...&sslrootcert=...] with every part that may hold
    anything encoded."""
    host_part = f"[{host}]" if ":" in str(host) else str(host)
    query = ("?" + "&".join(f"{key}={quote(str(value), safe='/')}" for key, value in tls.items())) if tls else ""
    return (f"postgresql://{quote(str(user), safe='')}:{quote(str(password), safe='')}"
            f"@{host_part}:{int(port)}/{quote(str(dbname), safe='')}{query}")


def tls_for(host: str, ca_file: str) -> dict[str, str]:
    """Towards a database on another host, TLS with the server's certificate checked against the
    internal CA, name or address included (verify-full: its pg_hba admits remote hosts over TLS
    only); over loopback libpq's defaults stand."""
    if str(host) in ("127.0.0.1", "::1", "localhost") or str(host).startswith("/"):
        return {}
    if not ca_file:
        raise ValueError(f"the database at {host} is on another host: "
                         "the CA file that signed its certificate is needed")
    return {"sslmode": "verify-full", "sslrootcert": str(ca_file)}


def systemd_env_value(value: object) -> str:
    """A value for an EnvironmentFile= line: double-quoted, systemd's escapes applied."""
    text = str(value)
    if "\n" in text:
        raise ValueError("a value in an EnvironmentFile cannot hold a newline")
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'
