"""GPU utilisation in the report: nvidia-smi samples stored by `sample-gpus`, and Prometheus
(a real HTTP server in the test answering query_range as Prometheus documents it)."""
import contextlib
import datetime as dt
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import urllib.parse
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from llm_appliance.usage_report.gpu_sampler import GpuSample, SamplerError, parse_gpu_query
from llm_appliance.usage_report.prometheus import query_windows, summarise
from llm_appliance.usage_report.render import write_report
from llm_appliance.usage_report.report import ReportError, build_report
from llm_appliance.usage_report.synthetic import load as load_synthetic
from tests.report.test_report import event, insert, report_for, run_cli

APRIL = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
APRIL_UNIX = 1775001600
MAY_UNIX = 1777593600

# `nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits` as
# the driver prints it: ", " between fields, one GPU a line.
FOUR_A100 = """0, 87, 74213
1, 91, 74213
2, 0, 73845
3, 12, 73845
"""
EIGHT_H100 = """0, 100, 78451
1, 100, 78451
2, 98, 78451
3, 99, 78451
4, 0, 4
5, 0, 4
6, 37, 66318
7, 41, 66318

"""
# With MIG enabled, a GPU reports no utilisation; some boards report no memory figure either.
MIG_AND_UNSUPPORTED = """0, 23, 40537
1, [N/A], 19830
2, 5, [Not Supported]
"""
DRIVER_DOWN = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
               "Make sure that the latest NVIDIA driver is installed and running.")


# --- nvidia-smi ---------------------------------------------------------------------------------

def test_parse_four_gpus():
    assert parse_gpu_query(FOUR_A100) == [GpuSample(0, 87.0, 74213), GpuSample(1, 91.0, 74213),
                                          GpuSample(2, 0.0, 73845), GpuSample(3, 12.0, 73845)]


def test_parse_eight_gpus_with_a_trailing_blank_line():
    samples = parse_gpu_query(EIGHT_H100)
    assert [s.gpu_index for s in samples] == list(range(8))
    assert [s.utilization_pct for s in samples] == [100, 100, 98, 99, 0, 0, 37, 41]
    assert samples[4] == GpuSample(4, 0.0, 4)


def test_parse_unavailable_values_are_unknown():
    assert parse_gpu_query("\n" + MIG_AND_UNSUPPORTED.replace("\n", "\r\n") + "\n\n") == [
        GpuSample(0, 23.0, 40537), GpuSample(1, None, 19830), GpuSample(2, 5.0, None)]


@pytest.mark.parametrize("line", ["0, 87", "Unable to determine the device handle for GPU0000:41:00.0: Unknown Error",
                                  "index, utilization.gpu [%], memory.used [MiB]"])
def test_parse_rejects_other_lines_naming_them(line):
    with pytest.raises(SamplerError, match="unexpected line from nvidia-smi"):
        parse_gpu_query(FOUR_A100 + line + "\n")


def stand_in_nvidia_smi(directory, output, exit_code=0):
    """An executable answering like nvidia-smi, and only to the sampler's exact arguments."""
    path = directory / "nvidia-smi"
    path.write_text("#!/bin/sh\n"
                    "[ \"$*\" = \"--query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits\" ] "
                    "|| { echo \"unexpected arguments: $*\" >&2; exit 2; }\n"
                    "cat <<'EOF'\n%sEOF\nexit %d\n" % (output, exit_code))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def stored_samples(dsn):
    with psycopg.connect(dsn) as connection:
        return connection.execute("SELECT sampled_at, host, gpu_index, utilization_pct, memory_used_mib"
                                  " FROM gpu_samples ORDER BY gpu_index").fetchall()


def test_sample_gpus_stores_one_row_per_gpu_now(database, tmp_path):
    nvidia_smi = stand_in_nvidia_smi(tmp_path, MIG_AND_UNSUPPORTED)
    before = dt.datetime.now(dt.UTC)
    result = run_cli("sample-gpus", "--dsn", database, "--host", "node-a", "--nvidia-smi", str(nvidia_smi))
    after = dt.datetime.now(dt.UTC)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 GPU samples stored for node-a\n"
    rows = stored_samples(database)
    assert [row[1:] for row in rows] == [("node-a", 0, 23.0, 40537), ("node-a", 1, None, 19830),
                                         ("node-a", 2, 5.0, None)]
    assert len({row[0] for row in rows}) == 1 and before <= rows[0][0] <= after


