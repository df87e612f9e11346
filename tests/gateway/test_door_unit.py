"""The door in front of LiteLLM, driven as uvicorn drives an ASGI app: what it refuses is refused
before the body is read and before LiteLLM sees it; LiteLLM's error answers leave in our words.
(The molecule tests run it in front of the real LiteLLM.)"""

import asyncio
import json

import pytest

from llm_appliance.gateway import auth, door

KEY = "sk-door-test"


@pytest.fixture(autouse=True)
def keys(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"users": [{"name": "alice", "key_sha256": auth.hash_key(KEY)}]}))
    monkeypatch.setattr(auth, "_gate", auth.Gate(auth.KeyStore(str(path))))
    monkeypatch.setattr(door, "_record_refusal", lambda *args: None)


class Upstream:
    """Stands in for LiteLLM's app: reads the whole body, then answers as told."""

    def __init__(self, status=200, body=b'{"ok": true}', chunks=1):
        self.status, self.body, self.chunks = status, body, chunks
        self.called = False
        self.received = b""

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.received += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        step = max(1, len(self.body) // self.chunks)
        parts = [self.body[i:i + step] for i in range(0, len(self.body), step)] or [b""]
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1})


def call(app, path="/v1/completions", key=KEY, body=b'{"model": "code", "prompt": "x"}', method="POST",
         content_length=True, body_reads=None):
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)] or [b""]
    sent = []

    async def receive():
        if body_reads is not None:
            body_reads.append(1)
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_a_bad_key_is_refused_without_reading_the_body_or_calling_litellm():
    upstream, reads = Upstream(), []
    status, headers, body = call(door.Door(upstream, 1000), key="sk-wrong", body=b"x" * 5000, body_reads=reads)
    assert status == 401 and json.loads(body)["error"]["message"] == "Invalid API key."
    assert not upstream.called and reads == []
    assert call(door.Door(upstream, 1000), key=None)[0] == 401 and not upstream.called


def test_a_route_not_offered_is_404_and_health_passes_without_a_key():
    upstream = Upstream()
    assert call(door.Door(upstream, 1000), path="/key/generate")[0] == 404 and not upstream.called
    assert call(door.Door(upstream, 1000), path="/health/liveliness", key=None, method="GET")[0] == 200


def test_bodies_over_the_cap_are_413_declared_or_streamed():
    upstream, reads = Upstream(), []
    assert call(door.Door(upstream, 1000), body=b"x" * 1001, body_reads=reads)[0] == 413
    assert not upstream.called and reads == []
    status, _, body = call(door.Door(Upstream(), 2500), body=b"x" * 5000, content_length=False)
    assert status == 413 and b"larger than" in body


def test_a_good_request_passes_unchanged():
    upstream = Upstream(body=b"data: 1\n\n" * 50, chunks=50)
    status, _, body = call(door.Door(upstream, 10_000))
    assert status == 200 and body == b"data: 1\n\n" * 50
    assert upstream.received == b'{"model": "code", "prompt": "x"}'


def test_an_engine_that_is_down_becomes_503_with_retry_after_naming_the_model():
    litellm_answer = json.dumps({"error": {
        "message": "litellm.InternalServerError: InternalServerError: OpenAIException - Connection error.. "
                   "Received Model Group=code\nAvailable Model Group Fallbacks=None",
        "type": None, "param": None, "code": "500"}}).encode()
    status, headers, body = call(door.Door(Upstream(500, litellm_answer, chunks=3), 10_000, retry_after_s=12))
    error = json.loads(body)["error"]
    assert status == 503 and headers[b"retry-after"] == b"12"
    assert error["message"].startswith("Model code is not available right now")
    assert "litellm" not in body.decode() and "Exception" not in body.decode()
    assert int(headers[b"content-length"]) == len(body)


def test_the_gateways_own_refusals_keep_their_words():
    answer = json.dumps({"error": {"message": "Key of user bob may not use model 'code'; allowed: chat.",
                                   "type": "auth_error", "param": "None", "code": "403"}}).encode()
    status, _, body = call(door.Door(Upstream(403, answer), 10_000))
    assert status == 403 and json.loads(body)["error"]["message"] == "Key of user bob may not use model 'code'; " \
        "allowed: chat."


