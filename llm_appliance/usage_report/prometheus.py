"""GPU utilisation for the report from Prometheus instead of stored samples.

    appliance-report report ... --prometheus-url http://prometheus:9090
                                [--prometheus-query DCGM_FI_DEV_GPU_UTIL] [--prometheus-step 300]

The query is evaluated by /api/v1/query_range at start, start + step, ... before the period's end;
each evaluation is one sample. The series must carry DCGM exporter's labels: `gpu`, and
`Hostname` or else `instance`. The default query takes the latest scrape at each step; for the mean
of every scrape use e.g. `avg_over_time(DCGM_FI_DEV_GPU_UTIL[5m])` with a 300 s step.

The rows have the shape of queries.GPU_UTILISATION and GPU_DAILY_UTILISATION, with the same
rounding; memory is unknown (None).
"""
import collections
import datetime as dt
import decimal
import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
import zoneinfo

from llm_appliance.usage_report.report import ReportError

DEFAULT_QUERY = "DCGM_FI_DEV_GPU_UTIL"
DEFAULT_STEP_S = 300
# Prometheus refuses a range query whose (end - start) / step exceeds 11,000; stay well below.
MAX_POINTS_PER_QUERY = 10000
TIMEOUT_S = 60


def query_windows(start, end, step, max_points=MAX_POINTS_PER_QUERY):
    """Split the evaluation times start + k * step < end into (first, last) Unix-time windows of at
    most max_points times each. query_range includes both ends, so the windows don't overlap."""
    first = start.timestamp()
    total = math.ceil((end.timestamp() - first) / step)
    return [(first + k * step, first + (min(k + max_points, total) - 1) * step)
            for k in range(0, total, max_points)]


def _get(url, query, window_start, window_end, step):
    address = "%s/api/v1/query_range?%s" % (url.rstrip("/"), urllib.parse.urlencode(
        {"query": query, "start": "%.3f" % window_start, "end": "%.3f" % window_end, "step": str(step)}))
    try:
        with urllib.request.urlopen(address, timeout=TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        # Prometheus explains a refused query in a JSON body on 400, 422 and 503.
        body = exc.read()
        try:
            answer = json.loads(body)
            reason = "%s: %s" % (answer.get("errorType", "error"), answer.get("error", ""))
        except (ValueError, AttributeError):
            reason = exc.reason
        raise ReportError("Prometheus at %s refused the GPU query %r (HTTP %d): %s"
                          % (url, query, exc.code, reason)) from None
    except urllib.error.URLError as exc:
        raise ReportError("cannot reach Prometheus at %s: %s" % (url, exc.reason)) from None
    except TimeoutError:
        raise ReportError("Prometheus at %s did not answer within %d s" % (url, TIMEOUT_S)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # Not HTTP at all (a TLS port asked in plain text), a reset connection, a malformed URL.
        raise ReportError("cannot query Prometheus at %s: %s" % (url, str(exc) or exc.__class__.__name__)) from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise ReportError("Prometheus at %s did not answer JSON: is it the Prometheus base URL?" % url) from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error", "no error given") if isinstance(answer, dict) else "unexpected answer"
        raise ReportError("Prometheus at %s refused the GPU query %r: %s" % (url, query, error))
    data = answer.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ReportError("Prometheus at %s answered %r for the GPU query %r, not a range of series"
                          % (url, data.get("resultType"), query))
    return data.get("result") or []


def fetch_points(url, start, end, query=DEFAULT_QUERY, step=DEFAULT_STEP_S, max_points=MAX_POINTS_PER_QUERY):
    """{(host, gpu_index): {unix_time: [values]}} for the period, one range query per window."""
    points = collections.defaultdict(lambda: collections.defaultdict(list))
    for window_start, window_end in query_windows(start, end, step, max_points):
        for series in _get(url, query, window_start, window_end, step):
            labels = series.get("metric", {})
            host = labels.get("Hostname") or labels.get("instance")
            gpu = labels.get("gpu", "")
            if host is None or not gpu.isdigit():
                raise ReportError("Prometheus at %s: series %s of the GPU query %r lacks a numeric gpu label and a "
                                  "Hostname or instance label" % (url, json.dumps(labels, sort_keys=True), query))
            for timestamp, value in series.get("values", []):
                value = float(value)
                # NaN and infinities are no measurement of utilisation.
                if math.isfinite(value):
                    points[(host, int(gpu))][float(timestamp)].append(value)
    return points


def _round1(value):
    # As PostgreSQL's round(double::numeric, 1): 15 significant digits, halves away from zero.
    return decimal.Decimal("%.15g" % value).quantize(decimal.Decimal("0.1"), rounding=decimal.ROUND_HALF_UP)


def percentile_cont(values, fraction):
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def summarise(points, timezone="UTC"):
    """(rows like GPU_UTILISATION, rows like GPU_DAILY_UTILISATION) from fetch_points' answer.
    Series that share a GPU and a time (several scrape jobs) count once, with their mean."""
    zone = zoneinfo.ZoneInfo(timezone)
    rows, daily = [], collections.defaultdict(list)
    for (host, gpu_index), by_time in sorted(points.items()):
        values = []
        for timestamp, duplicates in sorted(by_time.items()):
            value = sum(duplicates) / len(duplicates)
            values.append(value)
            daily[(dt.datetime.fromtimestamp(timestamp, zone).date(), host, gpu_index)].append(value)
        rows.append({"host": host, "gpu_index": gpu_index, "samples": len(values),
                     "mean_utilization_pct": _round1(sum(values) / len(values)),
                     "p95_utilization_pct": _round1(percentile_cont(values, 0.95)),
                     "mean_memory_used_mib": None})
    daily_rows = [{"day": day, "host": host, "gpu_index": gpu_index,
                   "mean_utilization_pct": _round1(sum(values) / len(values))}
                  for (day, host, gpu_index), values in sorted(daily.items())]
    return rows, daily_rows


def gpu_utilisation(url, start, end, query=DEFAULT_QUERY, step=DEFAULT_STEP_S, timezone="UTC"):
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ReportError("the Prometheus URL %s must start with http:// or https://" % url)
    if step <= 0:
        raise ReportError("the Prometheus step must be a positive number of seconds, not %s" % step)
    return summarise(fetch_points(url, start, end, query, step), timezone)
