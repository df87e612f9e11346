"""The front host watches the site: Prometheus scrapes every engine, gateway instance and exporter
of the three hosts; an engine that stops raises its alert in Alertmanager and the alert resolves
when the engine is back; the dashboards ask only for metric names the scrape yields; operators
reach Prometheus's UI through nginx with their password and not without it.

The scenario's windows are short (monitoring.yml in group_vars: 5 s scrapes, 10 s before an
engine's absence alerts). The figures the issue asks for (series per host, scrape interval,
Prometheus's memory) are written to the file MONITORING_FIGURES names, or printed.
"""
import json
import os
import pathlib
import re
import time

import pytest
import testinfra

testinfra_hosts = ["cluster-front"]

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
GPU_UNIT = "vllm-tiny-code.service"
DASHBOARDS = pathlib.Path(__file__).resolve().parents[3] / "roles" / "monitoring" / "files" / "grafana"
UI_NAME = "monitoring.demo.internal"
UI_PASSWORD = "demo-monitoring-password"
CA = "/etc/llm-appliance/ca/ca.crt"
ALICE = "sk-demo-alice-0123456789"


def get_json(host, url):
    out = host.check_output("curl -sS --fail --max-time 10 %s", url)
    return json.loads(out)


def query(host, expr):
    out = host.check_output("curl -sS --fail --max-time 10 --data-urlencode %s %s/api/v1/query",
                            "query=" + expr, PROMETHEUS)
    return json.loads(out)["data"]["result"]


def wait_for(check, timeout, what, step=2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("%s: not within %d s (last: %r)" % (what, timeout, last))


def targets(host):
    return get_json(host, PROMETHEUS + "/api/v1/targets?state=active")["data"]["activeTargets"]


def test_every_target_of_the_site_is_scraped_and_up(host):
    def all_up():
        found = targets(host)
        return found if found and all(t["health"] == "up" for t in found) else None

    try:
        found = wait_for(all_up, 90, "every target up")
    except AssertionError:
        down = [(t["labels"]["job"], t["labels"].get("host"), t["lastError"]) for t in targets(host)
                if t["health"] != "up"]
        raise AssertionError("targets down: %s" % down) from None
    jobs = {}
    for target in found:
        jobs.setdefault(target["labels"]["job"], set()).add(target["labels"].get("host"))
    assert jobs["vllm"] == {"cluster-gpu1", "cluster-gpu2"}
    assert jobs["node"] == {"cluster-front", "cluster-gpu1", "cluster-gpu2"}
    for job in ("gateway", "nginx", "postgresql", "redis", "prometheus", "alertmanager"):
        assert jobs[job] == {"cluster-front"}, job
    # vLLM's CPU build on hosts without GPUs: no DCGM exporter, and the play said why.
    assert "dcgm" not in jobs


def test_the_appliances_own_facts_are_published(host):
    def facts():
        found = {(r["metric"]["__name__"], r["metric"].get("host")) for r in query(
            host, '{__name__=~"appliance_.+|llm_appliance_usage_spool_files"}')}
        wanted = {("appliance_kv_cache_tokens_found", "cluster-gpu1"),
                  ("appliance_kv_cache_tokens_found", "cluster-gpu2"),
                  ("appliance_last_dump_timestamp_seconds", "cluster-front"),
                  ("appliance_certificate_expiry_timestamp_seconds", "cluster-front"),
                  ("appliance_certificate_expiry_timestamp_seconds", "cluster-gpu1"),
                  ("llm_appliance_usage_spool_files", "cluster-front")}
        return found if wanted <= found else None

    wait_for(facts, 90, "the facts of every host")
    # The KV cache vLLM found is the one the plan counted on (CPU engine: the KV space it was given).
    kv = query(host, "appliance_kv_cache_tokens_found")
    assert all(float(r["value"][1]) > 0 for r in kv), kv
    assert not query(host, 'appliance_facts_errors > 0'), "a part of the facts could not be read"
    assert not query(host, 'ALERTS{alertname="LlmKvCacheBelowPlan"}'), "vLLM found less KV cache than the plan"


def test_a_request_through_the_front_shows_in_the_gateway_and_engine_metrics(host):
    body = json.dumps({"model": "code", "prompt": "def add(a, b):", "max_tokens": 4})
    status = host.check_output(
        "curl -sS -o /dev/null -w '%%{http_code}' --max-time 120 --cacert %s --resolve api.demo.internal:443:127.0.0.1 "
        "-H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d %s "
        "https://api.demo.internal/v1/completions", CA, ALICE, body)
    assert status == "200"
    bad = host.check_output(
        "curl -sS -o /dev/null -w '%%{http_code}' --max-time 30 --cacert %s --resolve api.demo.internal:443:127.0.0.1 "
        "-H 'Authorization: Bearer sk-not-a-key-000000000000' -H 'Content-Type: application/json' -d %s "
        "https://api.demo.internal/v1/completions", CA, body)
    assert bad == "401"

    def counted():
        ok = query(host, 'sum(llm_gateway_requests_total{route="/v1/completions",model="code",status="200"})')
        refused = query(host, 'sum(llm_gateway_requests_total{status="401"})')
        tokens = query(host, 'sum(llm_gateway_tokens_total{model="code",kind="completion"})')
        ttft = query(host, 'sum(llm_gateway_time_to_first_token_seconds_count{model="code"})')
        engine = query(host, 'sum(vllm:generation_tokens_total{job="vllm"})')
        values = [float(r[0]["value"][1]) if r else 0 for r in (ok, refused, tokens, ttft, engine)]
        return values if all(v > 0 for v in values) else None

    wait_for(counted, 60, "the request in the gateway's and the engines' metrics")


def firing(host, alertname, labels):
    alerts = get_json(host, ALERTMANAGER + "/api/v2/alerts?active=true&silenced=false&inhibited=false")
    return [a for a in alerts if a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items()) and a["status"]["state"] == "active"]


