"""LiteLLM CustomLogger: one row per request in PostgreSQL (table usage_events).

Callbacks only queue the row (never block a response). A writer thread inserts queued rows in
batches; when PostgreSQL is unreachable the batch goes to a spool file (JSON lines, fsynced)
under LLM_APPLIANCE_SPOOL_DIR, and spooled files are inserted first once PostgreSQL answers
again. Inserts use ON CONFLICT DO NOTHING, so a spool file replayed twice (crash between commit
and unlink) adds no duplicate given the unique index on request_id.

Rows PostgreSQL refuses for their content (a DataError or a constraint) are not retried: they
are moved, with the reason, to a dead-letter file (JSON lines) that the usage report counts, and
the rows around them are inserted. Every client-supplied string is cleaned (NUL and control
characters removed, invalid UTF-8 replaced) and cut to its column's bound before it becomes a row.

The queue in memory is bounded (rows beyond it go straight to the spool); the spool has a size
limit (rows beyond it are dropped with an error line and counted). One connection is kept, with a
connect and a statement timeout. At process exit the queue is flushed (or spooled). Counters are
written every few seconds as a Prometheus textfile.

Environment: LLM_APPLIANCE_USAGE_DSN (libpq connection string), LLM_APPLIANCE_SPOOL_DIR,
LLM_APPLIANCE_DEAD_LETTER (file), LLM_APPLIANCE_METRICS_FILE (textfile), LLM_APPLIANCE_USAGE_BATCH
(rows per insert, 200), LLM_APPLIANCE_USAGE_FLUSH_S (1.0), LLM_APPLIANCE_USAGE_QUEUE_MAX (rows,
10000), LLM_APPLIANCE_SPOOL_MAX_MB (512).
"""

from __future__ import annotations

import atexit
import contextlib
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

from llm_appliance.gateway import metrics
from llm_appliance.gateway.errors import REQUEST_CLASSES, upstream_sentence

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

# The longest value kept of each text column; client-supplied ones are cut to it.
TEXT_BOUNDS = {
    "request_id": 128, "user_id": 200, "key_alias": 200, "model_alias": 200, "model": 200,
    "deployment": 300, "call_type": 32, "status": 32, "error_class": 100, "user_agent": 300,
}
_CONTROL = dict.fromkeys([*range(0x00, 0x20), 0x7F])


def clean_text(value: object, bound: int) -> str | None:
    """A string PostgreSQL takes: no NUL or control characters, valid UTF-8, at most bound characters."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8").translate(_CONTROL)
    return text[:bound]


def clean_row(row: Row) -> Row:
    return {column: clean_text(value, TEXT_BOUNDS[column]) if column in TEXT_BOUNDS else value
            for column, value in row.items()}


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


def rejected_row(request_data: dict[str, Any], status: int | None, route: str | None,
                 user_name: str | None, error_class: str | None = None) -> Row | None:
    """A usage_events row for a request refused before any model was called (401, 403, 429)."""
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
        "model_alias": clean_text(model, TEXT_BOUNDS["model_alias"]) if model else None,
        "model": None, "deployment": None,
        "call_type": call_type, "prompt_tokens": 0, "completion_tokens": 0,
        "ttft_ms": None, "latency_ms": 0.0,
        "status": "rejected", "error_class": error_class or REJECTIONS[status], "user_agent": None,
    }


def is_client_request(kwargs: dict[str, Any]) -> bool:
    """A request that came through the proxy (health checks have no proxy request and no user)."""
    slo = kwargs.get("standard_logging_object") or {}
    if (slo.get("metadata") or {}).get("user_api_key_user_id"):
        return True
    return bool((kwargs.get("litellm_params") or {}).get("proxy_server_request"))


class RowsRefused(Exception):
    """PostgreSQL refused the rows for what they hold: retrying them can never succeed."""


class Spool:
    """Rows that PostgreSQL did not take yet, as JSON-lines files, oldest first, at most max_bytes."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 512 * 2**20) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.dropped = 0

    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files())

    def write(self, rows: list[Row]) -> Path | None:
        data = "".join(json.dumps(row, default=str) + "\n" for row in rows).encode()
        used = self.size()
        if used + len(data) > self.max_bytes:
            self.dropped += len(rows)
            log.error("usage spool full (%d of %d bytes in %s): %d usage rows dropped, %d so far; "
                      "PostgreSQL has been away too long or the limit is too small", used, self.max_bytes,
                      self.dir, len(rows), self.dropped)
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = self.dir / f"{name}.jsonl"
        os.replace(tmp, final)
        fsync_directory(self.dir)
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

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):  # another instance replayed it too
            path.unlink()
            fsync_directory(self.dir)

    def pending(self) -> int:
        return sum(len(self.read(path)) for path in self.files())


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in the directory survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeadLetter:
    """Rows PostgreSQL refused for their content, with the reason, as JSON lines (the report counts them)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0

    def add(self, row: Row, reason: str) -> None:
        self.count += 1
        log.error("usage row %s refused by PostgreSQL (%s): moved to %s", row.get("request_id"), reason, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"quarantined_at": dt.datetime.now(dt.UTC).isoformat(), "reason": reason[:500], "row": row}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def connect_postgres(dsn: str, connect_timeout_s: int = 3, statement_timeout_ms: int = 5000) -> Any:
    """The gateway's connection to the usage database: a server that hangs must not hold it long."""
    import psycopg

    return psycopg.connect(dsn, connect_timeout=connect_timeout_s, autocommit=False,
                           options=f"-c statement_timeout={statement_timeout_ms}")


