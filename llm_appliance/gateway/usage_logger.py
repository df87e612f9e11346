"""LiteLLM CustomLogger: one row per request in PostgreSQL (table usage_events).

Callbacks only queue the row (never block a response). A writer thread inserts queued rows in
batches; when PostgreSQL is unreachable the batch goes to a spool file (JSON lines, fsynced)
under LLM_APPLIANCE_SPOOL_DIR, and spooled files are inserted first once PostgreSQL answers
again. Inserts use ON CONFLICT DO NOTHING, so a spool file replayed twice (crash between commit
and unlink) adds no duplicate given the unique index on request_id.

Environment: LLM_APPLIANCE_USAGE_DSN (libpq connection string), LLM_APPLIANCE_SPOOL_DIR,
LLM_APPLIANCE_USAGE_BATCH (rows per insert, 200), LLM_APPLIANCE_USAGE_FLUSH_S (1.0).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the gateway's venv has it; nothing here needs it at run time
    from litellm.proxy._types import UserAPIKeyAuth

log = logging.getLogger("llm_appliance.usage")

# One usage_events row: each of COLUMNS to its value (JSON-shaped: it may go through a spool file).
Row = dict[str, Any]
# Inserts rows in one transaction; raises when PostgreSQL does not take them.
Insert = Callable[[list[Row]], None]

COLUMNS = (
    "request_id", "started_at", "ended_at", "user_id", "key_alias", "model_alias", "model",
    "deployment", "call_type", "prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms",
    "status", "error_class", "user_agent",
)
INSERT_SQL = (
    f"INSERT INTO usage_events ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)

_CALL_TYPES = {
    "completion": "chat", "acompletion": "chat",
    "text_completion": "completion", "atext_completion": "completion",
    "embedding": "embedding", "aembedding": "embedding",
}


def _iso(value: object) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), dt.UTC).isoformat()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.astimezone(dt.UTC).isoformat()
    return str(value)


def _seconds(value: object) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    return None


def call_type_of(raw: str | None) -> str:
    return _CALL_TYPES.get(raw or "", "other")


def row_from_callback(kwargs: dict[str, Any], start_time: object = None, end_time: object = None,
                      failed: bool = False, error: BaseException | None = None) -> Row:
    """A usage_events row from LiteLLM's callback arguments (standard_logging_object first)."""
    slo = kwargs.get("standard_logging_object") or {}
    meta = slo.get("metadata") or {}
    hidden = slo.get("hidden_params") or {}
    litellm_params = kwargs.get("litellm_params") or {}
    proxy_request = litellm_params.get("proxy_server_request") or {}
    headers = proxy_request.get("headers") or {}
    started = _seconds(slo.get("startTime")) or _seconds(start_time) or time.time()
    ended = _seconds(slo.get("endTime")) or _seconds(end_time) or time.time()
    first = _seconds(slo.get("completionStartTime")) or _seconds(kwargs.get("completion_start_time"))
    model_id = slo.get("model_id") or (kwargs.get("model_info") or {}).get("id")
    api_base = slo.get("api_base") or hidden.get("api_base")
    deployment = model_id or api_base
    if model_id and api_base:
        deployment = f"{api_base}#{model_id}"
    error_class = None
    if failed:
        info = slo.get("error_information") or {}
        error_class = (
            info.get("error_class")
            or (type(error).__name__ if error is not None else None)
            or (type(kwargs.get("exception")).__name__ if kwargs.get("exception") is not None else None)
            or "Error"
        )
    ttft = (first - started) * 1000.0 if first and first >= started else None
    return {
        "request_id": str(slo.get("id") or kwargs.get("litellm_call_id") or uuid.uuid4()),
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "user_id": meta.get("user_api_key_user_id") or slo.get("end_user") or None,
        "key_alias": meta.get("user_api_key_alias") or None,
        "model_alias": slo.get("model_group") or kwargs.get("model"),
        "model": slo.get("model") or kwargs.get("model"),
        "deployment": deployment,
        "call_type": call_type_of(slo.get("call_type") or kwargs.get("call_type")),
        "prompt_tokens": int(slo.get("prompt_tokens") or 0),
        "completion_tokens": int(slo.get("completion_tokens") or 0),
        "ttft_ms": ttft,
        "latency_ms": max(0.0, (ended - started) * 1000.0),
        "status": "failure" if failed else "success",
        "error_class": error_class,
        "user_agent": headers.get("user-agent") or headers.get("User-Agent"),
    }


