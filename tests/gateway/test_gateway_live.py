"""Through a real LiteLLM proxy to a real vLLM, usage rows in a real PostgreSQL."""

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from .conftest import KEYS

pytestmark = pytest.mark.postgres


def call(gateway, path, key, body=None, stream=False, agent="gateway-tests"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(gateway["url"] + path, data=data, method="POST" if data else "GET", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", "User-Agent": agent})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read().decode()
            return resp.status, raw if stream else json.loads(raw)
    except urllib.error.HTTPError as err:
        raw = err.read().decode()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


def chat(model="chat", stream=False, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8,
            "stream": stream, **extra}


def completion(model="code", stream=False):
    return {"model": model, "prompt": "def add(a, b):", "max_tokens": 8, "stream": stream}


def rows_for(postgres, agent, expected, timeout=30):
    deadline = time.time() + timeout
    while True:
        rows = postgres.query(
            "SELECT user_id, model_alias, call_type, prompt_tokens, completion_tokens, status, error_class "
            "FROM usage_events WHERE user_agent = %s ORDER BY id", agent)
        if len(rows) >= expected or time.time() > deadline:
            return rows
        time.sleep(0.5)


def test_completion_and_chat_stream_and_not(gateway, postgres):
    agent = f"t-{uuid.uuid4().hex[:8]}"
    status, body = call(gateway, "/v1/completions", KEYS["alice"], completion(), agent=agent)
    assert status == 200, body
    assert body["choices"][0]["text"] is not None
    status, body = call(gateway, "/v1/chat/completions", KEYS["alice"], chat(), agent=agent)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] > 0
    status, raw = call(gateway, "/v1/chat/completions", KEYS["alice"], chat(stream=True), stream=True, agent=agent)
    assert status == 200 and "data: [DONE]" in raw
    status, raw = call(gateway, "/v1/completions", KEYS["alice"], completion(stream=True), stream=True, agent=agent)
    assert status == 200 and "data: [DONE]" in raw
    rows = rows_for(postgres, agent, 4)
    assert len(rows) == 4, rows
    assert {r[0] for r in rows} == {"alice"}
    assert [r[1] for r in rows] == ["code", "chat", "chat", "code"]
    assert [r[2] for r in rows] == ["completion", "chat", "chat", "completion"]
    assert all(r[3] > 0 and r[4] > 0 and r[5] == "success" for r in rows), rows


@pytest.mark.parametrize("who", ["nobody", "old", "gone"])
def test_unknown_expired_revoked_are_401_with_openai_body(gateway, who):
    key = KEYS.get(who, "sk-test-nobody")
    status, body = call(gateway, "/v1/chat/completions", key, chat())
    assert status == 401, body
    assert isinstance(body, dict) and "error" in body and "message" in body["error"], body


def test_disallowed_model_is_403(gateway):
    status, body = call(gateway, "/v1/completions", KEYS["bob"], completion("code"))
    assert status == 403, body
    assert "error" in body


def test_over_rpm_is_429(gateway):
    codes = [call(gateway, "/v1/completions", KEYS["slow"], completion("code"))[0] for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes


def test_keys_file_change_needs_no_restart(gateway):
    from llm_appliance.gateway.auth import hash_key

    doc = json.loads(gateway["keys"].read_text())
    doc["users"].append({"name": "carol", "key_sha256": hash_key("sk-test-carol"), "models": ["chat"]})
    gateway["keys"].write_text(json.dumps(doc))
    status, body = call(gateway, "/v1/chat/completions", "sk-test-carol", chat())
    assert status == 200, body


def test_postgres_down_requests_succeed_rows_arrive_after_restart(gateway, postgres):
    agent = f"down-{uuid.uuid4().hex[:8]}"
    postgres.stop()
    try:
        codes = [call(gateway, "/v1/chat/completions", KEYS["alice"], chat(), agent=agent)[0] for _ in range(6)]
        assert codes == [200] * 6
        time.sleep(2)
        assert any((gateway["work"] / "spool").glob("*.jsonl")), "nothing spooled"
    finally:
        postgres.start()
    rows = rows_for(postgres, agent, 6, timeout=60)
    assert len(rows) == 6 and {r[0] for r in rows} == {"alice"}
    time.sleep(2)
    assert len(rows_for(postgres, agent, 6)) == 6  # no duplicates