class PostgresInserter:
    """Inserts rows in one transaction over one kept connection. Raises RowsRefused when PostgreSQL
    refuses them for their content, anything else when it cannot be reached (the caller retries)."""

    def __init__(self, dsn: str, connect_timeout_s: int = 3, statement_timeout_ms: int = 5000) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = connect_postgres(self.dsn, self.connect_timeout_s, self.statement_timeout_ms)
        return self._conn

    def __call__(self, rows: list[Row]) -> None:
        import psycopg

        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.executemany(INSERT_SQL, [tuple(row.get(c) for c in COLUMNS) for row in rows])
            conn.commit()
        except (psycopg.DataError, psycopg.IntegrityError) as err:
            conn.rollback()
            raise RowsRefused(f"{type(err).__name__}: {err}") from err
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                self._conn.close()
            self._conn = None


class Writer:
    """Batches rows from a bounded queue into insert(); spools what PostgreSQL cannot take now and
    quarantines what it will never take."""

    def __init__(self, insert: Insert, spool: Spool, batch: int = 200, flush_s: float = 1.0,
                 dead_letter: DeadLetter | None = None, queue_max: int = 10000,
                 metrics_file: str | os.PathLike[str] | None = None) -> None:
        self.insert = insert
        self.spool = spool
        self.batch = batch
        self.flush_s = flush_s
        self.dead_letter = dead_letter or DeadLetter(Path(spool.dir).parent / "dead-letter.jsonl")
        self.queue: queue.Queue[Row] = queue.Queue(maxsize=queue_max)
        self.metrics_file = Path(metrics_file) if metrics_file else None
        self.inserted = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._metrics_at = 0.0
        self._spool_lock = threading.Lock()

    def put(self, row: Row) -> None:
        row = clean_row(row)
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            # PostgreSQL is slower than the requests: beyond the bound, rows wait on disk.
            with self._spool_lock:
                self.spool.write([row])

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush everything queued (into PostgreSQL, or the spool when it does not answer)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while not self.queue.empty():
            if time.monotonic() > deadline:
                self._retry_at = float("inf")  # out of time: the rest goes to the spool
            self.flush_once()
        self.write_metrics(force=True)
        close = getattr(self.insert, "close", None)
        if close is not None:
            close()

    def _take(self, wait: float) -> list[Row]:
        rows: list[Row] = []
        deadline = time.monotonic() + wait
        while len(rows) < self.batch:
            remaining = deadline - time.monotonic()
            try:
                rows.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _insert(self, rows: list[Row]) -> None:
        """Insert rows; a refused batch is retried row by row, refused rows go to the dead letter."""
        try:
            self.insert(rows)
            self.inserted += len(rows)
            return
        except RowsRefused as err:
            if len(rows) == 1:
                self.dead_letter.add(rows[0], str(err))
                return
        for row in rows:
            try:
                self.insert([row])
                self.inserted += 1
            except RowsRefused as err:
                self.dead_letter.add(row, str(err))

    def drain_spool(self) -> bool:
        """Insert spooled files, oldest first; False when PostgreSQL is still away."""
        if time.monotonic() < self._retry_at:
            return False
        for path in self.spool.files():
            try:
                rows = [clean_row(row) for row in self.spool.read(path)]
            except FileNotFoundError:
                continue  # another instance took it
            try:
                for start in range(0, len(rows), self.batch):
                    self._insert(rows[start:start + self.batch])
            except Exception as err:  # noqa: BLE001 - any other failure means: keep the file, retry later
                log.warning("usage spool: PostgreSQL unavailable (%s); %s kept", type(err).__name__, path.name)
                self._retry_at = time.monotonic() + min(5.0, self.flush_s * 5)
                return False
            self.spool.remove(path)
        return True

    def flush_once(self, wait: float = 0.0) -> int:
        rows = self._take(wait)
        spool_clear = self.drain_spool() if self.spool.files() else time.monotonic() >= self._retry_at
        self.write_metrics()
        if not rows:
            return 0
        if spool_clear:
            try:
                self._insert(rows)
                return len(rows)
            except Exception as err:  # noqa: BLE001
                log.warning("usage: PostgreSQL unavailable (%s); spooling %d rows", type(err).__name__, len(rows))
                self._retry_at = time.monotonic() + min(5.0, self.flush_s * 5)
        with self._spool_lock:
            self.spool.write(rows)
        return len(rows)

    def metrics(self) -> dict[str, float]:
        files = self.spool.files()
        sizes = []
        for path in files:
            with contextlib.suppress(FileNotFoundError):  # taken by another instance meanwhile
                sizes.append(path.stat().st_size)
        return {
            "llm_appliance_usage_queue_rows": self.queue.qsize(),
            "llm_appliance_usage_spool_files": len(files),
            "llm_appliance_usage_spool_bytes": sum(sizes),
            "llm_appliance_usage_spool_limit_bytes": self.spool.max_bytes,
            "llm_appliance_usage_rows_inserted_total": self.inserted,
            "llm_appliance_usage_rows_dropped_total": self.spool.dropped,
            "llm_appliance_usage_rows_dead_letter_total": self.dead_letter.count,
        }

    def write_metrics(self, force: bool = False) -> None:
        """The counters as a Prometheus textfile (node exporter's textfile collector reads it)."""
        if self.metrics_file is None or (not force and time.monotonic() < self._metrics_at):
            return
        self._metrics_at = time.monotonic() + 10.0
        lines = [f"{name} {value}" for name, value in self.metrics().items()]
        tmp = self.metrics_file.with_name(self.metrics_file.name + ".tmp")
        try:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, self.metrics_file)
        except OSError as err:
            log.warning("usage metrics not written to %s: %s", self.metrics_file, err)

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
            env = os.environ.get
            spool_dir = env("LLM_APPLIANCE_SPOOL_DIR", "/var/lib/llm-appliance/litellm/spool")
            writer = Writer(
                PostgresInserter(env("LLM_APPLIANCE_USAGE_DSN", "")),
                Spool(spool_dir, max_bytes=int(float(env("LLM_APPLIANCE_SPOOL_MAX_MB", "512")) * 2**20)),
                batch=int(env("LLM_APPLIANCE_USAGE_BATCH", "200")),
                flush_s=float(env("LLM_APPLIANCE_USAGE_FLUSH_S", "1.0")),
                dead_letter=DeadLetter(env("LLM_APPLIANCE_DEAD_LETTER")
                                       or Path(spool_dir).parent / "dead-letter.jsonl"),
                queue_max=int(env("LLM_APPLIANCE_USAGE_QUEUE_MAX", "10000")),
                metrics_file=env("LLM_APPLIANCE_METRICS_FILE") or None,
            )
            # The door flushes the queue at the end of the ASGI lifespan (door.py); atexit covers a
            # process that ends otherwise (uvicorn re-raises SIGTERM, so it does not run then).
            atexit.register(writer.stop, 10.0)
        self.writer = writer

    def _record(self, kwargs: dict[str, Any], start_time: object, end_time: object, failed: bool,
                error: BaseException | None = None) -> None:
        if not is_client_request(kwargs):
            return  # the router's own health checks are no one's usage
        try:
            row = row_from_callback(kwargs, start_time, end_time, failed, error)
            self.writer.start()
            self.writer.put(row)
            tokens = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
            metrics.record_tokens(row.get("model_alias"), *tokens)
            record_budget_tokens(row.get("key_alias"), sum(tokens))
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
                                           traceback_str: str | None = None) -> Any:
        """Requests refused at the door (bad key 401, model not allowed 403, over a limit 429) get a
        row too, under the key's user when the key is known (an expired or revoked one, say).
        What the client is told is the door's business (door.py), but for a request LiteLLM's own
        checks refused (request_refusal)."""
        try:
            from llm_appliance.gateway.auth import gate, key_hash_of

            user = gate().store.users().get(key_hash_of(getattr(user_api_key_dict, "api_key", None)))
            row = rejected_row(request_data or {}, _status_of(original_exception),
                               getattr(user_api_key_dict, "request_route", None), user.name if user else None,
                               refusal_class(original_exception))
            if row is not None:
                self.writer.start()
                self.writer.put(row)
        except Exception:  # noqa: BLE001 - logging must never change the answer
            log.exception("usage row of a refused request dropped into the log")
        return request_refusal(original_exception)


def record_budget_tokens(name: str | None, tokens: int) -> None:
    """The tokens of an answered request, for its user's monthly budget on this instance (the
    gate exists: the request passed it)."""
    from llm_appliance.gateway import auth

    if auth._gate is not None and auth._gate.budgets is not None:
        auth._gate.budgets.record(name, tokens)


def refusal_class(error: BaseException) -> str | None:
    """The usage row's error_class of a refusal that is not told apart by its status alone."""
    from llm_appliance.gateway.budget import REFUSAL_PREFIX

    detail = getattr(error, "detail", None) or str(error)
    return "BudgetExhausted" if REFUSAL_PREFIX in str(detail) else None


def request_refusal(error: BaseException) -> Any:
    """LiteLLM's own checks of a request body (a field it refuses) raise a plain ValueError, which
    its auth path turns into "500 Internal server error": the client's fault, so a 400 with the
    sentence. The auth path takes the exception returned here; all else is the door's business."""
    if _status_of(error) is not None or type(error).__name__ not in REQUEST_CLASSES:
        return None
    from fastapi import HTTPException

    return HTTPException(status_code=400, detail=upstream_sentence(str(error)) or "The request is not valid.")


usage_logger = UsageLogger()