# Refusals at the door: the model is never called, so LiteLLM's log events do not fire for them.
REJECTIONS = {401: "Unauthorized", 403: "Forbidden", 429: "RateLimited"}
_ROUTE_CALL_TYPES = (("chat/completions", "chat"), ("completions", "completion"), ("embeddings", "embedding"))


def _status_of(error: BaseException) -> int | None:
    for attribute in ("status_code", "code"):
        try:
            return int(getattr(error, attribute))
        except (AttributeError, TypeError, ValueError):
            continue
    return None


def rejected_row(request_data: dict[str, Any], error: BaseException, route: str | None,
                 user_name: str | None) -> Row | None:
    """A usage_events row for a request refused before any model was called (401, 403, 429)."""
    status = _status_of(error)
    if status not in REJECTIONS:
        return None
    now = time.time()
    path = (route or "").rstrip("/")
    call_type = next((kind for suffix, kind in _ROUTE_CALL_TYPES if path.endswith(suffix)), "other")
    model = request_data.get("model") if isinstance(request_data, dict) else None
    return {
        "request_id": str((request_data or {}).get("litellm_call_id") or uuid.uuid4()),
        "started_at": _iso(now), "ended_at": _iso(now),
        "user_id": user_name, "key_alias": user_name,
        "model_alias": str(model) if model else None, "model": None, "deployment": None,
        "call_type": call_type, "prompt_tokens": 0, "completion_tokens": 0,
        "ttft_ms": None, "latency_ms": 0.0,
        "status": "rejected", "error_class": REJECTIONS[status], "user_agent": None,
    }


def is_client_request(kwargs: dict[str, Any]) -> bool:
    """A request that came through the proxy (health checks have no proxy request and no user)."""
    slo = kwargs.get("standard_logging_object") or {}
    if (slo.get("metadata") or {}).get("user_api_key_user_id"):
        return True
    return bool((kwargs.get("litellm_params") or {}).get("proxy_server_request"))


