"""custom_auth for LiteLLM's proxy: per-user keys from a file of sha256 hashes.

The keys file (JSON, rendered by the litellm role, mode 0640) is re-read whenever its mtime or
size changes, so adding, revoking or expiring a key needs no restart:

    {"users": [{"name": "alice", "key_sha256": "<hex>", "models": ["code", "chat"],
                "rpm": 60, "tpm": 100000, "max_parallel_requests": 4,
                "expires": "2026-12-31", "revoked": false}]}

Order of checks: the key first, from the header alone (unknown, expired or revoked: 401, with the
body never read); then the route (only the OpenAI routes the appliance offers, else 404); then
every model the body can reach (`model`, a comma-separated `model`, `fallbacks` and its kin: 403
for one the key may not use) and fields no client may set (upstream, credentials, mocks: 400).
An entry of the keys file that cannot be parsed is logged and refused alone; the others stay.
A service key marked `forwards_user` (the chat UI's) may name the person it acts for in the
X-OpenWebUI-User-Email (or -Id) header; usage is then recorded under that person, with the
service's name as the key alias. Other keys cannot choose whom they are recorded as.
Over the key's requests per minute: 429, counted in Redis for all instances (SharedLimits: while
Redis is away each instance enforces its share); over its requests in progress
(max_parallel_requests): 429 from the door, which holds a slot in Redis for each answer until it
has ended. Tokens per minute go to LiteLLM's limiter through UserAPIKeyAuth, at this instance's
share while Redis is away.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the gateway's venv has them; at run time they are imported where they are used
    from fastapi import Request
    from litellm.proxy._types import UserAPIKeyAuth

KEYS_FILE_ENV = "LLM_APPLIANCE_KEYS_FILE"
DEFAULT_KEYS_FILE = "/etc/llm-appliance/litellm/keys.json"

log = logging.getLogger("llm_appliance.auth")


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
    # For a forwarding service key: requests per minute of each person it acts for.
    per_person_rpm: int | None = None
    # Tokens (prompt and completion) a calendar month, UTC; budget.py counts them.
    monthly_tokens: int | None = None

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


class BadEntry(ValueError):
    """One user entry of the keys file that cannot be used; the others still are."""


def _int_or_none(value: Any, field_name: str) -> int | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise BadEntry(f"{field_name} must be a whole number of at least 0, got {value!r}")
    return int(value)


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1")


def parse_user(entry: Any) -> User:
    """One entry of the keys file, or BadEntry naming the field that is wrong."""
    if not isinstance(entry, dict):
        raise BadEntry(f"an entry must be a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadEntry("name is missing")
    key_sha256 = str(entry.get("key_sha256") or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", key_sha256):
        raise BadEntry("key_sha256 must be 64 hex digits (the sha256 of the key)")
    expires = entry.get("expires")
    if expires not in (None, "") and not isinstance(expires, dt.date):
        try:
            expires = dt.date.fromisoformat(str(expires))
        except ValueError:
            raise BadEntry(f"expires must be a date as YYYY-MM-DD, got {expires!r}") from None
    models = entry.get("models") or ()
    if isinstance(models, str) or not all(isinstance(m, str) for m in models):
        raise BadEntry(f"models must be a list of model names, got {models!r}")
    return User(
        name=name,
        key_sha256=key_sha256,
        models=tuple(models),
        rpm=_int_or_none(entry.get("rpm"), "rpm"),
        tpm=_int_or_none(entry.get("tpm"), "tpm"),
        max_parallel_requests=_int_or_none(entry.get("max_parallel_requests"), "max_parallel_requests"),
        expires=expires or None,
        revoked=_flag(entry.get("revoked")),
        forwards_user=_flag(entry.get("forwards_user")),
        per_person_rpm=_int_or_none(entry.get("per_person_rpm"), "per_person_rpm"),
        monthly_tokens=_int_or_none(entry.get("monthly_tokens"), "monthly_tokens"),
    )


def parse_users(document: dict[str, Any], on_bad: Callable[[int, Any, BadEntry], None] | None = None
                ) -> dict[str, User]:
    """Every usable entry by key hash. A bad entry is skipped (and handed to on_bad): one typo must
    not freeze the others, a revocation among them included."""
    users: dict[str, User] = {}
    for index, entry in enumerate(document.get("users", [])):
        try:
            user = parse_user(entry)
        except BadEntry as err:
            if on_bad is not None:
                on_bad(index, entry, err)
            continue
        users[user.key_sha256] = user
    return users


INVENTORY_USER_FIELDS = frozenset({"name", "key", "key_sha256", "models", "rpm", "tpm", "max_parallel_requests",
                                   "expires", "revoked", "forwards_user", "per_person_rpm", "monthly_tokens"})


def inventory_user_problems(entries: Any) -> list[str]:
    """Every problem of the inventory's litellm_users, one line each naming the user and the field.
    The gateway's own parser judges each entry, so what passes here is what the gateway accepts."""
    if not isinstance(entries, list):
        return [f"litellm_users must be a list of users, got {type(entries).__name__}"]
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_keys: dict[str, str] = {}
    for index, entry in enumerate(entries):
        label = f"litellm_users[{index}]"
        if isinstance(entry, dict) and entry.get("name"):
            label += f" (user {entry['name']})"
        if not isinstance(entry, dict):
            problems.append(f"{label}: must be a mapping with name and key_sha256")
            continue
        unknown = sorted(set(entry) - INVENTORY_USER_FIELDS)
        if unknown:
            problems.append(f"{label}: unknown field(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(INVENTORY_USER_FIELDS))}")
        candidate = dict(entry)
        if "key" in candidate and "key_sha256" not in candidate:
            candidate["key_sha256"] = hash_key(str(candidate["key"]))
        try:
            user = parse_user(candidate)
        except BadEntry as err:
            problems.append(f"{label}: {err}")
            continue
        if user.name in seen_names:
            problems.append(f"{label}: the name {user.name} is used by an earlier entry")
        seen_names.add(user.name)
        if user.key_sha256 in seen_keys:
            problems.append(f"{label}: has the same key as user {seen_keys[user.key_sha256]}")
        seen_keys[user.key_sha256] = user.name
    return problems