def test_queued_usage_rows_are_flushed_when_the_lifespan_ends(monkeypatch):
    from llm_appliance.gateway import usage_logger as ul

    stopped = []
    monkeypatch.setattr(ul.usage_logger, "writer", type("W", (), {"stop": lambda self, t: stopped.append(t)})())

    async def litellm_lifespan(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append((message["type"], list(stopped)))

    asyncio.run(door.Door(litellm_lifespan, 1000)({"type": "lifespan"}, receive, send))
    # Flushed before the server is told the shutdown is complete (it exits right after).
    assert sent == [("lifespan.startup.complete", []), ("lifespan.shutdown.complete", [10.0])]


def _sample(text, name, **labels):
    """The value of one series in an exposition text, 0 when it is not there."""
    wanted = "%s{%s}" % (name, ",".join('%s="%s"' % item for item in labels.items())) if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_every_answer_is_counted_by_route_model_and_status_and_served_at_metrics(monkeypatch):
    from llm_appliance.gateway import metrics

    monkeypatch.setattr(metrics, "REGISTRY", metrics._registry())
    metrics.REGISTRY.model_names = frozenset({"code", "chat"})
    app = door.Door(Upstream(), 1000)
    assert call(app)[0] == 200
    assert call(app, key="sk-wrong")[0] == 401
    assert call(app, body=b'{"model": "made-up-name", "prompt": "x"}')[0] == 200
    assert call(door.Door(Upstream(status=503, body=b'{"error": {"message": "down"}}'), 1000))[0] == 503
    status, headers, body = call(app, path="/metrics", key=None, method="GET")
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    text = body.decode()
    route = "/v1/completions"
    assert _sample(text, "llm_gateway_requests_total", route=route, model="code", status="200") == 1
    assert _sample(text, "llm_gateway_requests_total", route=route, model="none", status="401") == 1
    # A name the gateway does not offer cannot add series: it counts as "other".
    assert _sample(text, "llm_gateway_requests_total", route=route, model="other", status="200") == 1
    assert "made-up-name" not in text
    assert _sample(text, "llm_gateway_requests_total", route=route, model="code", status="503") == 1
    assert _sample(text, "llm_gateway_request_duration_seconds_count", route=route, model="code") == 2
    assert _sample(text, 'llm_gateway_request_duration_seconds_bucket', route=route, model="code", le="+Inf") == 2
    # First byte only for answers that succeeded; nothing left in flight.
    assert _sample(text, "llm_gateway_time_to_first_token_seconds_count", route=route, model="code") == 1
    assert _sample(text, "llm_gateway_in_flight_requests") == 0
    metrics.record_tokens("code", 12, 3)
    text = metrics.REGISTRY.render()
    assert _sample(text, "llm_gateway_tokens_total", model="code", kind="completion") == 3


def test_the_histogram_buckets_are_cumulative():
    from llm_appliance.gateway import metrics

    registry = metrics.Registry()
    registry.describe("h", "histogram", "test")
    for value in (0.001, 0.02, 0.02, 400.0):
        registry.observe("h", (("a", "b"),), value)
    text = registry.render()
    assert _sample(text, "h_bucket", a="b", le="0.005") == 1
    assert _sample(text, "h_bucket", a="b", le="0.025") == 3
    assert _sample(text, "h_bucket", a="b", le="300") == 3
    assert _sample(text, "h_bucket", a="b", le="+Inf") == 4 == _sample(text, "h_count", a="b")
    assert abs(_sample(text, "h_sum", a="b") - 400.041) < 1e-9


class HeldUpstream:
    """Stands in for LiteLLM's app answering a stream: holds each answer open until released."""

    def __init__(self):
        self.release = asyncio.Event()
        self.in_progress = 0
        self.most = 0

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":  # the model list answers at once
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        self.in_progress += 1
        self.most = max(self.most, self.in_progress)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await self.release.wait()
        self.in_progress -= 1
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _one(app, path="/v1/completions", method="POST"):
    body = [b'{"model": "code", "prompt": "x"}']
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body.pop() if body else b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_a_keys_requests_in_progress_are_held_to_its_limit_until_each_answer_ends(tmp_path, monkeypatch):
    """max_parallel_requests 2: a third request while two streams are open is 429 with Retry-After;
    once they have ended, slots are free again. The model list is never counted. (Redis away here:
    one instance takes the whole limit; molecule checks two instances sharing it through Redis.)"""
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"users": [{"name": "alice", "key_sha256": auth.hash_key(KEY),
                                           "max_parallel_requests": 2}]}))
    limits = auth.SharedLimits()
    monkeypatch.setattr(auth, "_gate", auth.Gate(auth.KeyStore(str(path)), limits))
    refusals = []
    monkeypatch.setattr(door, "_record_refusal", lambda *args: refusals.append(args))
    upstream = HeldUpstream()
    app = door.Door(upstream, 10_000)

    async def scenario():
        streams = [asyncio.create_task(_one(app)) for _ in range(2)]
        while upstream.in_progress < 2:
            await asyncio.sleep(0)
        third = await asyncio.wait_for(_one(app), 5)  # a request let through would wait for the release
        listing = await asyncio.wait_for(_one(app, "/v1/models", "GET"), 5)
        upstream.release.set()
        answered = await asyncio.gather(*streams)
        after = await _one(app)
        return answered, third, listing, after

    answered, third, listing, after = asyncio.run(scenario())
    assert [status for status, _, _ in answered] == [200, 200] and upstream.most == 2
    status, headers, body = third
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert json.loads(body)["error"]["message"].startswith("Too many requests in progress: this key may have 2 ")
    assert refusals == [(429, "/v1/completions", f"Bearer {KEY}", "ParallelLimit")]
    assert listing[0] == 200 and after[0] == 200
    assert not limits._slots and not limits._in_progress


def test_a_slot_is_released_when_the_answer_fails(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"users": [{"name": "alice", "key_sha256": auth.hash_key(KEY),
                                           "max_parallel_requests": 1}]}))
    limits = auth.SharedLimits()
    monkeypatch.setattr(auth, "_gate", auth.Gate(auth.KeyStore(str(path)), limits))

    async def broken(scope, receive, send):
        raise RuntimeError("the upstream fell over")

    with pytest.raises(RuntimeError):
        call(door.Door(broken, 10_000))
    assert not limits._slots
    assert call(door.Door(Upstream(), 10_000))[0] == 200


def test_with_redis_away_each_instance_takes_its_share_of_the_slots():
    limits = auth.SharedLimits(instances=2)

    async def scenario():
        first = await limits.acquire_slot("k", 4)
        second = await limits.acquire_slot("k", 4)
        third = await limits.acquire_slot("k", 4)
        await limits.release_slot(first)
        fourth = await limits.acquire_slot("k", 4)
        return first, second, third, fourth

    first, second, third, fourth = asyncio.run(scenario())
    assert first and second and third is None and fourth
