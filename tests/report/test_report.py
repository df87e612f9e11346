"""The usage report on crafted inputs with exact expected figures, and on a synthetic month."""
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from llm_appliance.usage_report.prices import PriceError, price_tokens
from llm_appliance.usage_report.report import build_report
from llm_appliance.usage_report.synthetic import load as load_synthetic

REPO = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 4, 7, 9, 0, 0, tzinfo=dt.UTC)


def insert(dsn, rows):
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO usage_events (request_id, started_at, user_id, model, call_type, prompt_tokens,"
            " completion_tokens, latency_ms, ttft_ms, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows)


def event(n, seconds, user="alice", model="qwen-coder", call_type="completion", prompt=100, completion=10,
          status="success"):
    return ("r%d" % n, T0 + dt.timedelta(seconds=seconds), user, model, call_type, prompt, completion,
            200.0 + n, 50.0 + n, status)


def report_for(dsn, **kwargs):
    with psycopg.connect(dsn) as connection:
        return build_report(connection, "2026-04", **kwargs)


def test_burst_windows_of_a_known_series(database):
    # Requests at 0, 1, 2, 5.9, 6.0 and 20 s: the 6 s window after each holds 4, 4, 3, 2, 1, 1
    # requests ([t, t+6) is half-open: 6.0 is not in the window that starts at 0).
    insert(database, [event(i, s) for i, s in enumerate([0, 1, 2, 5.9, 6.0, 20])])
    report = report_for(database, windows=(6, 60))
    six, sixty = report["bursts"]
    assert six["window_s"] == 6 and six["max_requests"] == 4
    assert sixty["max_requests"] == 6
    histogram = {r["requests_in_window"]: r["occurrences"] for r in report["burst_histograms"][6]}
    assert histogram == {4: 2, 3: 1, 2: 1, 1: 2}


def test_burst_percentiles_equal_postgresqls_percentile_cont(database):
    """The summary is computed from the histogram; it must agree with PostgreSQL's own percentile_cont."""
    import random

    from llm_appliance.usage_report.report import burst_summary

    rng = random.Random(7)
    values = [rng.choice([1, 1, 1, 2, 2, 3, 5, 8, 13, 40]) for _ in range(997)]
    histogram = [{"requests_in_window": v, "occurrences": values.count(v)} for v in sorted(set(values))]
    with psycopg.connect(database) as connection:
        expected = connection.execute(
            "SELECT max(v), percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.9) WITHIN GROUP "
            "(ORDER BY v), percentile_cont(0.99) WITHIN GROUP (ORDER BY v) FROM unnest(%s::int[]) AS v",
            (values,)).fetchone()
    summary = burst_summary(histogram)
    assert (summary["max_requests"], summary["p50"], summary["p90"], summary["p99"]) == pytest.approx(expected)
    assert summary["requests"] == 997


def test_per_user_distribution(database):
    rows, n = [], 0
    for user, count in (("alice", 5), ("bob", 3), ("carol", 1), ("dave", 1)):
        for _ in range(count):
            rows.append(event(n, n * 10, user=user))
            n += 1
    rows.append(event(n, n * 10, user="erin", call_type="chat", model="gemma-chat"))
    insert(database, rows)
    report = report_for(database)
    summary = report["per_user"]
    assert summary["users"] == 5
    assert float(summary["mean_requests"]) == 2.2
    assert summary["median_requests"] == 1.0
    assert float(summary["top10_share_pct"]) == pytest.approx(100 * 5 / 11, abs=0.01)
    assert {r["call_type"]: r["users"] for r in report["users_by_type"]} == {"chat": 1, "completion": 4}
    shares = {r["call_type"]: float(r["share_pct"]) for r in report["requests_by_type"]}
    assert shares == {"completion": pytest.approx(90.91, abs=0.01), "chat": pytest.approx(9.09, abs=0.01)}


def test_refused_requests_are_counted_apart_from_traffic(database):
    insert(database, [event(0, 0), event(1, 1), event(2, 2, status="failure"),
                      event(3, 3, user="mallory", status="rejected", prompt=0, completion=0),
                      event(4, 4, user=None, status="rejected", prompt=0, completion=0)])
    with psycopg.connect(database) as connection:
        connection.execute("UPDATE usage_events SET error_class = 'Unauthorized' WHERE request_id IN ('r3', 'r4')")
    report = report_for(database)
    assert report["total_requests"] == 3
    assert report["bursts"][0]["max_requests"] == 3
    assert [(r["model"], r["requests"]) for r in report["latency_by_model"]] == [("qwen-coder", 3)]
    assert float(report["latency_by_model"][0]["error_rate_pct"]) == pytest.approx(33.333, abs=0.001)
    assert report["rejected"] == [{"refused_as": "Unauthorized", "requests": 2, "known_users": 1}]


def test_budgeted_users_tokens_against_their_budgets(database, tmp_path):
    insert(database, [event(0, 0), event(1, 1, completion=40), event(2, 2, user="bob"),
                      event(3, 3, status="rejected", prompt=0, completion=0),
                      event(4, 4, user="carol", prompt=5, completion=5)])
    with psycopg.connect(database) as connection:
        connection.execute("UPDATE usage_events SET key_alias = user_id")
        connection.execute("UPDATE usage_events SET error_class = 'BudgetExhausted' WHERE request_id = 'r3'")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"users": [
        {"name": "alice", "key_sha256": "0" * 64, "monthly_tokens": 500},
        {"name": "bob", "key_sha256": "1" * 64, "monthly_tokens": None},
        {"name": "dave", "key_sha256": "2" * 64, "monthly_tokens": 1000}]}))
    out = tmp_path / "report"
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(out), "--budgets", str(keys))
    assert result.returncode == 0, result.stderr
    # alice: 110 + 140 tokens of 500, one request refused for the budget; dave: nothing yet; bob has none.
    assert json.loads((out / "budgets.json").read_text()) == [
        {"user_name": "alice", "monthly_tokens": 500, "tokens": 250, "used_pct": 50.0, "refused_for_budget": 1},
        {"user_name": "dave", "monthly_tokens": 1000, "tokens": 0, "used_pct": 0.0, "refused_for_budget": 0}]
    assert 'id="budgets"' in (out / "index.html").read_text()
    keys.write_text("[1, 2]")
    refused = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(out), "--budgets", str(keys))
    assert refused.returncode != 0 and "not a file of users with name and monthly_tokens" in refused.stderr


