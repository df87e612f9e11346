"""The usage writer without PostgreSQL: rows spooled while the database is away, flushed once."""

import asyncio
import datetime as dt
import json
import types

from llm_appliance.gateway import auth
from llm_appliance.gateway import usage_logger as ul


class FlakyDb:
    def __init__(self):
        self.up = True
        self.rows = {}

    def insert(self, rows):
        if not self.up:
            raise ConnectionError("down")
        for row in rows:
            self.rows.setdefault(row["request_id"], row)  # ON CONFLICT DO NOTHING


def rows(n, start=0):
    return [{"request_id": f"r{i}", "status": "success"} for i in range(start, start + n)]


def test_rows_spooled_while_down_then_flushed_once(tmp_path):
    db = FlakyDb()
    writer = ul.Writer(db.insert, ul.Spool(tmp_path), batch=5, flush_s=0.0)
    db.up = False
    for row in rows(12):
        writer.put(row)
    while writer.flush_once():
        pass
    assert db.rows == {} and writer.spool.pending() == 12
    db.up = True
    writer._retry_at = 0.0
    for row in rows(3, start=12):
        writer.put(row)
    writer.flush_once()
    assert sorted(db.rows) == sorted(f"r{i}" for i in range(15))
    assert writer.spool.files() == []


def test_replayed_spool_adds_no_duplicates(tmp_path):
    db = FlakyDb()
    spool = ul.Spool(tmp_path)
    spool.write(rows(4))
    db.insert(rows(4))  # committed before a crash left the file behind
    writer = ul.Writer(db.insert, spool)
    assert writer.drain_spool()
    assert len(db.rows) == 4 and spool.files() == []


def test_row_from_standard_logging_object():
    start = dt.datetime(2026, 11, 24, 5, 0, 0, tzinfo=dt.UTC).timestamp()
    kwargs = {
        "standard_logging_object": {
            "id": "chatcmpl-1", "call_type": "acompletion", "model_group": "code", "model": "tiny-code",
            "model_id": "abc", "api_base": "http://127.0.0.1:8001/v1",
            "prompt_tokens": 7, "completion_tokens": 5,
            "startTime": start, "endTime": start + 0.5, "completionStartTime": start + 0.1,
            "metadata": {"user_api_key_user_id": "alice", "user_api_key_alias": "alice"},
        },
        "litellm_params": {"proxy_server_request": {"headers": {"user-agent": "pytest"}}},
    }
    row = ul.row_from_callback(kwargs)
    assert set(row) == set(ul.COLUMNS)
    assert row["user_id"] == "alice" and row["model_alias"] == "code" and row["call_type"] == "chat"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)
    assert abs(row["ttft_ms"] - 100) < 1 and abs(row["latency_ms"] - 500) < 1
    assert row["status"] == "success" and row["user_agent"] == "pytest"
    failed = ul.row_from_callback(kwargs, failed=True, error=TimeoutError())
    assert failed["status"] == "failure" and failed["error_class"] == "TimeoutError"
    assert ul.call_type_of("atext_completion") == "completion"


def test_health_checks_are_not_usage():
    assert not ul.is_client_request({"standard_logging_object": {"metadata": {}}, "litellm_params": {}})
    assert ul.is_client_request({"standard_logging_object": {"metadata": {"user_api_key_user_id": "a"}}})


class HTTPException(Exception):  # noqa: N818 - named as fastapi's, which the hook tells from model failures
    def __init__(self, status_code):
        super().__init__("refused")
        self.status_code = status_code


class Collecting:
    def __init__(self):
        self.rows = []

    def start(self):
        pass

    def put(self, row):
        self.rows.append(row)


def test_refusals_become_rejected_rows_and_model_failures_do_not():
    body = {"model": "chat", "litellm_call_id": "call-1"}
    row = ul.rejected_row(body, 429, "/v1/chat/completions", "alice")
    assert (row["request_id"], row["user_id"], row["model_alias"], row["call_type"], row["status"],
            row["error_class"]) == ("call-1", "alice", "chat", "chat", "rejected", "RateLimited")
    assert ul.rejected_row({}, 401, "/v1/completions", None)["call_type"] == "completion"
    assert ul.rejected_row({}, 403, "/v1/embeddings", "bob")["error_class"] == "Forbidden"
    # A failing model call is logged by the failure event; the hook must not count it twice.
    assert ul.rejected_row(body, 500, "/v1/chat/completions", "alice") is None


def test_key_hash_as_litellm_hands_it_over():
    digest = auth.hash_key("sk-demo")
    assert auth.key_hash_of(digest) == digest
    assert auth.key_hash_of("sk-demo") == digest
    assert auth.key_hash_of("Bearer sk-demo") == digest


def test_failure_hook_names_the_user_of_a_known_key(tmp_path, monkeypatch):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"users": [
        {"name": "old", "key_sha256": auth.hash_key("sk-old"), "expires": "2020-01-01"}]}))
    monkeypatch.setattr(auth, "_gate", auth.Gate(auth.KeyStore(str(keys))))
    writer = Collecting()
    logger = ul.UsageLogger(writer=writer)
    for key, expected in (("sk-old", "old"), ("sk-unknown", None)):
        identity = types.SimpleNamespace(api_key=auth.hash_key(key), request_route="/v1/chat/completions")
        asyncio.run(logger.async_post_call_failure_hook({"model": "chat"}, HTTPException(401), identity))
        assert writer.rows[-1]["user_id"] == expected and writer.rows[-1]["status"] == "rejected"
