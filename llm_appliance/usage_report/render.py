"""Writes the report: index.html with PNG plots, and a CSV and a JSON file per table."""
import csv
import datetime as dt
import decimal
import html
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TABLES = ["requests_by_type", "daily_requests", "tokens_by_model", "daily_tokens", "users_by_type",
          "per_user_counts", "latency_by_model", "rejected", "not_recorded", "bursts", "gpu_utilisation",
          "gpu_daily_utilisation", "public_api_cost", "budgets"]


def _plain(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def _write_table(directory, name, rows):
    rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
    with open(os.path.join(directory, name + ".json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(directory, name + ".csv"), "w", newline="", encoding="utf-8") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _plot(path, draw, title):
    figure, axes = plt.subplots(figsize=(9, 3.6), dpi=100)
    draw(axes)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def _daily_lines(rows, key, value):
    series = defaultdict(dict)
    for row in rows:
        series[row[key]][row["day"]] = float(value(row))
    return series


def _cell(value):
    # An unknown figure (no memory readings, no latency) is an empty cell, not "None".
    return "" if value is None else html.escape(str(_plain(value)))


def _table_html(rows, columns=None):
    if not rows:
        return "<p>none</p>"
    columns = columns or list(rows[0])
    head = "".join("<th>%s</th>" % html.escape(str(c)) for c in columns)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % _cell(r.get(c)) for c in columns) for r in rows)
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def write_report(report, directory):
    os.makedirs(directory, exist_ok=True)
    for name in TABLES:
        if name in report:
            _write_table(directory, name, report[name])
    _write_table(directory, "per_user_summary", [report["per_user"]])
    plots = {}

    def daily_requests(axes):
        for call_type, points in sorted(_daily_lines(report["daily_requests"], "call_type",
                                                     lambda r: r["requests"]).items()):
            days = sorted(points)
            axes.plot(days, [points[d] for d in days], marker="o", label=call_type)
        axes.set_ylabel("requests per day")
        axes.legend()
        axes.tick_params(axis="x", rotation=30)
    plots["daily_requests"] = ("Requests per day by kind", daily_requests)

    def daily_tokens(axes):
        for model, points in sorted(_daily_lines(report["daily_tokens"], "model",
                                                 lambda r: r["prompt_tokens"] + r["completion_tokens"]).items()):
            days = sorted(points)
            axes.plot(days, [points[d] for d in days], marker="o", label=model)
        axes.set_ylabel("tokens per day")
        axes.legend()
        axes.tick_params(axis="x", rotation=30)
    plots["daily_tokens"] = ("Tokens per day by model (prompt + completion)", daily_tokens)

    def per_user(axes):
        counts = [r["requests"] for r in report["per_user_counts"]]
        axes.hist(counts, bins=min(30, max(len(counts), 1)), color="#4a7ab0")
        axes.set_xlabel("requests per user in the period")
        axes.set_ylabel("users")
    plots["per_user"] = ("Per-user request distribution", per_user)

    def bursts(axes):
        for seconds, rows in sorted(report["burst_histograms"].items()):
            axes.step([r["requests_in_window"] for r in rows], [r["occurrences"] for r in rows],
                      where="mid", label="%d s window" % seconds)
        axes.set_xlabel("requests in the window that starts with a request")
        axes.set_ylabel("requests")
        axes.set_yscale("log")
        axes.legend()
    plots["bursts"] = ("Bursts", bursts)

    def gpu_daily(axes):
        series = defaultdict(dict)
        for row in report["gpu_daily_utilisation"]:
            if row["mean_utilization_pct"] is not None:
                series["%s GPU %d" % (row["host"], row["gpu_index"])][row["day"]] = float(row["mean_utilization_pct"])
        for label, points in sorted(series.items()):
            days = sorted(points)
            axes.plot(days, [points[d] for d in days], marker="o", label=label)
        axes.set_ylabel("mean utilisation, %")
        axes.set_ylim(0, 100)
        if series:  # GPUs that only ever reported [N/A] leave nothing to draw
            axes.legend(fontsize="small", ncol=4)
        axes.tick_params(axis="x", rotation=30)
    if report["gpu_utilisation"]:
        plots["gpu_daily"] = ("Daily mean GPU utilisation", gpu_daily)

    for name, (title, draw) in plots.items():
        _plot(os.path.join(directory, name + ".png"), draw, title)

    per_user_summary = {k: _plain(v) for k, v in report["per_user"].items()}
    cost = ""
    if "public_api_cost" in report:
        cost = ("<h2>The same traffic on a public API</h2>%s<p>Public API total: <b>%.2f %s</b>; appliance: %s</p>"
                % (_table_html(report["public_api_cost"]), report["public_api_total"], html.escape(report["currency"]),
                   "%.2f %s per month" % (report["appliance_monthly_cost"], html.escape(report["currency"]))
                   if report.get("appliance_monthly_cost") is not None else "monthly cost not given"))
    budgets = ""
    if report.get("budgets"):
        budgets = ('<h2 id="budgets">Monthly token budgets</h2>%s<p>Prompt and completion tokens of each user with '
                   'a budget (monthly_tokens) in this period, and the requests refused once it was used up.</p>'
                   % _table_html(report["budgets"]))
    gpu_source = "<p>Source: %s.</p>" % html.escape(report["gpu_source"])
    if report["gpu_utilisation"]:
        gpu = _table_html(report["gpu_utilisation"]) + '<img src="gpu_daily.png" alt="Daily GPU utilisation">' \
            + gpu_source
    else:
        gpu = '<p id="no-gpu-samples">No GPU samples for this period.</p>' + gpu_source
    page = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>llm-appliance usage {period}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1 id="title">Usage report {period}</h1>
<p id="total">{total} requests from {start} to {end}</p>
<h2>Requests by kind</h2>{by_type}<img src="daily_requests.png" alt="Requests per day">
<h2>Tokens by model</h2>{tokens}<img src="daily_tokens.png" alt="Tokens per day">
<h2>Users</h2>{users}<p>Per user: {users_n} users, mean {mean} requests, median {median}, top 10% of users send
{top10}% of the requests.</p><img src="per_user.png" alt="Per-user distribution">
<h2>Bursts</h2>{bursts}<img src="bursts.png" alt="Bursts">
<h2>Latency and errors</h2>{latency}
<h2 id="rejected">Refused at the gateway</h2>{rejected}
{budgets}<h2 id="not-recorded">Requests not recorded</h2>{not_recorded}
<h2 id="gpu">GPU utilisation</h2>{gpu}
{cost}
</body></html>
""".format(period=html.escape(report["period"]), total=report["total_requests"], start=report["start"][:10],
           end=report["end"][:10], by_type=_table_html(report["requests_by_type"]),
           tokens=_table_html(report["tokens_by_model"]), users=_table_html(report["users_by_type"]),
           users_n=per_user_summary["users"], mean=per_user_summary["mean_requests"],
           median=per_user_summary["median_requests"], top10=per_user_summary["top10_share_pct"],
           bursts=_table_html(report["bursts"], ["window_s", "max_requests", "p50", "p90", "p99"]),
           latency=_table_html(report["latency_by_model"]),
           rejected=_table_html(report["rejected"]) if report["rejected"] else "<p>None.</p>",
           not_recorded=(_table_html(report["not_recorded"]) + "<p>Usage rows the database refused for their "
                         "content; the gateway kept them, with the reason, in these files.</p>"
                         if report["not_recorded"] else "<p>None: every request became a usage row.</p>"),
           gpu=gpu, cost=cost, budgets=budgets)
    with open(os.path.join(directory, "index.html"), "w", encoding="utf-8") as handle:
        handle.write(page)
    return os.path.join(directory, "index.html")
