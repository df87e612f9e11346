"""A throwaway PostgreSQL cluster from the distribution's server binaries, on 127.0.0.1 and a
free port, in a temporary directory. Used by the report tests and the report benchmark."""
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class ClusterError(RuntimeError):
    pass


def _bin_dir():
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise ClusterError("PostgreSQL server binaries are missing: run tools/install-host-deps (package postgresql)")
    return Path(candidates[-1]).parent


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(*command):
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + [str(c) for c in command], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def throwaway_cluster(settings=()):
    """Yield the admin DSN of a fresh cluster; stop and delete it afterwards."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    options = "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off %s" % (
        port, root, " ".join("-c %s" % s for s in settings))
    try:
        _as_postgres(bin_dir / "initdb", "-D", data, "--auth=trust", "--username=postgres", "-E", "UTF8")
        _as_postgres(bin_dir / "pg_ctl", "-D", data, "-w", "-l", root / "log", "-o", options, "start")
        yield "host=127.0.0.1 port=%d user=postgres dbname=postgres" % port
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