def test_the_database_password_stays_off_the_command_line(database, tmp_path):
    """As the timer's unit runs it: the DSN in USAGE_REPORT_DSN; what every local user can read in ps
    (the sampler's command line, recorded by the stand-in nvidia-smi it starts) holds no password."""
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\ntr '\\0' ' ' < /proc/$PPID/cmdline > %s/seen-in-ps\n"
                          "echo '0, 5, 100'\n" % tmp_path)
    nvidia_smi.chmod(0o755)
    secret = "s3cret-kept-out-of-ps"
    result = subprocess.run([str(Path(sys.executable).with_name("appliance-report")), "sample-gpus", "--host", "node-a",
                             "--nvidia-smi", str(nvidia_smi)], capture_output=True, text=True, check=False, timeout=60,
                            env=dict(os.environ, USAGE_REPORT_DSN=database + " password=" + secret))
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "seen-in-ps").read_text()
    assert "sample-gpus" in seen and secret not in seen and "dbname" not in seen


def test_sample_gpus_without_nvidia_smi_is_one_line(database, tmp_path):
    result = run_cli("sample-gpus", "--dsn", database, "--nvidia-smi", str(tmp_path / "absent" / "nvidia-smi"))
    assert result.returncode == 1
    assert result.stderr == ("appliance-report: nvidia-smi not found (%s): install the NVIDIA driver or pass "
                             "--nvidia-smi PATH\n" % (tmp_path / "absent" / "nvidia-smi"))
    assert stored_samples(database) == []


def test_sample_gpus_when_nvidia_smi_fails_is_one_line(database, tmp_path):
    nvidia_smi = stand_in_nvidia_smi(tmp_path, DRIVER_DOWN + "\n", exit_code=9)
    result = run_cli("sample-gpus", "--dsn", database, "--nvidia-smi", str(nvidia_smi))
    assert result.returncode == 1
    assert result.stderr == "appliance-report: %s failed (exit 9): %s\n" % (nvidia_smi, DRIVER_DOWN)
    assert stored_samples(database) == []


def test_sample_gpus_without_the_table_is_one_line(database, tmp_path):
    with psycopg.connect(database) as connection:
        connection.execute("DROP TABLE gpu_samples")
    result = run_cli("sample-gpus", "--dsn", database, "--nvidia-smi", str(stand_in_nvidia_smi(tmp_path, FOUR_A100)))
    assert result.returncode == 1
    assert result.stderr == 'appliance-report: cannot store GPU samples: relation "gpu_samples" does not exist\n'


# --- stored samples in the report ---------------------------------------------------------------

def store(dsn, rows):
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.executemany("INSERT INTO gpu_samples (sampled_at, host, gpu_index, utilization_pct,"
                           " memory_used_mib) VALUES (%s, %s, %s, %s, %s)", rows)


def at(day, minute):
    return APRIL + dt.timedelta(days=day - 1, minutes=minute)


# GPU 0: 10, 20, 30, 40 on 1 April, 90, 100 on 2 April: mean 290 / 6 = 48.3; p95 at rank
# 0.95 * 5 = 4.75 between 90 and 100 = 97.5; daily means 25.0 and 95.0.
GPU0 = [(at(1, 0), 10), (at(1, 1), 20), (at(1, 2), 30), (at(1, 3), 40), (at(2, 0), 90), (at(2, 1), 100)]
# GPU 1: 0, 0, 0, 1: mean 0.25 -> 0.3 and p95 0.85 -> 0.9 (halves away from zero, as PostgreSQL).
GPU1 = [(at(3, 0), 0), (at(3, 1), 0), (at(3, 2), 0), (at(3, 3), 1)]


