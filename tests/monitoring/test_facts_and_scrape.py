"""The appliance's facts for node exporter's textfile collector, read from real files, a real
certificate and an HTTP server answering like vLLM's /metrics; and the scrape jobs for a site."""
import http.server
import os
import subprocess
import threading
import time

import pytest

from llm_appliance.monitoring import facts
from llm_appliance.monitoring.scrape import scrape_configs
from tests.unit.test_plan import load_filter_plugin

monitoring_filters = load_filter_plugin("monitoring")

VLLM_METRICS = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="2048"} 1.0
vllm:num_requests_running{engine="0",model_name="tiny-code"} 0.0
"""


@pytest.fixture()
def engine():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            body = VLLM_METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/metrics" % server.server_address[1], seen
    server.shutdown()


def make_certificate(path, days):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(path) + ".key", "-out", str(path), "-days", str(days), "-subj", "/CN=test"],
                   check=True, capture_output=True)


def series(text):
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_the_facts_of_a_host_with_everything(tmp_path, engine):
    url, seen = engine
    certs = tmp_path / "tls"
    certs.mkdir()
    make_certificate(certs / "server.crt", 10)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "llm_appliance-20261201T023000Z.dump").write_text("x")
    done = dumps / "globals-20261201T023000Z.sql"
    done.write_text("x")
    os.utime(done, (1_700_000_000, 1_700_000_000))
    usage = tmp_path / "usage"
    usage.mkdir()
    (usage / "usage-writer-1.prom").write_text(
        "llm_appliance_usage_spool_files 3\nllm_appliance_usage_rows_dropped_total 0\n")
    (usage / "usage-writer-2.prom").write_text("llm_appliance_usage_spool_files 0\n")
    key = tmp_path / "engine-key"
    key.write_text("engine-secret\n")
    config = {"output": str(tmp_path / "out.prom"), "certificate_globs": [str(certs / "*.crt")],
              "dump_dir": str(dumps), "usage_metrics_dir": str(usage),
              "engines": [{"model": "tiny-code", "url": url, "key_file": str(key), "ca_file": None}]}
    text = facts.collect(config, now=1_800_000_000)
    found = series(text)
    expiry = found['appliance_certificate_expiry_timestamp_seconds{path="%s"}' % (certs / "server.crt")]
    assert abs(expiry - (time.time() + 10 * 86400)) < 120
    assert found["appliance_last_dump_timestamp_seconds"] == 1_700_000_000
    assert found['llm_appliance_usage_spool_files{gateway_instance="1"}'] == 3
    assert found['llm_appliance_usage_spool_files{gateway_instance="2"}'] == 0
    assert found['appliance_kv_cache_tokens_found{model="tiny-code"}'] == 2048 * 16
    assert seen == ["Bearer engine-secret"]
    assert all(found['appliance_facts_errors{part="%s"}' % part] == 0
               for part in ("certificates", "dump", "usage_writer", "engine_kv_cache"))
    assert found["appliance_facts_last_run_timestamp_seconds"] == 1_800_000_000


def test_what_cannot_be_read_is_counted_not_fatal(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    os.utime(dumps, (1_600_000_000, 1_600_000_000))
    config = {"output": str(tmp_path / "out.prom"), "certificate_globs": [], "dump_dir": str(dumps),
              "engines": [{"model": "down", "url": "http://127.0.0.1:9/metrics", "key_file": None}]}
    found = series(facts.collect(config))
    # No dump yet: the directory's age, so that a host that never dumps is noticed.
    assert found["appliance_last_dump_timestamp_seconds"] == 1_600_000_000
    assert found['appliance_facts_errors{part="engine_kv_cache"}'] == 1
    assert 'appliance_kv_cache_tokens_found{model="down"}' not in found


def test_the_command_replaces_its_file_whole(tmp_path):
    config = tmp_path / "facts.json"
    out = tmp_path / "facts.prom"
    config.write_text('{"output": "%s"}' % out)
    assert facts.main(["--config", str(config)]) == 0
    assert "appliance_facts_last_run_timestamp_seconds" in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


SITE = {"hosts": {"gpu1": {"address": "10.0.0.11", "scheme": "https", "models": [{"name": "coder", "port": 8001}]},
                  "gpu2": {"address": "10.0.0.12", "scheme": "https", "models": [{"name": "coder", "port": 8001},
                                                                                {"name": "eval", "port": 8002}]}},
        "models": []}
GROUPS = {"gpu_hosts": ["gpu1", "gpu2"], "gateway_hosts": ["front"], "chat_hosts": ["front"], "db_hosts": ["front"],
          "monitoring_hosts": ["front"]}
ADDRESSES = {"front": "127.0.0.1", "gpu1": "10.0.0.11", "gpu2": "10.0.0.12"}


def targets(jobs, name):
    job = next(j for j in jobs if j["job_name"] == name)
    return sorted((c["targets"][0], tuple(sorted(c["labels"].items()))) for c in job["static_configs"])


def test_the_scrape_jobs_of_a_site_of_three_hosts():
    jobs = scrape_configs(ADDRESSES, GROUPS, SITE, [4000, 4001], ["gpu1"], "/etc/prometheus/key", "/ca.crt",
                          redis_host="front")
    tls = next(j for j in jobs if j["job_name"] == "vllm-tls")
    assert tls["scheme"] == "https" and tls["tls_config"] == {"ca_file": "/ca.crt"}
    assert tls["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/key"}
    assert tls["relabel_configs"] == [{"target_label": "job", "replacement": "vllm"}]
    assert targets(jobs, "vllm-tls") == [
        ("10.0.0.11:8001", (("host", "gpu1"), ("model", "coder"))),
        ("10.0.0.12:8001", (("host", "gpu2"), ("model", "coder"))),
        ("10.0.0.12:8002", (("host", "gpu2"), ("model", "eval")))]
    front = (("host", "front"),)
    assert targets(jobs, "gateway") == [("127.0.0.1:4000", front), ("127.0.0.1:4001", front)]
    assert [t for t, _ in targets(jobs, "node")] == ["10.0.0.11:9100", "10.0.0.12:9100", "127.0.0.1:9100"]
    assert targets(jobs, "dcgm") == [("10.0.0.11:9400", (("host", "gpu1"),))]
    for name, port in (("nginx", 9113), ("postgresql", 9187), ("redis", 9121), ("prometheus", 9090),
                       ("alertmanager", 9093)):
        assert targets(jobs, name) == [("127.0.0.1:%d" % port, (("host", "front"),))], name


def test_one_host_scrapes_its_engines_on_loopback_without_tls():
    site = {"hosts": {"box": {"address": "127.0.0.1", "scheme": "http", "models": [{"name": "m", "port": 8001}]}}}
    groups = {name: ["box"] for name in GROUPS}
    jobs = scrape_configs({"box": "127.0.0.1"}, groups, site, [4000], [], "/k", "/ca")
    names = [j["job_name"] for j in jobs]
    assert "vllm" in names and "vllm-tls" not in names and "dcgm" not in names
    assert "tls_config" not in jobs[names.index("vllm")]


def test_the_ui_password_line_is_stable_and_checks_with_crypt():
    line = monitoring_filters.appliance_htpasswd_line("a-long-password", "operator", "front")
    assert line == monitoring_filters.appliance_htpasswd_line("a-long-password", "operator", "front")
    assert line != monitoring_filters.appliance_htpasswd_line("another-password", "operator", "front")
    user, hashed = line.split(":", 1)
    assert user == "operator" and hashed.startswith("$6$")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    assert crypt.crypt("a-long-password", hashed) == hashed
    with pytest.raises(Exception, match="vault_monitoring_ui_password"):
        monitoring_filters.appliance_htpasswd_line("", "operator", "front")