def _log_bad_entry(index: int, entry: Any, err: BadEntry) -> None:
    name = entry.get("name") if isinstance(entry, dict) else None
    log.error("keys file: entry %d (user %r) refused, its key will get 401: %s", index, name, err)


class KeyStore:
    """The keys file, re-read when its (mtime, size, inode) changes."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._by_name: dict[str, User] = {}
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
                            document = json.load(handle)
                        if not isinstance(document, dict):
                            raise ValueError("not a JSON object")
                    except (OSError, ValueError) as err:
                        # A half-written file: keep the previous keys, try again next request.
                        log.warning("keys file %s unreadable (%s); the previous keys stay", self.path, err)
                        return self._users
                    self._users = parse_users(document, _log_bad_entry)
                self._by_name = {user.name: user for user in self._users.values()}
                self._stamp = stamp
        return self._users

    def by_name(self, name: str) -> User | None:
        """The user of this name as of the file's last check. Not a check of its own: every
        request's key lookup (users()) has just made one, and this is on the request path."""
        if self._stamp is None:
            self.users()
        return self._by_name.get(name)

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

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        hits = self._hits[key]
        while hits and now - hits[0] >= 60.0:
            hits.popleft()
        return hits

    def hit(self, key: str, limit: int | None) -> None:
        if not limit:
            return
        now = self._clock()
        with self._lock:
            hits = self._recent(key, now)
            if len(hits) >= limit:
                raise TooMany429(f"Rate limit exceeded: {limit} requests per minute for this key.")
            hits.append(now)

    def record(self, key: str) -> None:
        """Count a request another limiter allowed, for the time this one has to decide alone."""
        now = self._clock()
        with self._lock:
            self._recent(key, now).append(now)


