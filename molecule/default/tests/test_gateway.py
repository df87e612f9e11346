"""The gateway on the appliance: LiteLLM instances hardened on loopback, demo keys through to the
tiny vLLM model, 401/403/429 paths, one usage row per request in PostgreSQL, nothing lost while
PostgreSQL is down."""
import hashlib
import json
import time
import uuid

import pytest

KEYS = {
    "alice": "sk-demo-alice-0123456789",
    "bob": "sk-demo-bob-0123456789",
    "limited": "sk-demo-limited-0123456789",
    "budget": "sk-demo-budget-0123456789",
    "noisy": "sk-demo-noisy-0123456789",
    "expired": "sk-demo-expired-0123456789",
    "revoked": "sk-demo-revoked-0123456789",
}
PORTS = (4000, 4001)
# The chat UI's service key, from the demo vault (vault_open_webui_gateway_key).
OPEN_WEBUI_KEY = "sk-demo-open-webui-service-key"
# Read as the report does: its role may read the usage rows (the gateway's may only insert them).
PSQL = "PGPASSWORD=demo-report-db-password psql -w -h 127.0.0.1 -U llm_report -d llm_appliance -At -c"


def post(host, path, key, body, agent="molecule-gateway", port=4000):
    cmd = host.run(
        "curl -sS -o /tmp/gw-body -w '%%{http_code}' --max-time 120 -H 'Authorization: Bearer %s' "
        "-H 'Content-Type: application/json' -A %s -d %s http://127.0.0.1:%s%s",
        key, agent, json.dumps(body), str(port), path)
    raw = host.file("/tmp/gw-body").content_string
    try:
        return int(cmd.stdout or 0), json.loads(raw)
    except ValueError:
        return int(cmd.stdout or 0), raw


def chat(model="chat", stream=False):
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "stream": stream}


def completion(model="code", stream=False):
    return {"model": model, "prompt": "def add(a, b):", "max_tokens": 8, "stream": stream}


def usage_rows(host, agent, expected, timeout=60):
    deadline = time.time() + timeout
    while True:
        out = host.run(PSQL + " %s", f"SELECT user_id, model_alias, call_type, prompt_tokens, completion_tokens, "
                       f"status FROM usage_events WHERE user_agent = '{agent}' ORDER BY id").stdout
        rows = [line.split("|") for line in out.splitlines() if line]
        if len(rows) >= expected or time.time() > deadline:
            return rows
        time.sleep(1)


@pytest.mark.parametrize("instance", [1, 2])
def test_instances_active_and_enabled(host, instance):
    service = host.service(f"litellm@{instance}")
    assert service.is_running
    assert service.is_enabled


