"""appliance-report: the monthly usage report from the gateway's usage rows.

    appliance-report report --dsn DSN --period 2026-04 --out DIR [--prices FILE] [--monthly-cost N]
                            [--burst-windows 6,60]
                            [--prometheus-url URL [--prometheus-query Q] [--prometheus-step 300]]
    appliance-report migrate --dsn DSN
    appliance-report synthetic --dsn DSN --period 2026-04 [--rows 385000] [--seed 0] [--gpus 4]
    appliance-report sample-gpus --dsn DSN [--host NAME] [--nvidia-smi PATH]

GPU utilisation comes from the samples that `sample-gpus` stores (once a minute, from a timer), or
from Prometheus (DCGM exporter's DCGM_FI_DEV_GPU_UTIL by default) when --prometheus-url is given.

Problems the operator must fix (empty period, unknown price, unreachable database or Prometheus,
nvidia-smi missing or failing) print one line and exit 1.
"""
import argparse
import os
import socket
import sys
import time

from llm_appliance.usage_report.prices import PriceError, load_prices
from llm_appliance.usage_report.report import ReportError, build_report, load_budgets, period_bounds

SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")


def connect(dsn):
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ReportError("cannot reach the usage database (%s): %s" % (_redact(dsn), first)) from None


def _redact(dsn):
    import re

    return re.sub(r"(password=)\S+|(://[^:/@]+:)[^@]+@", lambda m: (m.group(1) or m.group(2)) + "***" +
                  ("" if m.group(1) else "@"), dsn)


def cmd_migrate(args):
    with connect(args.dsn) as connection, open(SCHEMA, encoding="utf-8") as handle:
        connection.execute(handle.read())
    print("schema applied")
    return 0


def cmd_synthetic(args):
    from llm_appliance.usage_report.synthetic import load

    period_bounds(args.period)
    with connect(args.dsn) as connection:
        started = time.monotonic()
        written = load(connection, args.period, args.rows, args.seed, args.gpus)
    print("%d synthetic rows and a GPU sample a minute for %d GPUs for %s in %.1f s"
          % (written, args.gpus, args.period, time.monotonic() - started))
    return 0


def cmd_sample_gpus(args):
    from llm_appliance.usage_report.gpu_sampler import query_gpus, store_samples

    # nvidia-smi first: a host without GPUs fails without touching the database.
    samples = query_gpus(args.nvidia_smi)
    with connect(args.dsn) as connection:
        stored = store_samples(connection, args.host, samples)
    print("%d GPU samples stored for %s" % (stored, args.host))
    return 0


def cmd_report(args):
    from llm_appliance.usage_report.render import write_report

    prices = load_prices(args.prices) if args.prices else None
    windows = [int(w) for w in str(args.burst_windows).split(",") if w.strip()]
    started = time.monotonic()
    with connect(args.dsn) as connection:
        report = build_report(connection, args.period, windows=windows, prices=prices,
                              prices_path=args.prices or "", monthly_cost=args.monthly_cost,
                              prometheus_url=args.prometheus_url, prometheus_query=args.prometheus_query,
                              prometheus_step=args.prometheus_step, dead_letter_files=args.dead_letter or (),
                              budgets=load_budgets(args.budgets) if args.budgets else None)
    index = write_report(report, args.out)
    print("%s: %d requests; report in %s (%.1f s)" % (args.period, report["total_requests"], index,
                                                      time.monotonic() - started))
    return 0


def add_dsn_argument(parser):
    """--dsn, or USAGE_REPORT_DSN from the environment: units and playbooks pass the password there,
    never on a command line that every local user can read in ps."""
    dsn = os.environ.get("USAGE_REPORT_DSN")
    parser.add_argument("--dsn", default=dsn, required=not dsn,
                        help="libpq connection string (default: $USAGE_REPORT_DSN)")


def build_parser():
    parser = argparse.ArgumentParser(prog="appliance-report", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="write the report for one month")
    add_dsn_argument(report)
    report.add_argument("--period", required=True, help="month, e.g. 2026-04")
    report.add_argument("--out", required=True, help="directory for index.html, the plots and tables")
    report.add_argument("--prices", help="JSON file of public API prices per million tokens")
    report.add_argument("--monthly-cost", type=float, help="the appliance's own monthly cost, same currency")
    report.add_argument("--dead-letter", action="append", metavar="FILE",
                        help="a gateway's dead-letter file of usage rows the database refused (repeatable)")
    report.add_argument("--budgets", metavar="FILE",
                        help="the gateway's keys.json (or {\"users\": [{\"name\", \"monthly_tokens\"}]}): "
                             "each budgeted user's tokens against the budget")
    report.add_argument("--burst-windows", default="6,60", help="burst windows in seconds (default 6,60)")
    report.add_argument("--prometheus-url", help="take GPU utilisation from this Prometheus (base URL, e.g. "
                        "http://prometheus:9090) instead of the stored samples")
    report.add_argument("--prometheus-query", help="PromQL for per-GPU utilisation in %% with labels gpu and "
                        "Hostname or instance (default DCGM_FI_DEV_GPU_UTIL)")
    report.add_argument("--prometheus-step", type=int, help="seconds between points (default 300)")
    report.set_defaults(func=cmd_report)
    migrate = sub.add_parser("migrate", help="create or update the usage tables")
    add_dsn_argument(migrate)
    migrate.set_defaults(func=cmd_migrate)
    synthetic = sub.add_parser("synthetic", help="load a synthetic month (tests and benchmarks)")
    add_dsn_argument(synthetic)
    synthetic.add_argument("--period", required=True)
    synthetic.add_argument("--rows", type=int, default=385000)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--gpus", type=int, default=4, help="GPUs to write samples for (default 4; 0: none)")
    synthetic.set_defaults(func=cmd_synthetic)
    sample = sub.add_parser("sample-gpus", help="store one utilisation sample per GPU from nvidia-smi")
    add_dsn_argument(sample)
    sample.add_argument("--host", default=socket.gethostname(), help="host name to record (default: this host's)")
    sample.add_argument("--nvidia-smi", default="nvidia-smi", help="path of nvidia-smi (default: from PATH)")
    sample.set_defaults(func=cmd_sample_gpus)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ReportError, PriceError) as exc:
        print("appliance-report: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