# Sliding 60 s window in one sorted set per key, checked and counted in one step on the server.
_RPM_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], 61)
return 1
"""


# Requests in progress per key: one sorted set of slot ids by their start. A slot whose release
# never came (an instance killed mid-request) lapses after the lease (ARGV[4] seconds).
_SLOT_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


class SharedLimits:
    """Per-key limits shared by every gateway instance through Redis.

    Fail-safe rather than fail-open or fail-closed: when Redis does not answer, each instance
    enforces its share of the key's limits (limit // instances, at least 1) from its own counts,
    so the key keeps working and all instances together still stay within its limit (a key whose
    limit is below the number of instances gets one request per instance).
    """

    def __init__(self, redis: Any = None, instances: int = 1, clock: Callable[[], float] = time.time,
                 local: RpmWindow | None = None, slot_lease_s: int = 660) -> None:
        self.redis = redis
        self.instances = max(1, instances)
        self.clock = clock
        self.local = local or RpmWindow()
        self.shared = redis is not None
        self._said_down_at = 0.0
        self.slot_lease_s = slot_lease_s
        # This instance's requests in progress per key (whatever admitted them), and where each
        # slot is held: counted on when Redis goes away mid-request.
        self._in_progress: collections.Counter[str] = collections.Counter()
        self._slots: dict[str, tuple[str, bool]] = {}

    def share(self, limit: int | None) -> int | None:
        """The part of a limit this instance may use on its own (all of it when it is alone)."""
        if not limit or self.shared:
            return limit
        return max(1, limit // self.instances)

    def _redis_answers(self) -> None:
        if not self.shared:
            log.warning("Redis answers again: key limits are shared between instances")
        self.shared = True

    def _redis_down(self, err: BaseException) -> None:
        self.shared = False
        now = time.monotonic()
        if now - self._said_down_at > 60.0:
            self._said_down_at = now
            log.error("Redis unreachable (%s): each of %d gateway instances enforces 1/%d of every key's "
                      "limits until it answers", type(err).__name__, self.instances, self.instances)

    async def hit_rpm(self, key: str, limit: int | None) -> None:
        if not limit:
            return
        if self.redis is not None:
            try:
                allowed = await self.redis.eval(_RPM_SCRIPT, 1, f"llm-appliance:rpm:{key}", self.clock(), limit,
                                                uuid.uuid4().hex)
            except Exception as err:  # noqa: BLE001 - any Redis failure means: decide alone
                self._redis_down(err)
            else:
                self._redis_answers()
                if not allowed:
                    raise TooMany429(f"Rate limit exceeded: {limit} requests per minute for this key.")
                self.local.record(key)
                return
        share = self.share(limit)
        try:
            self.local.hit(key, share)
        except TooMany429:
            raise TooMany429(f"Rate limit exceeded: {limit} requests per minute for this key.") from None

    async def acquire_slot(self, key: str, limit: int) -> str | None:
        """A slot among the key's `limit` requests in progress on all instances, or None when all
        are taken. Every slot acquired must be released (release_slot) when its answer has ended."""
        slot = uuid.uuid4().hex
        if self.redis is not None:
            try:
                taken = await self.redis.eval(_SLOT_SCRIPT, 1, f"llm-appliance:slots:{key}", self.clock(), limit, slot,
                                              self.slot_lease_s)
            except Exception as err:  # noqa: BLE001 - any Redis failure means: decide alone
                self._redis_down(err)
            else:
                self._redis_answers()
                if not taken:
                    return None
                self._in_progress[key] += 1
                self._slots[slot] = (key, True)
                return slot
        if self._in_progress[key] >= (self.share(limit) or limit):
            return None
        self._in_progress[key] += 1
        self._slots[slot] = (key, False)
        return slot

    async def release_slot(self, slot: str) -> None:
        key, in_redis = self._slots.pop(slot)
        self._in_progress[key] -= 1
        if self._in_progress[key] <= 0:
            del self._in_progress[key]
        if in_redis and self.redis is not None:
            try:
                await self.redis.zrem(f"llm-appliance:slots:{key}", slot)
            except Exception as err:  # noqa: BLE001 - the slot lapses with its lease
                self._redis_down(err)


class BadRequest400(Exception):
    status_code = 400


class NotOffered404(Exception):
    status_code = 404


# What the appliance offers: OpenAI's inference routes and the model list. Everything else LiteLLM
# serves (files, batches, assistants, pass-through, Azure-style routes with the model in the path,
# admin routes) is refused before it is read.
INFERENCE_ROUTES = ("/chat/completions", "/completions", "/embeddings")
LISTING_ROUTES = ("/models",)
# Body fields that name other models: each must be one the key may use.
MODEL_FIELDS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
# Body fields that choose an upstream, credentials or test behaviour: never a client's choice.
REFUSED_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "organization", "user_config", "model_list",
    "specific_deployment", "deployment_id", "model_id", "custom_llm_provider", "litellm_params",
    "litellm_metadata", "proxy_server_request", "secret_fields", "mock_response", "mock_tool_calls",
    "mock_timeout", "mock_delay", "mock_testing_fallbacks", "mock_testing_context_fallbacks",
    "mock_testing_content_policy_fallbacks", "mock_testing_rate_limit_error", "guardrails",
})
REFUSED_PREFIXES = ("aws_", "vertex_", "azure_", "litellm_")


def route_kind(method: str, path: str) -> str:
    """'inference', 'listing', or NotOffered404."""
    path = path.rstrip("/")
    if path.startswith("/v1/"):
        path = path[3:]
    if method == "POST" and path in INFERENCE_ROUTES:
        return "inference"
    if method == "GET" and (path in LISTING_ROUTES or path.startswith("/models/")):
        return "listing"
    raise NotOffered404(f"{method} {path or '/'} is not offered here; the API offers /v1/chat/completions, "
                        "/v1/completions, /v1/embeddings and /v1/models.")


def _named_models(value: Any) -> list[str]:
    """Model names inside a fallbacks-like field: strings, {"model": ...}, or {"alias": [...]}."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [name for item in value for name in _named_models(item)]
    if isinstance(value, dict):
        if "model" in value:
            return _named_models(value["model"])
        return [str(k) for k in value] + _named_models(list(value.values()))
    return [str(value)]


