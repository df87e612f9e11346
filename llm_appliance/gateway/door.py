"""The gateway's door: an ASGI app in front of LiteLLM's proxy that refuses, before any byte of
the body is read, what no key holder sent: an unknown, expired or revoked key (401), a route the
appliance does not offer (404), a body over the cap (413). LiteLLM reads and parses the whole body
before it calls custom_auth, so these checks cannot live there.

On the way out it rewrites LiteLLM's error answers (errors.py): a model that is down or restarting
is a 503 with Retry-After naming the model, other failures a 502 or 504, and no answer carries
LiteLLM's class names, upstream addresses or router notes. (LiteLLM's failure hook can replace the
answer of chat completions only; text completions and streams ignore what it returns.)

Run by uvicorn (`uvicorn llm_appliance.gateway.door:app`), with LiteLLM's configuration from
CONFIG_FILE_PATH. Everything that passes goes to LiteLLM unchanged, where custom_auth (auth.py)
checks the models, fields and rates with the parsed body.

Environment: LLM_APPLIANCE_MAX_BODY_MB (the cap, 8), LLM_APPLIANCE_RETRY_AFTER_S (30), and auth.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llm_appliance.gateway import metrics
from llm_appliance.gateway.auth import KeyError401, NotOffered404, gate, hash_key, route_kind, strip_bearer
from llm_appliance.gateway.errors import client_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("llm_appliance.door")

# LiteLLM's liveness and readiness answer without a key (the play and the edge wait on them).
PUBLIC_PATHS = frozenset({"/health/liveliness", "/health/liveness", "/health/readiness"})
# The gateway's metrics, for Prometheus: no key, as nginx passes only /v1/ to the gateway and the
# firewall admits the gateway's ports from the site's nginx and monitoring hosts alone.
METRICS_PATH = "/metrics"


# Error answers larger than this are passed on as they are (they are not LiteLLM's short JSON).
ERROR_BODY_LIMIT = 64 * 1024
# The model named in a request body, looked for in its first bytes (no JSON parse of the whole body).
_MODEL_IN_BODY = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_CLASS_IN_MESSAGE = re.compile(r"^(?:litellm\.)?([A-Za-z]+(?:Error|Exception|Timeout))\b")


class BodyTooLarge(Exception):
    pass


def rewrite_error(status: int, body: bytes, model: str | None, retry_after_s: int
                  ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
    """LiteLLM's error answer in the appliance's words: (status, JSON body, extra headers)."""
    try:
        error = json.loads(body)["error"]
        message = str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        error, message = {}, body.decode("utf-8", "replace")
    found = _CLASS_IN_MESSAGE.match(message)
    answer = client_error(status, found.group(1) if found else "", message, model, retry_after_s)
    if answer is None:
        return status, body, ()
    if answer.status >= 500 or answer.status != status:
        # The client gets one line; the operator keeps LiteLLM's own words.
        log.warning("answered %d instead of %d: %s", answer.status, status, message[:1000])
    kind = error.get("type") if isinstance(error, dict) and answer.status < 500 else None
    payload = {"error": {"message": answer.message, "type": kind or _kind_of(answer.status), "param": None,
                         "code": str(answer.status)}}
    headers = tuple((name.lower().encode(), value.encode()) for name, value in answer.headers.items())
    return answer.status, json.dumps(payload).encode(), headers


def _kind_of(status: int) -> str:
    return {401: "auth_error", 403: "permission_error", 429: "rate_limit_error", 503: "service_unavailable",
            504: "timeout"}.get(status, "invalid_request_error" if status < 500 else "api_error")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, message: str, kind: str, headers: tuple[tuple[bytes, bytes], ...] = ()
                  ) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _record_refusal(status: int, path: str, api_key: str | None, error_class: str | None = None) -> None:
    """A usage row for the refusal, as the failure hook writes for refusals LiteLLM sees."""
    try:
        from llm_appliance.gateway.usage_logger import rejected_row, usage_logger

        user = gate().store.users().get(hash_key(strip_bearer(api_key))) if api_key else None
        row = rejected_row({}, status, path, user.name if user else None, error_class)
        if row is not None:
            usage_logger.writer.start()
            usage_logger.writer.put(row)
    except Exception:  # noqa: BLE001 - a refusal must never turn into a 500
        log.exception("usage row of a refusal at the door dropped into the log")


class Door:
    def __init__(self, inner: ASGIApp, max_body_bytes: int, retry_after_s: int = 30) -> None:
        self.inner = inner
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.inner(scope, receive, self._flushing_at_shutdown(send))
            return
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.inner(scope, receive, send)
            return
        if scope.get("path") == METRICS_PATH and scope.get("method") == "GET":
            body = metrics.REGISTRY.render().encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self._measured(scope, receive, send)

    async def _measured(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every answer counted by route, model and status, with its duration and first byte."""
        started_at = time.monotonic()
        status = 500
        first_byte_s: float | None = None
        head = bytearray()

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(head) < 4096:
                head.extend(message.get("body", b"")[:4096 - len(head)])
            return message

        async def watching_send(message: Message) -> None:
            nonlocal status, first_byte_s
            if message["type"] == "http.response.start":
                status = int(message.get("status", 200))
            elif message["type"] == "http.response.body" and first_byte_s is None and message.get("body"):
                first_byte_s = time.monotonic() - started_at
            await send(message)

        metrics.in_flight(1)
        try:
            await self._gated(scope, watching_receive, watching_send, head)
        finally:
            metrics.in_flight(-1)
            found = _MODEL_IN_BODY.search(bytes(head))
            metrics.record_request(metrics.route_label(scope.get("path", "/")),
                                   found.group(1).decode("utf-8", "replace") if found else None,
                                   status, time.monotonic() - started_at, first_byte_s)

    async def _gated(self, scope: Scope, receive: Receive, send: Send, head: bytearray) -> None:
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        api_key = _header(scope, b"authorization")
        try:
            user = gate().authenticate(api_key)
        except KeyError401 as err:
            _record_refusal(401, path, api_key)
            await _answer(send, 401, str(err), "auth_error", ((b"www-authenticate", b"Bearer"),))
            return
        try:
            kind = route_kind(method, path)
        except NotOffered404 as err:
            await _answer(send, 404, str(err), "invalid_request_error")
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _answer(send, 413, self._too_large(), "invalid_request_error")
            return
        limit = user.max_parallel_requests if kind == "inference" else None
        if not limit:
            await self._pass(scope, receive, send, head)
            return
        # The key's requests in progress on every instance: a slot held until the answer has ended
        # (a stream's last byte), here where that end is seen.
        limits = gate().limits
        slot = await limits.acquire_slot(user.key_sha256, limit)
        if slot is None:
            _record_refusal(429, path, api_key, "ParallelLimit")
            await _answer(send, 429, f"Too many requests in progress: this key may have {limit} at a time; "
                                     "retry when one has ended.", "rate_limit_error", ((b"retry-after", b"1"),))
            return
        try:
            await self._pass(scope, receive, send, head)
        finally:
            await limits.release_slot(slot)

    @staticmethod
    def _flushing_at_shutdown(send: Send) -> Send:
        """After LiteLLM's own shutdown, the usage rows still queued are written before the process
        ends. (uvicorn re-raises SIGTERM once it has stopped, so atexit handlers never run.)"""

        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    from llm_appliance.gateway.usage_logger import usage_logger

                    await asyncio.to_thread(usage_logger.writer.stop, 10.0)
                except Exception:  # noqa: BLE001 - the shutdown goes on whatever happens here
                    log.exception("usage rows not flushed at shutdown")
            await send(message)

        return send_after_flush

    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_body_bytes // 2**20} MB, the most this API takes."

    async def _pass(self, scope: Scope, receive: Receive, send: Send, head: bytearray) -> None:
        """To LiteLLM: a body without Content-Length (chunked) is counted as it arrives and cut at the
        cap; an error answer is held back and rewritten. `head`: the body's first bytes, kept by
        _measured as they arrive."""
        received = 0
        held: Message | None = None
        error_body = b""
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def rewriting_send(message: Message) -> None:
            nonlocal held, error_body, started
            if message["type"] == "http.response.start":
                started = True
                if message.get("status", 200) >= 400:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                error_body += message.get("body", b"")
                if message.get("more_body") and len(error_body) <= ERROR_BODY_LIMIT:
                    return
                if message.get("more_body"):  # not LiteLLM's short error JSON: pass it on as it came
                    await send(held)
                    held = None
                    await send({"type": "http.response.body", "body": error_body, "more_body": True})
                    return
                found = _MODEL_IN_BODY.search(bytes(head))
                status, body, extra = rewrite_error(held["status"], error_body,
                                                    found.group(1).decode("utf-8", "replace") if found else None,
                                                    self.retry_after_s)
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                await send({"type": "http.response.start", "status": status,
                            "headers": [*headers, (b"content-length", str(len(body)).encode()), *extra]})
                await send({"type": "http.response.body", "body": body})
                held = None
                return
            await send(message)

        try:
            await self.inner(scope, limited_receive, rewriting_send)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, self._too_large(), "invalid_request_error")


def _litellm_app() -> ASGIApp:
    from litellm.proxy.proxy_server import app as litellm_app

    return litellm_app  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    # `app` is made on first access: importing this module (tests, mypy) needs no LiteLLM.
    if name == "app":
        door = Door(_litellm_app(), int(float(os.environ.get("LLM_APPLIANCE_MAX_BODY_MB", "8")) * 2**20),
                    int(os.environ.get("LLM_APPLIANCE_RETRY_AFTER_S", "30")))
        globals()["app"] = door
        return door
    raise AttributeError(name)