def test_listens_only_on_loopback(host):
    for port in PORTS:
        sockets = {s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")}
        assert sockets == {f"tcp://127.0.0.1:{port}"}, sockets


def test_keys_file_is_private_and_holds_only_hashes(host):
    """The chat's service key is given to the role in clear (vault_open_webui_gateway_key): the file
    has its hash only, and no one outside the gateway's group reads it."""
    keys = host.file("/etc/llm-appliance/litellm/keys.json")
    assert keys.mode == 0o640 and keys.user == "root" and keys.group == "litellm"
    users = json.loads(keys.content_string)["users"]
    service = next(u for u in users if u["name"] == "open-webui")
    assert service["key_sha256"] == hashlib.sha256(OPEN_WEBUI_KEY.encode()).hexdigest()
    assert OPEN_WEBUI_KEY not in keys.content_string
    assert all(set(u) >= {"name", "key_sha256"} and "key" not in u for u in users)
    for other in ("nobody", "open-webui", "vllm"):
        assert host.run("runuser -u %s -- cat /etc/llm-appliance/litellm/keys.json", other).rc != 0, other


@pytest.mark.parametrize("instance", [1, 2])
def test_unit_exposure_at_most_2(host, instance):
    out = host.run("systemd-analyze security --no-pager litellm@%s.service", str(instance)).stdout
    score = float(out.strip().splitlines()[-1].split("level for")[1].split(":")[1].split()[0])
    assert score <= 2.0, out[-400:]


@pytest.mark.parametrize("port", PORTS)
def test_completion_and_chat_with_user_rows(host, port):
    agent = f"molecule-{uuid.uuid4().hex[:8]}"
    status, body = post(host, "/v1/completions", KEYS["alice"], completion(), agent, port)
    assert status == 200, body
    status, body = post(host, "/v1/chat/completions", KEYS["alice"], chat(), agent, port)
    assert status == 200, body
    status, body = post(host, "/v1/chat/completions", KEYS["alice"], chat(stream=True), agent, port)
    assert status == 200 and "[DONE]" in str(body)
    rows = usage_rows(host, agent, 3)
    assert [r[:3] for r in rows] == [["demo-alice", "code", "completion"], ["demo-alice", "chat", "chat"],
                                     ["demo-alice", "chat", "chat"]], rows
    assert all(int(r[3]) > 0 and int(r[4]) > 0 and r[5] == "success" for r in rows), rows


@pytest.mark.parametrize("who", ["nobody", "expired", "revoked"])
def test_refused_keys_get_401_with_openai_body(host, who):
    status, body = post(host, "/v1/chat/completions", KEYS.get(who, "sk-nobody"), chat())
    assert status == 401, body
    assert "message" in body["error"]


def test_tool_definitions_reach_a_model_with_a_tool_parser(host):
    """IDE agents and the chat's native tools send OpenAI tool definitions with tool_choice auto."""
    tool = {"type": "function", "function": {"name": "get_time", "description": "The current time",
                                             "parameters": {"type": "object", "properties": {}}}}
    status, body = post(host, "/v1/chat/completions", KEYS["alice"], dict(chat(), tools=[tool], tool_choice="auto"))
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"


def rejected_rows(host, user, error_class, since):
    out = host.run(PSQL + " %s", f"SELECT count(*) FROM usage_events WHERE user_id = '{user}' AND status = 'rejected' "
                   f"AND error_class = '{error_class}' AND started_at >= '{since}'").stdout
    return int(out.strip() or 0)


def test_refused_requests_leave_a_row_under_the_keys_user(host):
    since = host.run("date -u +%Y-%m-%dT%H:%M:%S.%NZ").stdout.strip()
    assert post(host, "/v1/chat/completions", KEYS["revoked"], chat())[0] == 401
    assert post(host, "/v1/completions", KEYS["bob"], completion("code"))[0] == 403
    deadline = time.time() + 30
    while time.time() < deadline and not (rejected_rows(host, "demo-revoked", "Unauthorized", since)
                                          and rejected_rows(host, "demo-bob", "Forbidden", since)):
        time.sleep(1)
    assert rejected_rows(host, "demo-revoked", "Unauthorized", since) == 1
    assert rejected_rows(host, "demo-bob", "Forbidden", since) == 1


def test_disallowed_model_gets_403(host):
    status, body = post(host, "/v1/completions", KEYS["bob"], completion("code"))
    assert status == 403, body


def test_over_rpm_gets_429(host):
    codes = [post(host, "/v1/completions", KEYS["limited"], completion("code"))[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429], codes  # demo-limited: rpm 3


def test_rpm_limit_holds_across_instances(host):
    """Two instances share the limit's counter (Redis): the minute the test above used up on the first
    instance is used up on the second too (with counts of its own, it would allow its share)."""
    codes = [post(host, "/v1/completions", KEYS["limited"], completion("code"), port=PORTS[1])[0]
             for _ in range(2)]
    assert codes == [429, 429], codes


def test_postgresql_down_loses_nothing(host):
    agent = f"molecule-down-{uuid.uuid4().hex[:8]}"
    host.run("systemctl stop postgresql@15-main")
    try:
        codes = [post(host, "/v1/chat/completions", KEYS["alice"], chat(), agent, PORTS[i % 2])[0] for i in range(6)]
        assert codes == [200] * 6
        time.sleep(3)
        assert host.run("ls /var/lib/llm-appliance/litellm/spool/*.jsonl").rc == 0
    finally:
        host.run("systemctl start postgresql@15-main")
    rows = usage_rows(host, agent, 6, timeout=90)
    assert len(rows) == 6 and {r[0] for r in rows} == {"demo-alice"}, rows
