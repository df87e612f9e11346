"""The alert rules the monitoring role writes: valid for Prometheus (promtool check rules), every
alert exercised by promtool's own rule tests (alerts.test.yml), each with its runbook, and the rules
follow the plan (one engine rule per model and host, thresholds from its numbers).

promtool is Debian's (the release the monitoring hosts run): `make promtool` unpacks it into
build/tools; PROMTOOL names another.
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from llm_appliance.monitoring.rules import DEFAULT_SETTINGS, alert_rules, merged_settings

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DASHBOARDS = ROOT / "roles" / "monitoring" / "files" / "grafana"

PLAN = {
    "hosts": {
        "gpu1": {"address": "10.0.0.1", "scheme": "https", "models": [
            {"name": "coder", "port": 8001, "profile": "completion", "kv_cache_tokens": 100000, "max_num_seqs": 64,
             "max_concurrency": 25.3, "predicted_tokens_per_s": 100.0}]},
        "gpu2": {"address": "10.0.0.2", "scheme": "https", "models": [
            {"name": "chat", "port": 8002, "profile": "chat", "kv_cache_tokens": 50000, "max_num_seqs": 32,
             "max_concurrency": 2.6, "predicted_tokens_per_s": 40.0}]},
    },
    "models": [{"name": "coder", "hosts": ["gpu1"], "port": 8001, "profile": "completion", "aliases": ["code"]},
               {"name": "chat", "hosts": ["gpu2"], "port": 8002, "profile": "chat", "aliases": []}],
}


def promtool():
    found = os.environ.get("PROMTOOL") or str(ROOT / "build" / "tools" / "promtool")
    if not pathlib.Path(found).is_file():
        found = shutil.which("promtool") or ""
    if not found:
        pytest.fail("promtool is missing: run `make promtool` (Debian's, unpacked into build/tools) or set PROMTOOL")
    return found


def write_rules(directory, plan=PLAN, settings=None, annotations=True):
    rules = alert_rules(plan, settings)
    if not annotations:
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations")
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=1000))
    return path


def test_promtool_accepts_the_rules_with_their_annotations(tmp_path):
    path = write_rules(tmp_path)
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_when_it_should_and_not_otherwise(tmp_path):
    # The expressions, windows and labels; promtool compares annotations exactly, checked apart below.
    write_rules(tmp_path, annotations=False)
    shutil.copy(HERE / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_case():
    tested = {case["alertname"] for test in yaml.safe_load((HERE / "alerts.test.yml").read_text())["tests"]
              for case in test["alert_rule_test"] if case.get("exp_alerts")}
    names = {rule["alert"] for group in alert_rules(PLAN)["groups"] for rule in group["rules"]}
    assert names - tested == set(), "alerts no test shows firing"


def test_every_alert_says_what_to_do():
    for group in alert_rules(PLAN)["groups"]:
        for rule in group["rules"]:
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"], rule["alert"]
            assert notes["runbook"].startswith("Runbook: ") and len(notes["runbook"]) > 40, rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_the_engine_rules_follow_the_plan():
    rules = [r for g in alert_rules(PLAN)["groups"] for r in g["rules"]]
    down = [r for r in rules if r["alert"] == "LlmEngineDown"]
    assert sorted((r["labels"]["model"], r["labels"]["host"]) for r in down) == [("chat", "gpu2"), ("coder", "gpu1")]
    kv = {r["labels"]["model"]: r["expr"] for r in rules if r["alert"] == "LlmKvCacheBelowPlan"}
    assert kv["coder"].endswith("< 90000") and kv["chat"].endswith("< 45000")
    decode = {r["labels"]["model"]: r["expr"] for r in rules if r["alert"] == "LlmDecodeBelowPlan"}
    assert "< 50) and" in decode["coder"] and "< 20) and" in decode["chat"]
    ttft = {r["labels"]["model"]: r["expr"] for r in rules if r["alert"] == "LlmTimeToFirstTokenSlow"}
    assert ttft["coder"].endswith("> 2") and ttft["chat"].endswith("> 5")
    # A retired model leaves no rule behind; a CPU plan without a speed prediction has no decode rule.
    cpu_plan = json.loads(json.dumps(PLAN))
    del cpu_plan["hosts"]["gpu2"]
    cpu_plan["models"] = cpu_plan["models"][:1]
    del cpu_plan["hosts"]["gpu1"]["models"][0]["predicted_tokens_per_s"]
    names = [(r["alert"], r["labels"].get("model")) for g in alert_rules(cpu_plan)["groups"] for r in g["rules"]]
    assert ("LlmEngineDown", "chat") not in names and ("LlmDecodeBelowPlan", "coder") not in names


def test_thresholds_come_from_the_inventory_and_unknown_settings_are_refused():
    settings = {"gateway_5xx_ratio": 0.01, "ttft_seconds": {"completion": 0.5}, "engine_down_for": "30s"}
    rules = {r["alert"] + r["labels"].get("model", ""): r for g in alert_rules(PLAN, settings)["groups"]
             for r in g["rules"]}
    assert rules["GatewayErrors"]["expr"].endswith("> 0.01")
    assert rules["LlmTimeToFirstTokenSlowcoder"]["expr"].endswith("> 0.5")
    assert rules["LlmTimeToFirstTokenSlowchat"]["expr"].endswith("> 5")  # the other profiles keep theirs
    assert rules["LlmEngineDowncoder"]["for"] == "30s"
    with pytest.raises(ValueError, match="monitoring_alert_settings: unknown setting.*gateway_5xx"):
        merged_settings({"gateway_5xx": 0.01})
    assert set(merged_settings(None)) == set(DEFAULT_SETTINGS)


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_each_dashboard_loads_and_every_panel_queries_the_chosen_prometheus(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"].startswith("LLM appliance")
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_the_dashboards_queries_are_valid_promql(tmp_path):
    # promtool parses every query as a rule expression.
    rules = [{"record": "dashboard:check:%d" % n, "expr": target["expr"]}
             for n, (panel, target) in enumerate((p, t) for path in sorted(DASHBOARDS.glob("*.json"))
                                                 for p in json.loads(path.read_text())["panels"] for t in p["targets"])]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