def test_stored_samples_exact_figures_and_page(database, tmp_path):
    insert(database, [event(0, 0)])
    store(database, [(t, "node-a", 0, u, 1000 + 10 * i) for i, (t, u) in enumerate(GPU0)]
          + [(t, "node-a", 1, u, 500) for t, u in GPU1]
          + [(at(3, 4), "node-a", 1, None, 500)]  # an [N/A] sample: counted, not averaged
          + [(APRIL - dt.timedelta(seconds=1), "node-a", 0, 100, 1), (at(31, 0), "node-a", 0, 100, 1)])
    report = report_for(database)
    assert report["gpu_utilisation"] == [
        {"host": "node-a", "gpu_index": 0, "samples": 6, "mean_utilization_pct": Decimal("48.3"),
         "p95_utilization_pct": Decimal("97.5"), "mean_memory_used_mib": Decimal("1025")},
        {"host": "node-a", "gpu_index": 1, "samples": 5, "mean_utilization_pct": Decimal("0.3"),
         "p95_utilization_pct": Decimal("0.9"), "mean_memory_used_mib": Decimal("500")}]
    assert [(r["day"].day, r["gpu_index"], r["mean_utilization_pct"]) for r in report["gpu_daily_utilisation"]] == [
        (1, 0, Decimal("25.0")), (2, 0, Decimal("95.0")), (3, 1, Decimal("0.3"))]

    write_report(report, str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert "<td>node-a</td><td>0</td><td>6</td><td>48.3</td><td>97.5</td><td>1025.0</td>" in page
    assert '<img src="gpu_daily.png"' in page and "Source: samples stored in gpu_samples." in page
    assert "No GPU samples" not in page
    with Image.open(tmp_path / "gpu_daily.png") as image:
        low, high = image.convert("L").getextrema()
        assert high - low > 50
    daily = json.loads((tmp_path / "gpu_daily_utilisation.json").read_text())
    assert daily[0] == {"day": "2026-04-01", "host": "node-a", "gpu_index": 0, "mean_utilization_pct": 25.0}


def test_synthetic_reload_replaces_only_its_own_gpu_samples(database):
    store(database, [(at(2, 0), "node-a", 0, 50, 1)])
    with psycopg.connect(database) as connection:
        load_synthetic(connection, "2026-04", 100, seed=1)
        load_synthetic(connection, "2026-04", 100, seed=2)
        counts = connection.execute("SELECT host, count(*) FROM gpu_samples GROUP BY host ORDER BY host").fetchall()
    assert counts == [("node-a", 1), ("synthetic-gpu-node", 4 * 30 * 24 * 60)]


def test_no_samples_says_so(database, tmp_path):
    insert(database, [event(0, 0)])
    store(database, [(at(31, 0), "node-a", 0, 50, 1)])  # May: outside the period
    report = report_for(database)
    assert report["gpu_utilisation"] == [] and report["gpu_daily_utilisation"] == []
    write_report(report, str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert '<p id="no-gpu-samples">No GPU samples for this period.</p>' in page
    assert "gpu_daily.png" not in page and not (tmp_path / "gpu_daily.png").exists()


# --- Prometheus ---------------------------------------------------------------------------------

class Prometheus:
    """A real HTTP server on 127.0.0.1 that answers /api/v1/query_range in Prometheus's documented
    JSON from crafted series ([labels, {unix_time: "value"}]): the evaluation at start + k * step
    (<= end) returns the sample at exactly that time. Like Prometheus it refuses more than 11,000
    steps in one query. `refusal` = (HTTP status, body) answers every request instead."""

    def __init__(self, series=(), refusal=None):
        self.series, self.refusal, self.requests = list(series), refusal, []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = stub.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path):
        parts = urllib.parse.urlsplit(path)
        params = dict(urllib.parse.parse_qsl(parts.query))
        self.requests.append(params)
        if self.refusal:
            return self.refusal
        if parts.path != "/api/v1/query_range":
            return 404, b"404 page not found\n"
        start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
        if (end - start) / step > 11000:
            return 400, json.dumps({"status": "error", "errorType": "bad_data", "error": (
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)")}).encode()
        times = [start + k * step for k in range(int((end - start) // step) + 1)]
        result = []
        for labels, samples in self.series:
            values = [[int(t) if t == int(t) else t, samples[t]] for t in times if t in samples]
            if values:
                result.append({"metric": labels, "values": values})
        return 200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def prometheus():
    servers = []

    def start(series=(), refusal=None):
        servers.append(Prometheus(series, refusal))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def dcgm_labels(gpu, **extra):
    labels = {"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": str(gpu), "UUID": "GPU-%08d" % gpu, "device": "nvidia%d" % gpu,
              "modelName": "NVIDIA H100 80GB HBM3", "job": "dcgm-exporter"}
    labels.update(extra)
    return labels


def unix(moment):
    return float(int(moment.timestamp()))


def prometheus_report(dsn, url, **kwargs):
    with psycopg.connect(dsn) as connection:
        return build_report(connection, "2026-04", prometheus_url=url, **kwargs)


def test_prometheus_exact_figures_and_request(database, prometheus):
    insert(database, [event(0, 0)])
    # GPU 0 on node-a, every 5 minutes as the default step evaluates; GPU 1 known only by its
    # scrape target, with a NaN that is no measurement.
    server = prometheus([
        (dcgm_labels(0, Hostname="node-a", instance="10.0.0.5:9400"),
         {unix(at(1, 5 * i)): str(u) for i, (_, u) in enumerate(GPU0[:4])}
         | {unix(at(2, 5 * i)): str(u) for i, (_, u) in enumerate(GPU0[4:])}),
        (dcgm_labels(1, instance="10.0.0.7:9400"),
         {unix(at(5, 0)): "50", unix(at(5, 5)): "NaN", unix(at(5, 10)): "70"})])
    report = prometheus_report(database, server.url)
    assert report["gpu_utilisation"] == [
        {"host": "10.0.0.7:9400", "gpu_index": 1, "samples": 2, "mean_utilization_pct": Decimal("60.0"),
         "p95_utilization_pct": Decimal("69.0"), "mean_memory_used_mib": None},
        {"host": "node-a", "gpu_index": 0, "samples": 6, "mean_utilization_pct": Decimal("48.3"),
         "p95_utilization_pct": Decimal("97.5"), "mean_memory_used_mib": None}]
    assert [(r["day"].day, r["host"], r["mean_utilization_pct"]) for r in report["gpu_daily_utilisation"]] == [
        (1, "node-a", Decimal("25.0")), (2, "node-a", Decimal("95.0")), (5, "10.0.0.7:9400", Decimal("60.0"))]
    assert server.requests == [{"query": "DCGM_FI_DEV_GPU_UTIL", "start": "%d.000" % APRIL_UNIX,
                                "end": "%d.000" % (MAY_UNIX - 300), "step": "300"}]
    assert report["gpu_source"] == "Prometheus at %s, query DCGM_FI_DEV_GPU_UTIL, one point every 300 s" % server.url


def test_prometheus_agrees_with_stored_samples(database, prometheus):
    insert(database, [event(0, 0)])
    series = {0: GPU0, 1: GPU1}
    store(database, [(t, "node-a", gpu, u, 7) for gpu, samples in series.items() for t, u in samples])
    stored = report_for(database)
    server = prometheus([(dcgm_labels(gpu, Hostname="node-a"), {unix(t): str(u) for t, u in samples})
                         for gpu, samples in series.items()])
    queried = prometheus_report(database, server.url, prometheus_step=60)
    for row in stored["gpu_utilisation"]:
        row["mean_memory_used_mib"] = None
    assert queried["gpu_utilisation"] == stored["gpu_utilisation"]
    assert queried["gpu_daily_utilisation"] == stored["gpu_daily_utilisation"]


def test_query_windows_stay_under_the_point_limit():
    april_end = APRIL + dt.timedelta(days=30)
    assert query_windows(APRIL, april_end, 300) == [(APRIL_UNIX, MAY_UNIX - 300)]
    windows = query_windows(APRIL, april_end, 60)
    assert windows == [(APRIL_UNIX + k * 60, APRIL_UNIX + (min(k + 10000, 43200) - 1) * 60)
                       for k in (0, 10000, 20000, 30000, 40000)]
    assert query_windows(APRIL, APRIL + dt.timedelta(seconds=119), 60) == [(APRIL_UNIX, APRIL_UNIX + 60)]


def test_prometheus_long_range_is_split(database, prometheus):
    insert(database, [event(0, 0)])
    # One sample a minute: 43,200 steps in April, too many for one query; samples on both sides
    # of each window's edge must count once.
    edges = [0, 9999, 10000, 19999, 20000, 39999, 40000, 43199]
    server = prometheus([(dcgm_labels(0, Hostname="node-a"),
                          {APRIL_UNIX + 60.0 * k: str(10 * (i + 1)) for i, k in enumerate(edges)})])
    report = prometheus_report(database, server.url, prometheus_step=60)
    assert [(r["samples"], r["mean_utilization_pct"], r["p95_utilization_pct"]) for r in report["gpu_utilisation"]] \
        == [(8, Decimal("45.0"), Decimal("76.5"))]
    starts = [float(r["start"]) for r in server.requests]
    ends = [float(r["end"]) for r in server.requests]
    assert starts == [APRIL_UNIX + 60 * k for k in (0, 10000, 20000, 30000, 40000)]
    assert ends == [s - 60 for s in starts[1:]] + [MAY_UNIX - 60]
    assert all((end - start) / 60 + 1 <= 10000 for start, end in zip(starts, ends, strict=True))


def test_prometheus_refusal_is_one_line_naming_the_url(database, prometheus, tmp_path):
    insert(database, [event(0, 0)])
    server = prometheus(refusal=(400, json.dumps({
        "status": "error", "errorType": "bad_data",
        "error": 'invalid parameter "query": 1:5: parse error: unexpected <op:*>'}).encode()))
    with pytest.raises(ReportError) as refused:
        prometheus_report(database, server.url, prometheus_query="DCGM**")
    assert str(refused.value) == ("Prometheus at %s refused the GPU query 'DCGM**' (HTTP 400): bad_data: invalid "
                                  'parameter "query": 1:5: parse error: unexpected <op:*>' % server.url)
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(tmp_path),
                     "--prometheus-url", server.url, "--prometheus-query", "DCGM**")
    assert result.returncode == 1
    assert result.stderr == "appliance-report: %s\n" % refused.value


def test_prometheus_answers_that_are_not_prometheus(database, prometheus):
    insert(database, [event(0, 0)])
    page = prometheus(refusal=(200, b"<html>Grafana</html>"))
    with pytest.raises(ReportError, match="^Prometheus at %s did not answer JSON" % page.url):
        prometheus_report(database, page.url)
    unlabelled = prometheus([({"job": "dcgm-exporter"}, {float(APRIL_UNIX): "1"})])
    with pytest.raises(ReportError, match="^Prometheus at %s: series .* lacks a numeric gpu label" % unlabelled.url):
        prometheus_report(database, unlabelled.url)
    proxy = prometheus(refusal=(502, b"Bad Gateway"))
    with pytest.raises(ReportError, match=r"^Prometheus at %s refused .* \(HTTP 502\): Bad Gateway" % proxy.url):
        prometheus_report(database, proxy.url)
    # A service that does not speak HTTP: the test's PostgreSQL.
    not_http = "http://127.0.0.1:%s" % dict(f.split("=") for f in database.split())["port"]
    with pytest.raises(ReportError, match="^cannot (query|reach) Prometheus at %s: " % not_http):
        prometheus_report(database, not_http)


def test_unreachable_prometheus_is_one_line_naming_the_url(database, tmp_path):
    insert(database, [event(0, 0)])
    with pytest.raises(ReportError, match="^the Prometheus URL prometheus:9090 must start with http:// or https://$"):
        prometheus_report(database, "prometheus:9090")
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % probe.getsockname()[1]
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(tmp_path),
                     "--prometheus-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith("appliance-report: cannot reach Prometheus at %s: " % url)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_prometheus_replaces_stored_samples_in_the_page(database, prometheus, tmp_path):
    insert(database, [event(0, 0)])
    store(database, [(at(1, 0), "stored-host", 0, 99, 1)])
    server = prometheus([(dcgm_labels(3, Hostname="node-b"), {unix(at(4, 0)): "42", unix(at(4, 5)): "44"})])
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(tmp_path),
                     "--prometheus-url", server.url + "/")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "gpu_utilisation.json").read_text()) == [
        {"host": "node-b", "gpu_index": 3, "samples": 2, "mean_utilization_pct": 43.0, "p95_utilization_pct": 43.9,
         "mean_memory_used_mib": None}]
    page = (tmp_path / "index.html").read_text()
    assert "<td>node-b</td><td>3</td><td>2</td><td>43.0</td><td>43.9</td><td></td>" in page
    assert "stored-host" not in page and "Source: Prometheus at %s/" % server.url in page


def test_series_of_one_gpu_at_the_same_time_count_once():
    # Two scrape jobs for the same exporter: one sample at that time, their mean.
    rows, daily = summarise({("node-a", 0): {float(APRIL_UNIX): [40.0, 60.0], APRIL_UNIX + 300.0: [80.0]}})
    assert (rows[0]["samples"], rows[0]["mean_utilization_pct"], rows[0]["p95_utilization_pct"]) == \
        (2, Decimal("65.0"), Decimal("78.5"))
    assert daily == [{"day": dt.date(2026, 4, 1), "host": "node-a", "gpu_index": 0,
                      "mean_utilization_pct": Decimal("65.0")}]
