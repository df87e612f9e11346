"""The usage report on the appliance: the installed command over the real database, and the
playbook that brings the report to the controller."""
import json
from pathlib import Path

from playbook_runner import run_playbook

REPO = Path(__file__).resolve().parents[3]
# Synthetic months replace rows, which only the superuser may do (the gateway's role only inserts).
SYNTHETIC = "runuser -u postgres -- appliance-report synthetic --dsn dbname=llm_appliance"


def run_report_play(period, tmp_path):
    return run_playbook("playbooks/report.yml", "-e", "period=%s" % period, timeout=600)


def test_schema_applied_and_owned_by_a_role_that_cannot_log_in(psql):
    owners = psql("SELECT tablename || ' ' || tableowner FROM pg_tables "
                  "WHERE tablename IN ('usage_events', 'gpu_samples') ORDER BY 1", "llm_appliance")
    assert owners.splitlines() == ["gpu_samples llm_usage", "usage_events llm_usage"]
    assert psql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'llm_usage'") == "f"


def test_report_playbook_brings_the_month_to_the_controller(host, tmp_path):
    host.run("runuser -u postgres -- psql -d llm_appliance "
             "-c \"DELETE FROM usage_events WHERE request_id LIKE '2026%%'\"")
    loaded = host.run(SYNTHETIC + " --period 2026-03 --rows 5000 --seed 3")
    assert loaded.rc == 0, loaded.stderr
    result = run_report_play("2026-03", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    out = REPO / "build/reports/demo/2026-03"
    by_type = json.loads((out / "requests_by_type.json").read_text())
    assert sum(r["requests"] for r in by_type) == 5000
    # The inventory's prices and monthly cost reach the report: the cost table sums to its total.
    costs = json.loads((out / "public_api_cost.json").read_text())
    assert {r["model"] for r in costs} == {"qwen-coder", "gemma-chat", "qwen3-eval"}
    page = (out / "index.html").read_text()
    assert "2500" in page
    # Requests per day, tokens per day, the per-user histogram, the burst plot, and GPU use per day.
    assert (out / "index.html").read_text().count("<img") == 5
    assert not host.run("ls -d /tmp/usage-report-*").stdout.strip(), "the scratch directory was left behind"


def test_empty_period_and_bad_period_are_explained(host, tmp_path):
    empty = run_report_play("2019-01", tmp_path)
    assert empty.returncode != 0
    assert "no usage events between 2019-01-01 and 2019-02-01" in empty.stdout
    bad = run_report_play("April", tmp_path)
    assert bad.returncode != 0
    assert "-e period=YYYY-MM" in bad.stdout


def test_report_role_cannot_write(host):
    write = host.run("PGPASSWORD=demo-report-db-password psql -w -h 127.0.0.1 -U llm_report -d llm_appliance "
                     "-c \"INSERT INTO usage_events (started_at) VALUES (now())\"")
    assert write.rc != 0 and "permission denied" in write.stderr