def requested_models(body: dict[str, Any]) -> list[str]:
    """Every model a request body can reach, or BadRequest400 for fields no client may set."""
    refused = sorted(k for k in body if k in REFUSED_FIELDS or k.startswith(REFUSED_PREFIXES))
    if refused:
        raise BadRequest400(f"Field(s) {', '.join(refused)} may not be set by clients of this appliance.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest400("The request names no model: set \"model\" to one of the names in /v1/models.")
    # LiteLLM sends a comma-separated model to every model named in it.
    models = [part.strip() for part in model.split(",") if part.strip()]
    for field_name in MODEL_FIELDS:
        if body.get(field_name):
            models.extend(_named_models(body[field_name]))
    return models


@dataclass
class Gate:
    store: KeyStore
    limits: SharedLimits = field(default_factory=SharedLimits)
    # budget.MonthlyBudgets (it imports this module); None: no budgets are checked.
    budgets: Any = None

    def authenticate(self, api_key: str | None) -> User:
        return self.store.lookup(api_key or "")

    def authorize(self, user: User, models: list[str]) -> None:
        for model in models:
            if not user.may_use(model):
                raise Forbidden403(
                    f"Key of user {user.name} may not use model {model[:100]!r}; allowed: {', '.join(user.models)}."
                )

    async def admit(self, user: User, method: str, path: str, body: Any,
                    headers: Mapping[str, str] | None = None) -> None:
        """After the key (a request without a valid key is refused before its body is read): the
        route, every model the body can reach, the user's monthly token budget, the key's rate, and
        for a service that acts for people (the chat), each person's rate, so one heavy user cannot
        use up everyone's."""
        inference = route_kind(method, path) == "inference"
        if inference:
            if not isinstance(body, dict):
                raise BadRequest400("The request body must be a JSON object.")
            self.authorize(user, requested_models(body))
            if self.budgets is not None:
                self.budgets.check(user)
        await self.limits.hit_rpm(user.key_sha256, user.rpm)
        person = recorded_user(user, headers) if user.forwards_user else user.name
        if inference and user.per_person_rpm and person != user.name:
            try:
                await self.limits.hit_rpm(f"{user.key_sha256}:{hash_key(person)}", user.per_person_rpm)
            except TooMany429:
                raise TooMany429(f"Rate limit exceeded: {user.per_person_rpm} requests per minute for each person "
                                 f"using {user.name}.") from None


