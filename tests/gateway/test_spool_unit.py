"""The usage writer without PostgreSQL: rows spooled while the database is away, flushed once."""

import datetime as dt

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
    start = dt.datetime(2026, 11, 24, 5, 0, 0, tzinfo=dt.timezone.utc).timestamp()
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