class Spool:
    """Rows that PostgreSQL did not take yet, as JSON-lines files, oldest first."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def write(self, rows: list[Row]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        final = self.dir / f"{name}.jsonl"
        os.replace(tmp, final)
        return final

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("*.jsonl"))

    @staticmethod
    def read(path: Path) -> list[Row]:
        rows: list[Row] = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        log.warning("skipping a torn line in %s", path)
        return rows

    def pending(self) -> int:
        return sum(len(self.read(path)) for path in self.files())


def postgres_inserter(dsn: str, connect_timeout: int = 3) -> Insert:
    """A function that inserts rows in one transaction, raising when PostgreSQL does not take them."""

    def insert(rows: list[Row]) -> None:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=False) as conn:
            with conn.cursor() as cur:
                cur.executemany(INSERT_SQL, [tuple(row.get(c) for c in COLUMNS) for row in rows])
            conn.commit()

    return insert


class Writer:
    """Batches rows from a queue into insert(); spools what insert() refuses."""

    def __init__(self, insert: Insert, spool: Spool, batch: int = 200, flush_s: float = 1.0) -> None:
        self.insert = insert
        self.spool = spool
        self.batch = batch
        self.flush_s = flush_s
        self.queue: queue.SimpleQueue[Row] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._retry_at = 0.0

    def put(self, row: Row) -> None:
        self.queue.put(row)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush_once()

    def _take(self, wait: float) -> list[Row]:
        rows: list[Row] = []
        deadline = time.monotonic() + wait
        while len(rows) < self.batch:
            remaining = deadline - time.monotonic()
            try:
                rows.append(self.queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def drain_spool(self) -> bool:
        """Insert spooled files, oldest first; False when PostgreSQL is still away."""
        if time.monotonic() < self._retry_at:
            return False
        for path in self.spool.files():
            rows = self.spool.read(path)
            try:
                for start in range(0, len(rows), self.batch):
                    self.insert(rows[start:start + self.batch])
            except Exception as err:  # noqa: BLE001 - any failure means: keep the file, retry later
                log.warning("usage spool: PostgreSQL unavailable (%s); %s kept", type(err).__name__, path.name)
                self._retry_at = time.monotonic() + min(5.0, self.flush_s * 5)
                return False
            path.unlink()
        return True

    def flush_once(self, wait: float = 0.0) -> int:
        rows = self._take(wait)
        spool_clear = self.drain_spool() if self.spool.files() else time.monotonic() >= self._retry_at
        if not rows:
            return 0
        if spool_clear:
            try:
                self.insert(rows)
                return len(rows)
            except Exception as err:  # noqa: BLE001
                log.warning("usage: PostgreSQL unavailable (%s); spooling %d rows", type(err).__name__, len(rows))
                self._retry_at = time.monotonic() + min(5.0, self.flush_s * 5)
        self.spool.write(rows)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush_once(wait=self.flush_s)
            except Exception:  # noqa: BLE001 - the writer must survive anything
                log.exception("usage writer")
                time.sleep(self.flush_s)


if TYPE_CHECKING:
    # mypy runs where LiteLLM is not installed: it checks the class as a plain object.
    _Base = object
else:
    try:  # LiteLLM is present in the gateway's venv; the pure parts above need no LiteLLM.
        from litellm.integrations.custom_logger import CustomLogger as _Base
    except ImportError:  # pragma: no cover
        _Base = object


class UsageLogger(_Base):
    """The instance named in litellm_settings.callbacks (llm_appliance.gateway.usage_logger.usage_logger)."""

    def __init__(self, writer: Writer | None = None) -> None:
        if _Base is not object:
            super().__init__()
        if writer is None:
            writer = Writer(
                postgres_inserter(os.environ.get("LLM_APPLIANCE_USAGE_DSN", "")),
                Spool(os.environ.get("LLM_APPLIANCE_SPOOL_DIR", "/var/lib/llm-appliance/litellm/spool")),
                batch=int(os.environ.get("LLM_APPLIANCE_USAGE_BATCH", "200")),
                flush_s=float(os.environ.get("LLM_APPLIANCE_USAGE_FLUSH_S", "1.0")),
            )
        self.writer = writer

    def _record(self, kwargs: dict[str, Any], start_time: object, end_time: object, failed: bool,
                error: BaseException | None = None) -> None:
        if not is_client_request(kwargs):
            return  # the router's own health checks are no one's usage
        try:
            self.writer.start()
            self.writer.put(row_from_callback(kwargs, start_time, end_time, failed, error))
        except Exception:  # noqa: BLE001 - logging must never fail a request
            log.exception("usage row dropped into the log")

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: object, start_time: object,
                                      end_time: object) -> None:
        self._record(kwargs, start_time, end_time, failed=False)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: object, start_time: object,
                                      end_time: object) -> None:
        self._record(kwargs, start_time, end_time, failed=True, error=kwargs.get("exception"))

    async def async_post_call_failure_hook(self, request_data: dict[str, Any], original_exception: BaseException,
                                           user_api_key_dict: UserAPIKeyAuth,
                                           traceback_str: str | None = None) -> None:
        """Requests refused at the door (bad key 401, model not allowed 403, over a limit 429) get a
        row too, under the key's user when the key is known (an expired or revoked one, say)."""
        try:
            from llm_appliance.gateway.auth import gate, key_hash_of

            user = gate().store.users().get(key_hash_of(getattr(user_api_key_dict, "api_key", None)))
            row = rejected_row(request_data or {}, original_exception,
                               getattr(user_api_key_dict, "request_route", None), user.name if user else None)
            if row is not None:
                self.writer.start()
                self.writer.put(row)
        except Exception:  # noqa: BLE001 - logging must never change the answer
            log.exception("usage row of a refused request dropped into the log")
        return None


usage_logger = UsageLogger()