# Stands in for the site's webhook receiver (monitoring_alert_webhooks in group_vars): each POST's
# body, one per line.
WEBHOOK_SINK = """
import http.server
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/tmp/alert-webhook.jsonl", "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 9095), Sink).serve_forever()
"""


def webhook_notifications(host, alertname, status):
    text = host.run("cat /tmp/alert-webhook.jsonl").stdout
    found = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [n for n in found if n["status"] == status
            and any(a["labels"].get("alertname") == alertname for a in n["alerts"])]


def test_a_stopped_engine_fires_its_alert_and_it_resolves_when_the_engine_is_back(host):
    gpu2 = testinfra.get_host("docker://cluster-gpu2")
    host.run("systemctl stop alert-webhook-sink; systemctl reset-failed alert-webhook-sink; "
             "rm -f /tmp/alert-webhook.jsonl")
    host.check_output("systemd-run --unit alert-webhook-sink python3 -c %s", WEBHOOK_SINK)
    labels = {"host": "cluster-gpu2", "model": "tiny-code"}
    # A clean start: the engine is up and no earlier alert of it is still active.
    wait_for(lambda: not firing(host, "LlmEngineDown", labels) and query(
        host, 'up{job="vllm",host="cluster-gpu2"} == 1'), 300, "no LlmEngineDown before the stop", step=3)
    rules = get_json(host, PROMETHEUS + "/api/v1/rules?type=alert")["data"]["groups"]
    rule = [r for g in rules for r in g["rules"]
            if r["name"] == "LlmEngineDown" and r["labels"].get("host") == "cluster-gpu2"]
    assert rule and "Runbook:" in rule[0]["annotations"]["runbook"], "the plan's engine has no rule with a runbook"
    stopped_at = time.time()
    gpu2.check_output("systemctl stop %s", GPU_UNIT)
    try:
        alert = wait_for(lambda: firing(host, "LlmEngineDown", labels), 120, "LlmEngineDown in Alertmanager")
        fired_after = time.time() - stopped_at
        assert alert[0]["labels"]["severity"] == "critical"
        assert "systemctl" in alert[0]["annotations"]["runbook"]
    finally:
        gpu2.check_output("systemctl start %s", GPU_UNIT)
    started_at = time.time()
    wait_for(lambda: not firing(host, "LlmEngineDown", labels) and query(
        host, 'up{job="vllm",host="cluster-gpu2"} == 1'), 600, "LlmEngineDown resolved", step=3)
    resolved_after = time.time() - started_at
    # The site's receiver was told both: firing, then resolved.
    wait_for(lambda: webhook_notifications(host, "LlmEngineDown", "resolved"), 60, "the resolved notification")
    assert webhook_notifications(host, "LlmEngineDown", "firing")
    host.run("systemctl stop alert-webhook-sink")
    print("LlmEngineDown fired %.0f s after the stop, resolved %.0f s after the start" % (fired_after, resolved_after))


