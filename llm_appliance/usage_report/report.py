"""Builds the report's tables for one period from PostgreSQL."""
import calendar
import datetime as dt
import json
import re
from pathlib import Path

from llm_appliance.usage_report import queries
from llm_appliance.usage_report.prices import price_tokens


class ReportError(Exception):
    """Something the operator must fix; the message says what."""


def period_bounds(period):
    """'2026-04' -> (2026-04-01, 2026-05-01) in UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", str(period))
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ReportError("period %r is not a month like 2026-04" % period)
    year, month = int(match.group(1)), int(match.group(2))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(year, month)[1]
    return start, start + dt.timedelta(days=days)


def percentile_from_histogram(histogram, fraction):
    """PostgreSQL's percentile_cont over the values a histogram [(value, count), ...] stands for."""
    total = sum(count for _, count in histogram)
    position = fraction * (total - 1)
    lower, upper = int(position), min(int(position) + 1, total - 1)

    def value_at(index):
        seen = 0
        for value, count in histogram:
            seen += count
            if index < seen:
                return value
        raise IndexError(index)

    low = value_at(lower)
    return float(low + (value_at(upper) - low) * (position - lower))


def burst_summary(histogram_rows):
    """Maximum and percentiles of the requests-in-window counts, from their histogram."""
    histogram = sorted((r["requests_in_window"], r["occurrences"]) for r in histogram_rows)
    if not histogram:
        return {"max_requests": None, "p50": None, "p90": None, "p99": None, "requests": 0}
    return {"max_requests": histogram[-1][0],
            "p50": percentile_from_histogram(histogram, 0.5), "p90": percentile_from_histogram(histogram, 0.9),
            "p99": percentile_from_histogram(histogram, 0.99), "requests": sum(c for _, c in histogram)}


def _rows(cursor, sql, params):
    cursor.execute(sql, params)
    names = [c.name for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def dead_letter_counts(paths, start, end):
    """Usage rows the database refused for their content, quarantined by the gateway in its
    dead-letter files (JSON lines), counted by file and kind of refusal for the period."""
    counts = {}
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue  # no row was ever refused there
        for line in lines:
            try:
                entry = json.loads(line)
                when = dt.datetime.fromisoformat(entry["quarantined_at"])
            except (ValueError, KeyError, TypeError):
                continue
            if start <= when < end:
                kind = str(entry.get("reason", "")).split(":", 1)[0] or "unknown"
                counts[(str(path), kind)] = counts.get((str(path), kind), 0) + 1
    return [{"file": path, "refusal": kind, "rows": rows} for (path, kind), rows in sorted(counts.items())]


def load_budgets(path):
    """{user name: monthly tokens} from a keys file (the gateway's keys.json, or any JSON object
    with a "users" list of entries with name and monthly_tokens); users without a budget are left out."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        users = document["users"]
        return {str(u["name"]): int(u["monthly_tokens"]) for u in users if u.get("monthly_tokens")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError("%s: not a file of users with name and monthly_tokens (%s: %s); give the gateway's "
                          "keys.json or a JSON object {\"users\": [{\"name\": ..., \"monthly_tokens\": ...}]}"
                          % (path, type(exc).__name__, exc)) from None


def budget_rows(budgets, used):
    """One row per budgeted user, the fullest first: the budget, the period's tokens, the share used."""
    by_name = {row["user_name"]: row for row in used}
    rows = []
    for name, monthly in budgets.items():
        tokens = int(by_name.get(name, {}).get("tokens") or 0)
        rows.append({"user_name": name, "monthly_tokens": monthly, "tokens": tokens,
                     "used_pct": round(100.0 * tokens / monthly, 1),
                     "refused_for_budget": int(by_name.get(name, {}).get("refused_for_budget") or 0)})
    return sorted(rows, key=lambda row: (-row["used_pct"], row["user_name"]))


def build_report(connection, period, *, windows=(6, 60), prices=None, prices_path="", monthly_cost=None,
                 timezone="UTC", prometheus_url=None, prometheus_query=None, prometheus_step=None,
                 dead_letter_files=(), budgets=None):
    """The report's tables. GPU utilisation comes from Prometheus when prometheus_url is given,
    else from the samples stored in gpu_samples. budgets: {user name: monthly tokens}."""
    start, end = period_bounds(period)
    params = {"start": start, "end": end, "tz": timezone}
    with connection.cursor() as cursor:
        totals = _rows(cursor, queries.TOTALS, params)
        if not totals:
            raise ReportError("no usage events between %s and %s: nothing to report for %s"
                              % (start.date(), end.date(), period))
        report = {
            "period": period, "start": start.isoformat(), "end": end.isoformat(),
            "total_requests": sum(r["requests"] for r in totals),
            "requests_by_type": totals,
            "daily_requests": _rows(cursor, queries.DAILY_BY_TYPE, params),
            "tokens_by_model": _rows(cursor, queries.TOKENS_BY_MODEL, params),
            "daily_tokens": _rows(cursor, queries.DAILY_TOKENS_BY_MODEL, params),
            "users_by_type": _rows(cursor, queries.USERS_BY_TYPE, params),
            "per_user": _rows(cursor, queries.PER_USER, params)[0],
            "per_user_counts": _rows(cursor, queries.PER_USER_COUNTS, params),
            "latency_by_model": _rows(cursor, queries.LATENCY_BY_MODEL, params),
            "rejected": _rows(cursor, queries.REJECTED, params),
            "not_recorded": dead_letter_counts(dead_letter_files, start, end),
            "bursts": [], "burst_histograms": {},
        }
        windows = tuple(dict.fromkeys(int(w) for w in windows))
        window_params = dict(params, **{"window_%d" % k: "%d seconds" % s for k, s in enumerate(windows)})
        histograms = {seconds: [] for seconds in windows}
        for row in _rows(cursor, queries.burst_histograms_sql(len(windows)), window_params) if windows else []:
            histograms[windows[row["window_index"]]].append(
                {"requests_in_window": row["requests_in_window"], "occurrences": row["occurrences"]})
        for seconds in windows:
            report["bursts"].append(dict(window_s=seconds, **burst_summary(histograms[seconds])))
            report["burst_histograms"][seconds] = histograms[seconds]
        if budgets:
            used = _rows(cursor, queries.BUDGETS, dict(params, names=sorted(budgets)))
            report["budgets"] = budget_rows(budgets, used)
        if not prometheus_url:
            report["gpu_utilisation"] = _rows(cursor, queries.GPU_UTILISATION, params)
            report["gpu_daily_utilisation"] = _rows(cursor, queries.GPU_DAILY_UTILISATION, params)
            report["gpu_source"] = "samples stored in gpu_samples"
    if prometheus_url:
        # Imported here: the prometheus module imports ReportError from this one.
        from llm_appliance.usage_report import prometheus

        query = prometheus_query or prometheus.DEFAULT_QUERY
        step = prometheus.DEFAULT_STEP_S if prometheus_step is None else prometheus_step
        report["gpu_utilisation"], report["gpu_daily_utilisation"] = prometheus.gpu_utilisation(
            prometheus_url, start, end, query=query, step=step, timezone=timezone)
        report["gpu_source"] = "Prometheus at %s, query %s, one point every %s s" % (prometheus_url, query, step)
    if prices is not None:
        report["public_api_cost"] = price_tokens(report["tokens_by_model"], prices, prices_path)
        report["currency"] = prices.get("currency", "")
        report["public_api_total"] = round(sum(r["total_cost"] for r in report["public_api_cost"]), 2)
        report["appliance_monthly_cost"] = monthly_cost
    return report
