"""Serving: one hardened vLLM unit per planned model, real engine (CPU build), real answers."""
import json
import re
import time

import pytest

ENGINE_KEY = "demo-vllm-engine-key"


def planned_models(host):
    plan = json.loads(host.file("/etc/llm-appliance/plan.json").content_string)
    return plan["models"]


def unit_port(host, name):
    exec_start = host.file("/etc/systemd/system/vllm-%s.service" % name).content_string
    return int(re.search(r"--port (\d+)", exec_start).group(1))


def api(host, port, path, body=None, key=ENGINE_KEY):
    cmd = "curl -s -m 120 -o /tmp/api-body -w '%%{http_code}' -H 'Authorization: Bearer %s' " % key
    if body is not None:
        cmd += "-H 'Content-Type: application/json' -d '%s' " % json.dumps(body)
    result = host.run(cmd + "http://127.0.0.1:%d%s" % (port, path))
    payload = host.file("/tmp/api-body").content_string
    return int(result.stdout or 0), (json.loads(payload) if payload.startswith("{") else payload)


def main_pid(host, unit):
    return int(host.run("systemctl show -p MainPID --value %s", unit).stdout.strip())


@pytest.fixture(scope="module")
def models(host):
    models = planned_models(host)
    assert models, "the plan serves no model"
    return models


def test_one_active_unit_per_planned_model(host, models):
    units = sorted(host.run("systemctl list-units 'vllm-*.service' --all --no-legend --plain").stdout.split("\n"))
    assert len([u for u in units if u.strip()]) == len(models), units
    for model in models:
        service = host.service("vllm-%s" % model["name"])
        assert service.is_running, model["name"]
        assert service.is_enabled, model["name"]


def test_engines_listen_on_loopback_only(host, models):
    for model in models:
        port = unit_port(host, model["name"])
        assert port == model["port"]
        listening = [s for s in host.socket.get_listening_sockets() if s.endswith(":%d" % port)]
        assert listening == ["tcp://127.0.0.1:%d" % port], listening


def test_completion_and_chat_answer(host, models):
    for model in models:
        status, body = api(host, model["port"], "/v1/completions",
                           {"model": model["name"], "prompt": "def add(a, b):", "max_tokens": 5})
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 5
        assert isinstance(body["choices"][0]["text"], str)
        status, body = api(host, model["port"], "/v1/chat/completions",
                           {"model": model["name"], "max_tokens": 4,
                            "messages": [{"role": "user", "content": "Say hello"}]})
        assert status == 200, body
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] == 4


def test_engine_refuses_a_wrong_key(host, models):
    status, _ = api(host, models[0]["port"], "/v1/models", key="not-the-key")
    assert status == 401


def test_engine_key_not_in_unit_or_process_list(host, models):
    for model in models:
        assert ENGINE_KEY not in host.file("/etc/systemd/system/vllm-%s.service" % model["name"]).content_string
        env = host.file("/etc/llm-appliance/vllm/%s.env" % model["name"])
        assert env.mode == 0o640 and env.group == "vllm"
    assert ENGINE_KEY not in host.run("ps -eo args").stdout


def test_predicted_kv_cache_tokens_match_the_engine(host, models):
    """The planner's KV-cache figure for the CPU engine equals what vLLM logs at start."""
    for model in models:
        log = host.run("journalctl -u vllm-%s --no-pager -o cat", model["name"]).stdout
        logged = [int(n.replace(",", "")) for n in re.findall(r"CPU KV cache size: ([\d,]+) tokens", log)]
        assert logged, "vLLM logged no KV cache size for %s" % model["name"]
        assert logged[-1] == model["kv_cache_tokens"], (model["name"], logged[-1], model["kv_cache_tokens"])


def test_units_are_hardened(host, models):
    for model in models:
        out = host.run("systemd-analyze security vllm-%s.service --no-pager", model["name"]).stdout
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
        print("exposure vllm-%s: %.1f" % (model["name"], score))
        assert score <= 2.0, out[-2000:]
        unit = host.file("/etc/systemd/system/vllm-%s.service" % model["name"]).content_string
        assert "Restart=always" in unit
        assert "HF_HUB_OFFLINE=1" in unit and "VLLM_NO_USAGE_STATS=1" in unit


def wait_healthy(host, port, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = "http://127.0.0.1:%d/health" % port
        if host.run("curl -s -m 5 -o /dev/null -w '%%{http_code}' %s", url).stdout == "200":
            return time.monotonic()
        time.sleep(1)
    raise AssertionError("port %d did not answer /health within %d s" % (port, timeout))


def test_engine_restarts_after_kill_9(host, models):
    model = models[0]
    unit = "vllm-%s.service" % model["name"]
    before = main_pid(host, unit)
    others = {m["name"]: main_pid(host, "vllm-%s.service" % m["name"]) for m in models[1:]}
    killed_at = time.monotonic()
    assert host.run("kill -9 %s", str(before)).rc == 0
    back_at = wait_healthy(host, model["port"])
    after = main_pid(host, unit)
    print("restart after kill -9 of vllm-%s: %.0f s to /health" % (model["name"], back_at - killed_at))
    assert after not in (0, before)
    assert host.service(unit.replace(".service", "")).is_running
    assert int(host.run("systemctl show -p NRestarts --value %s", unit).stdout) >= 1
    for name, pid in others.items():
        assert main_pid(host, "vllm-%s.service" % name) == pid, "killing one engine touched %s" % name