def dashboard_metric_names(dashboard):
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            # Metric names: identifiers not followed by "(" (functions) and not label names or keywords.
            expr = re.sub(r"\{[^}]*\}", "", expr)
            expr = re.sub(r"\[[^\]]*\]", "", expr)
            for found in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
                word, rest = found.group(0), expr[found.end():].lstrip()
                # Functions and aggregations are followed by "(", grouping labels sit inside "by (...)".
                if rest.startswith("(") or word in PROMQL_WORDS:
                    continue
                names.add(word)
    return names


PROMQL_WORDS = {"sum", "by", "without", "rate", "irate", "increase", "avg", "max", "min", "count", "le", "on",
                "ignoring", "group_left", "group_right", "and", "or", "unless", "histogram_quantile", "topk",
                "time", "avg_over_time", "max_over_time", "min_over_time", "clamp_min", "host", "model", "status",
                "job", "kind", "route", "instance", "gpu", "mountpoint", "fstype", "mode", "name", "device",
                "e", "bool", "offset", "label_replace", "vector", "scalar", "abs", "deriv"}


def test_the_dashboards_ask_only_for_metric_names_the_scrape_yields(host):
    scraped = set(get_json(host, PROMETHEUS + "/api/v1/label/__name__/values")["data"])
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(files) >= 2
    for path in files:
        dashboard = json.loads(path.read_text())
        names = dashboard_metric_names(dashboard)
        assert names, path.name
        # NVIDIA's DCGM exporter runs only where there are GPUs; these hosts have none.
        missing = sorted(n for n in names if n not in scraped and not n.startswith("DCGM_"))
        assert not missing, "%s asks for names no target yields: %s" % (path.name, missing)


def test_operators_reach_prometheus_through_nginx_with_their_password_only(host):
    base = ("curl -sS -o /dev/null -w '%%{http_code}' --max-time 10 --cacert %s --resolve %s:443:127.0.0.1 "
            "https://%s/api/v1/status/buildinfo")
    assert host.check_output(base, CA, UI_NAME, UI_NAME) == "401"
    assert host.check_output(base + " -u %s", CA, UI_NAME, UI_NAME, "operator:wrong-password") == "401"
    assert host.check_output(base + " -u %s", CA, UI_NAME, UI_NAME, "operator:" + UI_PASSWORD) == "200"
    # Prometheus and Alertmanager themselves listen on loopback only.
    listening = host.check_output("ss -Htln")
    for port in (9090, 9093):
        assert re.search(r"127\.0\.0\.1:%d\b" % port, listening)
        assert not re.search(r"(0\.0\.0\.0|\*|172\.30\.77\.10):%d\b" % port, listening)


def test_figures_series_per_host_scrape_interval_and_memory(host):
    series = {r["metric"]["host"]: int(float(r["value"][1]))
              for r in query(host, 'count by (host) ({__name__=~".+"})')}
    memory = query(host, 'process_resident_memory_bytes{job="prometheus"}')
    interval = get_json(host, PROMETHEUS + "/api/v1/status/config")["data"]["yaml"]
    figures = {"series_per_host": series,
               "scrape_interval": re.search(r"scrape_interval: (\S+)", interval).group(1),
               "prometheus_rss_mib": round(float(memory[0]["value"][1]) / 2**20, 1),
               "head_series": int(float(query(host, "prometheus_tsdb_head_series")[0]["value"][1]))}
    out = os.environ.get("MONITORING_FIGURES")
    if out:
        pathlib.Path(out).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures))
    assert set(series) == {"cluster-front", "cluster-gpu1", "cluster-gpu2"}


@pytest.fixture(autouse=True, scope="module")
def _prometheus_ready():
    front = testinfra.get_host("docker://cluster-front")
    wait_for(lambda: front.run("curl -sf --max-time 5 %s/-/ready", PROMETHEUS).rc == 0, 60, "Prometheus ready")