def _redis_from_environment() -> Any:
    host = os.environ.get("LLM_APPLIANCE_REDIS_HOST")
    if not host:
        return None
    import redis.asyncio  # type: ignore[import-not-found]  # the gateway's venv has it, the controller's not

    return redis.asyncio.Redis(
        host=host, port=int(os.environ.get("LLM_APPLIANCE_REDIS_PORT", "6379")),
        password=os.environ.get("REDIS_PASSWORD") or None,
        # A Redis that hangs must not hold requests: decide alone after this long.
        socket_timeout=0.25, socket_connect_timeout=0.25,
    )


_gate: Gate | None = None


def gate() -> Gate:
    global _gate
    if _gate is None:
        from llm_appliance.gateway.budget import MonthlyBudgets, PostgresTotals
        from llm_appliance.gateway.usage_logger import connect_postgres

        store = KeyStore(os.environ.get(KEYS_FILE_ENV, DEFAULT_KEYS_FILE))
        dsn = os.environ.get("LLM_APPLIANCE_USAGE_DSN", "")
        _gate = Gate(
            store,
            SharedLimits(_redis_from_environment(), int(os.environ.get("LLM_APPLIANCE_GATEWAY_INSTANCES", "1")),
                         slot_lease_s=int(os.environ.get("LLM_APPLIANCE_SLOT_LEASE_S", "660"))),
            MonthlyBudgets(store, PostgresTotals(dsn, connect_postgres) if dsn else None,
                           refresh_s=float(os.environ.get("LLM_APPLIANCE_BUDGET_REFRESH_S", "5"))),
        )
    return _gate


async def _request_body(request: Request | None) -> Any:
    if request is None or request.method != "POST":
        return None
    try:
        # LiteLLM's reader caches the parsed body in the request scope for the route handler.
        from litellm.proxy.common_utils.http_parsing_utils import _read_request_body

        return await _read_request_body(request=request)
    except Exception:  # noqa: BLE001 - an unreadable body is refused by the check
        return None


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

    the_gate = gate()
    try:
        user = the_gate.authenticate(api_key)
        method = getattr(request, "method", "GET")
        path = request.url.path if request is not None else "/"
        body = await _request_body(request) if route_kind(method, path) == "inference" else None
        await the_gate.admit(user, method, path, body, getattr(request, "headers", None))
    except (KeyError401, Forbidden403, TooMany429, BadRequest400, NotOffered404) as err:
        # LiteLLM turns an HTTPException into its OpenAI-style error body with this status; a plain
        # exception would become a 500 in 1.100.5.
        raise HTTPException(status_code=err.status_code, detail=str(err)) from None
    limits = the_gate.limits
    return UserAPIKeyAuth(
        api_key=user.key_sha256,
        token=user.key_sha256,
        key_alias=user.name,
        user_id=recorded_user(user, getattr(request, "headers", None)),
        models=list(user.models),
        # Requests per minute are enforced above and requests in progress at the door (door.py:
        # LiteLLM's own count is kept per instance for a second before it reaches Redis, so two
        # instances could admit more than the limit); LiteLLM's limiter keeps tokens per minute, at
        # this instance's share while Redis is away.
        tpm_limit=limits.share(user.tpm),
    )
