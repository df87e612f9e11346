"""custom_auth for LiteLLM's proxy: per-user keys from a file of sha256 hashes.

The keys file (JSON, rendered by the litellm role, mode 0640) is re-read whenever its mtime or
size changes, so adding, revoking or expiring a key needs no restart:

    {"users": [{"name": "alice", "key_sha256": "<hex>", "models": ["code", "chat"],
                "rpm": 60, "tpm": 100000, "max_parallel_requests": 4,
                "expires": "2026-12-31", "revoked": false}]}

Unknown, expired or revoked key: 401 (OpenAI-style error body, written by LiteLLM from the
HTTPException raised here).
A service key marked `forwards_user` (the chat UI's) may name the person it acts for in the
X-OpenWebUI-User-Email (or -Id) header; usage is then recorded under that person, with the
service's name as the key alias. Other keys cannot choose whom they are recorded as.
Model the key may not use: 403. Over the key's requests per minute: 429 (checked here, in
this process; LiteLLM's own limiter also receives rpm/tpm/parallel limits through
UserAPIKeyAuth and shares its counters through Redis when several instances run).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the gateway's venv has them; at run time they are imported where they are used
    from fastapi import Request
    from litellm.proxy._types import UserAPIKeyAuth

KEYS_FILE_ENV = "LLM_APPLIANCE_KEYS_FILE"
DEFAULT_KEYS_FILE = "/etc/llm-appliance/litellm/keys.json"


class KeyError401(Exception):
    status_code = 401


class Forbidden403(Exception):
    status_code = 403


class TooMany429(Exception):
    status_code = 429


@dataclass(frozen=True)
class User:
    name: str
    key_sha256: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None
    expires: dt.date | None = None
    revoked: bool = False
    forwards_user: bool = False

    def expired(self, today: dt.date | None = None) -> bool:
        today = today or dt.datetime.now(dt.UTC).date()
        return self.expires is not None and today > self.expires

    def may_use(self, model: str | None) -> bool:
        if not self.models or "*" in self.models or model is None:
            return True
        return model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def strip_bearer(api_key: str | None) -> str:
    api_key = (api_key or "").strip()
    if api_key.lower().startswith("bearer "):
        api_key = api_key[7:].strip()
    return api_key


def key_hash_of(api_key: str | None) -> str:
    """The sha256 hex of a key as LiteLLM hands it to failure hooks: hashed already, or in clear."""
    value = strip_bearer(api_key)
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    return hash_key(value)


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "", 0) else int(value)


def parse_users(document: dict[str, Any]) -> dict[str, User]:
    users: dict[str, User] = {}
    for entry in document.get("users", []):
        expires = entry.get("expires")
        if expires and not isinstance(expires, dt.date):
            expires = dt.date.fromisoformat(str(expires)[:10])
        user = User(
            name=str(entry["name"]),
            key_sha256=str(entry["key_sha256"]).lower(),
            models=tuple(entry.get("models") or ()),
            rpm=_int_or_none(entry.get("rpm")),
            tpm=_int_or_none(entry.get("tpm")),
            max_parallel_requests=_int_or_none(entry.get("max_parallel_requests")),
            expires=expires or None,
            revoked=bool(entry.get("revoked", False)),
            forwards_user=bool(entry.get("forwards_user", False)),
        )
        users[user.key_sha256] = user
    return users


class KeyStore:
    """The keys file, re-read when its (mtime, size, inode) changes."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def users(self) -> dict[str, User]:
        stamp = self._current_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp is None:
                    self._users = {}
                else:
                    try:
                        with open(self.path, encoding="utf-8") as handle:
                            self._users = parse_users(json.load(handle))
                    except (OSError, ValueError, KeyError):
                        # A half-written file: keep the previous keys, try again next request.
                        return self._users
                self._stamp = stamp
        return self._users

    def lookup(self, api_key: str) -> User:
        key = strip_bearer(api_key)
        if not key:
            raise KeyError401("No API key given.")
        user = self.users().get(hash_key(key))
        if user is None:
            raise KeyError401("Invalid API key.")
        if user.revoked:
            raise KeyError401("This API key has been revoked.")
        if user.expired():
            raise KeyError401("This API key has expired.")
        return user


class RpmWindow:
    """Requests in the last 60 s per key, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int | None) -> None:
        if not limit:
            return
        now = self._clock()
        with self._lock:
            hits = self._hits[key]
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= limit:
                raise TooMany429(f"Rate limit exceeded: {limit} requests per minute for this key.")
            hits.append(now)


@dataclass
class Gate:
    store: KeyStore
    rpm: RpmWindow = field(default_factory=RpmWindow)

    def check(self, api_key: str, model: str | None) -> User:
        user = self.store.lookup(api_key)
        if not user.may_use(model):
            raise Forbidden403(
                f"Key of user {user.name} may not use model {model!r}; allowed: {', '.join(user.models)}."
            )
        self.rpm.hit(user.key_sha256, user.rpm)
        return user


_gate: Gate | None = None


def gate() -> Gate:
    global _gate
    if _gate is None:
        _gate = Gate(KeyStore(os.environ.get(KEYS_FILE_ENV, DEFAULT_KEYS_FILE)))
    return _gate


async def _requested_model(request: Request | None) -> str | None:
    if request is None or request.method != "POST":
        return None
    try:
        # LiteLLM's reader caches the parsed body in the request scope for the route handler.
        from litellm.proxy.common_utils.http_parsing_utils import _read_request_body

        body = await _read_request_body(request=request)
    except Exception:  # noqa: BLE001 - a body we cannot read is left to LiteLLM
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return str(model) if model else None


FORWARDED_USER_HEADERS = ("x-openwebui-user-email", "x-openwebui-user-id")


def recorded_user(user: User, headers: Mapping[str, str] | None) -> str:
    """Whom the request's usage belongs to: the key's user, or the person a service acts for."""
    if user.forwards_user and headers is not None:
        for name in FORWARDED_USER_HEADERS:
            value = (headers.get(name) or "").strip()
            if value:
                return value[:200]
    return user.name


async def user_api_key_auth(request: Request | None, api_key: str) -> UserAPIKeyAuth:
    """The function named in general_settings.custom_auth."""
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    model = await _requested_model(request)
    try:
        user = gate().check(api_key, model)
    except (KeyError401, Forbidden403, TooMany429) as err:
        # LiteLLM turns an HTTPException into its OpenAI-style error body with this status; a plain
        # exception would become a 500 in 1.100.5.
        raise HTTPException(status_code=err.status_code, detail=str(err)) from None
    return UserAPIKeyAuth(
        api_key=user.key_sha256,
        token=user.key_sha256,
        key_alias=user.name,
        user_id=recorded_user(user, getattr(request, "headers", None)),
        models=list(user.models),
        rpm_limit=user.rpm,
        tpm_limit=user.tpm,
        max_parallel_requests=user.max_parallel_requests,
    )