def test_rows_the_database_refused_are_counted_from_the_dead_letter_files(database, tmp_path):
    """The gateway's writer quarantines rows PostgreSQL refuses; the report says how many, per file and kind."""
    from llm_appliance.gateway.usage_logger import DeadLetter

    insert(database, [event(0, 0)])
    letters = DeadLetter(tmp_path / "dead-letter.jsonl")
    letters.add({"request_id": "x1"}, "DataError: PostgreSQL text fields cannot contain NUL (0x00) bytes")
    letters.add({"request_id": "x2"}, "DataError: invalid byte sequence")
    letters.add({"request_id": "x3"}, "NotNullViolation: null value in column")
    letters.add({"request_id": "x4"}, "DataError: quarantined in another month")
    entries = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    for entry in entries:  # dated into the report's month, the last one just before it
        entry["quarantined_at"] = "2026-03-31T23:59:59+00:00" if entry["row"]["request_id"] == "x4" \
            else "2026-04-10T12:00:00+00:00"
    (tmp_path / "dead-letter.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    report = report_for(database, dead_letter_files=[tmp_path / "dead-letter.jsonl", tmp_path / "absent.jsonl"])
    assert [(r["refusal"], r["rows"]) for r in report["not_recorded"]] == [("DataError", 2), ("NotNullViolation", 1)]
    assert report_for(database)["not_recorded"] == []


def test_public_api_cost(database):
    insert(database, [event(0, 0, prompt=1_500_000, completion=400_000),
                      event(1, 1, prompt=500_000, completion=100_000)])
    prices = {"currency": "EUR", "models": {"qwen-coder": {"prompt": 0.5, "completion": 1.5}}}
    report = report_for(database, prices=prices, prices_path="prices.json", monthly_cost=900.0)
    row = report["public_api_cost"][0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2_000_000, 500_000)
    assert row["total_cost"] == 1.75
    assert report["public_api_total"] == 1.75


def test_rows_named_as_the_gateway_calls_the_engine_take_the_models_price(database):
    """The gateway's rows name the engine's model with LiteLLM's provider prefix; the prices file
    names the model (the demo's tiny-code): a real month is priced, not refused."""
    insert(database, [event(0, 0, model="hosted_vllm/tiny-code", prompt=1_000_000, completion=1_000_000)])
    prices = {"currency": "EUR", "models": {"tiny-code": {"prompt": 0.2, "completion": 0.6}}}
    row = report_for(database, prices=prices, prices_path="prices.json")["public_api_cost"][0]
    assert (row["model"], row["total_cost"]) == ("hosted_vllm/tiny-code", 0.8)


def test_unknown_price_names_the_model():
    with pytest.raises(PriceError,
                       match=r"no public price for model\(s\) gemma-chat: add them under \"models\" in p.json"):
        price_tokens([{"model": "gemma-chat", "prompt_tokens": 1, "completion_tokens": 1}],
                     {"models": {"qwen-coder": {"prompt": 1, "completion": 1}}}, "p.json")


def run_cli(*args):
    return subprocess.run([str(Path(sys.executable).with_name("appliance-report")), *args],
                          capture_output=True, text=True, check=False, timeout=600)


def test_empty_period_is_a_clear_message(database):
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", tempfile.mkdtemp())
    assert result.returncode == 1
    assert "no usage events between 2026-04-01 and 2026-05-01" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_a_clear_message():
    result = run_cli("report", "--dsn", "host=127.0.0.1 port=1 user=x password=secret dbname=x",
                     "--period", "2026-04", "--out", tempfile.mkdtemp())
    assert result.returncode == 1
    assert "cannot reach the usage database" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_synthetic_month_report_with_plots_and_page(database, tmp_path):
    with psycopg.connect(database) as connection:
        assert load_synthetic(connection, "2026-04", 20000, seed=1) == 20000
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"currency": "EUR", "models": {
        "qwen-coder": {"prompt": 0.4, "completion": 1.2}, "gemma-chat": {"prompt": 0.3, "completion": 0.9},
        "qwen3-eval": {"prompt": 0.3, "completion": 0.9}}}))
    out = tmp_path / "report"
    result = run_cli("report", "--dsn", database, "--period", "2026-04", "--out", str(out), "--prices", str(prices),
                     "--monthly-cost", "1500")
    assert result.returncode == 0, result.stderr
    by_type = json.loads((out / "requests_by_type.json").read_text())
    shares = {r["call_type"]: r["share_pct"] for r in by_type}
    assert 94 <= shares["completion"] <= 96
    assert sum(r["requests"] for r in by_type) == 20000
    assert (out / "tokens_by_model.csv").read_text().startswith("model,requests,prompt_tokens,completion_tokens")
    # A GPU sample a minute for 4 GPUs over April's 30 days; ~25% busy, busier on working days.
    gpus = json.loads((out / "gpu_utilisation.json").read_text())
    assert [(r["host"], r["gpu_index"], r["samples"]) for r in gpus] == [
        ("synthetic-gpu-node", gpu, 43200) for gpu in range(4)]
    assert 22 <= sum(r["mean_utilization_pct"] for r in gpus) / 4 <= 28
    daily = json.loads((out / "gpu_daily_utilisation.json").read_text())
    weekdays = [r["mean_utilization_pct"] for r in daily if dt.date.fromisoformat(r["day"]).weekday() < 5]
    weekends = [r["mean_utilization_pct"] for r in daily if dt.date.fromisoformat(r["day"]).weekday() >= 5]
    assert min(weekdays) > 2 * max(weekends)
    for name in ("daily_requests", "daily_tokens", "per_user", "bursts", "gpu_daily"):
        png = out / (name + ".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.load()
            assert image.size[0] > 300 and image.size[1] > 100
            low, high = image.convert("L").getextrema()
            assert high - low > 50, "%s is blank" % name

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run tools/install-host-deps")
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          "--user-data-dir=%s" % profile, "--dump-dom", (out / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert 'id="title">Usage report 2026-04' in dom.stdout, dom.stderr[-2000:]
    assert "20000 requests" in dom.stdout
    assert '<h2 id="gpu">GPU utilisation</h2><table>' in dom.stdout and '<img src="gpu_daily.png"' in dom.stdout
