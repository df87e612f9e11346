#!/usr/bin/env python3
"""Prints how long the usage report takes for the synthetic reference month (385k rows) and
for 10 million rows, in a throwaway PostgreSQL cluster on this machine. Figures, not assertions.
Each load also writes the month's GPU samples (4 GPUs, one a minute: 172,800 rows).

    bench/report_bench.py [--rows 385000,10000000]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from llm_appliance.usage_report.render import write_report
from llm_appliance.usage_report.report import build_report
from llm_appliance.usage_report.synthetic import load
from tests.report.pgcluster import throwaway_cluster

REPO = Path(__file__).resolve().parents[1]
SCHEMA = (REPO / "llm_appliance/usage_report/schema.sql").read_text()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="385000,10000000")
    args = parser.parse_args(argv)
    print("%12s %10s %10s %10s" % ("rows", "load s", "query s", "render s"))
    with throwaway_cluster(settings=("shared_buffers=1GB", "work_mem=256MB", "max_wal_size=8GB")) as admin:
        for rows in [int(r) for r in args.rows.split(",")]:
            name = "bench_%d" % rows
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute("DROP DATABASE IF EXISTS %s" % name)
                connection.execute("CREATE DATABASE %s" % name)
            dsn = admin.replace("dbname=postgres", "dbname=" + name)
            with psycopg.connect(dsn) as connection:
                connection.execute(SCHEMA)
                started = time.monotonic()
                load(connection, "2026-04", rows, seed=0)
                connection.execute("ANALYZE usage_events")
                connection.execute("ANALYZE gpu_samples")
                connection.commit()
                loaded = time.monotonic() - started
                started = time.monotonic()
                report = build_report(connection, "2026-04")
                queried = time.monotonic() - started
            started = time.monotonic()
            write_report(report, tempfile.mkdtemp(prefix="report-bench-"))
            rendered = time.monotonic() - started
            print("%12d %10.1f %10.1f %10.1f" % (rows, loaded, queried, rendered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
