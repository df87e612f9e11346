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


def postgres_url(user: str, password: str, host: str, port: int | str, dbname: str, sslmode: str = "") -> str:
    """postgresql://user:password@host:port/dbname[?sslmode=...] with every part that may hold anything encoded."""
    host_part = f"[{host}]" if ":" in str(host) else str(host)
    query = f"?sslmode={quote(str(sslmode), safe='')}" if sslmode else ""
    return (f"postgresql://{quote(str(user), safe='')}:{quote(str(password), safe='')}"
            f"@{host_part}:{int(port)}/{quote(str(dbname), safe='')}{query}")


def sslmode_for(host: str) -> str:
    """TLS is required towards a database on another host (its pg_hba admits remote hosts over TLS
    only); over loopback libpq's default stands."""
    return "" if str(host) in ("127.0.0.1", "::1", "localhost") or str(host).startswith("/") else "require"


def systemd_env_value(value: object) -> str:
    """A value for an EnvironmentFile= line: double-quoted, systemd's escapes applied."""
    text = str(value)
    if "\n" in text:
        raise ValueError("a value in an EnvironmentFile cannot hold a newline")
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'
