"""The usage writer against a real PostgreSQL (a throwaway cluster): rows it refuses for their
content are quarantined and the rest still arrive, client strings are cleaned and bounded, the
queue and the spool are bounded, one connection serves every batch, and a stop flushes the queue."""

import json
import uuid

import psycopg
import pytest

from llm_appliance.gateway import usage_logger as ul

SCHEMA = ul.Path(__file__).resolve().parents[2] / "llm_appliance" / "usage_report" / "schema.sql"


@pytest.fixture()
def dsn(postgres_admin_dsn):
    name = "gw_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = postgres_admin_dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA.read_text())
    return dsn


def row(**values):
    base = {"request_id": uuid.uuid4().hex, "started_at": "2026-12-01T10:00:00+00:00",
            "ended_at": "2026-12-01T10:00:01+00:00", "user_id": "alice", "key_alias": "alice",
            "model_alias": "code", "model": "tiny", "deployment": None, "call_type": "completion",
            "prompt_tokens": 1, "completion_tokens": 1, "ttft_ms": None, "latency_ms": 1.0,
            "status": "success", "error_class": None, "user_agent": "pytest"}
    base.update(values)
    return base


def stored(dsn, column="model_alias"):
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM usage_events ORDER BY id")]


def writer_for(dsn, tmp_path, **kwargs):
    return ul.Writer(ul.PostgresInserter(dsn), ul.Spool(tmp_path / "spool"), batch=50, flush_s=0.0,
                     dead_letter=ul.DeadLetter(tmp_path / "dead-letter.jsonl"), **kwargs)


def test_a_nul_byte_in_a_refused_request_does_not_stop_accounting(dsn, tmp_path):
    """The review's attack: a keyless request whose model holds a NUL used to block the spool forever."""
    writer = writer_for(dsn, tmp_path)
    refused = ul.rejected_row({"model": "co\x00de" + "x" * 100_000}, 401,
                              "/v1/completions", None)
    writer.put(refused)
    writer.put(row(model_alias="chat", user_agent="agent\x00\x1b[31m"))
    writer.flush_once()
    aliases = stored(dsn)
    assert len(aliases) == 2 and aliases[0].startswith("code") and len(aliases[0]) == ul.TEXT_BOUNDS["model_alias"]
    assert stored(dsn, "user_agent")[1] == "agent[31m"
    assert writer.spool.files() == []


def test_a_row_postgresql_refuses_is_quarantined_and_its_batch_still_arrives(dsn, tmp_path):
    writer = writer_for(dsn, tmp_path)
    # Cleaning cannot catch everything: a timestamp PostgreSQL cannot read is refused for its content.
    writer.put(row(model_alias="before"))
    writer.put(row(model_alias="bad", started_at="31.12.2026 25:61"))
    writer.put(row(model_alias="after"))
    writer.flush_once()
    assert stored(dsn) == ["before", "after"]
    lines = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [entry["row"]["model_alias"] for entry in lines] == ["bad"]
    assert "31.12.2026 25:61" in lines[0]["reason"]
    assert writer.spool.files() == [] and writer.metrics()["llm_appliance_usage_rows_dead_letter_total"] == 1


def test_a_refused_row_in_the_spool_does_not_block_the_rows_behind_it(dsn, tmp_path):
    writer = writer_for(dsn, tmp_path)
    writer.spool.write([row(model_alias="bad", started_at="never")])
    writer.spool.write([row(model_alias="later")])
    writer.flush_once()
    assert stored(dsn) == ["later"] and writer.spool.files() == []


def test_database_away_keeps_rows_and_one_connection_serves_every_batch(dsn, tmp_path):
    away = writer_for(dsn.replace("dbname=", "connect_timeout=1 dbname=").replace("port=", "port=1 x_port="),
                      tmp_path)
    away.insert = ul.PostgresInserter("host=127.0.0.1 port=1 dbname=x user=x", connect_timeout_s=1)
    away.put(row(model_alias="kept"))
    away.flush_once()
    assert away.spool.pending() == 1 and not (tmp_path / "dead-letter.jsonl").exists()

    writer = writer_for(dsn, tmp_path)
    for batch in range(3):
        writer.put(row(model_alias=f"b{batch}"))
        writer.flush_once()
    assert sorted(stored(dsn)) == ["b0", "b1", "b2", "kept"]
    with psycopg.connect(dsn) as conn:
        sessions = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND pid <> pg_backend_pid()").fetchone()[0]
    assert sessions == 1


def test_stop_flushes_what_is_queued(dsn, tmp_path):
    writer = writer_for(dsn, tmp_path)
    writer.start()
    for i in range(120):
        writer.put(row(model_alias=f"q{i}"))
    writer.stop(timeout=10)
    assert len(stored(dsn)) == 120


def test_stop_with_the_database_away_spools_the_queue(tmp_path):
    writer = ul.Writer(ul.PostgresInserter("host=127.0.0.1 port=1 dbname=x user=x", connect_timeout_s=1),
                       ul.Spool(tmp_path / "spool"), batch=50, flush_s=0.0)
    for i in range(120):
        writer.put(row(model_alias=f"q{i}"))
    writer.stop(timeout=5)
    assert writer.spool.pending() == 120


def test_beyond_the_queue_bound_rows_wait_in_the_spool(tmp_path):
    writer = ul.Writer(lambda rows: None, ul.Spool(tmp_path / "spool"), queue_max=5)
    for i in range(8):
        writer.put(row(model_alias=f"r{i}"))
    assert writer.queue.qsize() == 5 and writer.spool.pending() == 3


def test_the_spool_has_a_size_limit_and_counts_what_it_drops(tmp_path, caplog):
    spool = ul.Spool(tmp_path / "spool", max_bytes=2000)
    written = sum(spool.write([row()]) is not None for _ in range(20))
    assert 0 < written < 20 and spool.dropped == 20 - written
    assert spool.size() <= 2000 and "usage spool full" in caplog.text


def test_metrics_textfile(tmp_path):
    writer = ul.Writer(lambda rows: None, ul.Spool(tmp_path / "spool"), metrics_file=tmp_path / "m" / "usage.prom")
    writer.put(row())
    writer.flush_once()
    writer.write_metrics(force=True)
    text = (tmp_path / "m" / "usage.prom").read_text()
    assert "llm_appliance_usage_rows_inserted_total 1\n" in text
    assert "llm_appliance_usage_spool_bytes 0\n" in text
