"""Key checks without any server: hashes, reload on change, expiry, revocation, models, rpm."""

import asyncio
import json
import logging
import os

import pytest

from llm_appliance.gateway import auth


def write_keys(path, users):
    path.write_text(json.dumps({"users": users}))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys.json"
    write_keys(path, [
        {"name": "alice", "key_sha256": auth.hash_key("sk-alice"), "models": ["code"], "rpm": 2},
        {"name": "old", "key_sha256": auth.hash_key("sk-old"), "expires": "2020-01-01"},
        {"name": "gone", "key_sha256": auth.hash_key("sk-gone"), "revoked": True},
    ])
    return path


def test_known_key_and_bearer_prefix(keys_file):
    store = auth.KeyStore(str(keys_file))
    assert store.lookup("sk-alice").name == "alice"
    assert store.lookup("Bearer sk-alice").name == "alice"


@pytest.mark.parametrize("key", ["", "sk-unknown", "sk-old", "sk-gone"])
def test_refused_keys_are_401(keys_file, key):
    with pytest.raises(auth.KeyError401):
        auth.KeyStore(str(keys_file)).lookup(key)


def test_file_change_is_noticed_without_restart(keys_file):
    store = auth.KeyStore(str(keys_file))
    with pytest.raises(auth.KeyError401):
        store.lookup("sk-bob")
    write_keys(keys_file, [{"name": "bob", "key_sha256": auth.hash_key("sk-bob")}])
    assert store.lookup("sk-bob").name == "bob"
    with pytest.raises(auth.KeyError401):
        store.lookup("sk-alice")


def test_broken_file_keeps_previous_keys(keys_file):
    store = auth.KeyStore(str(keys_file))
    store.lookup("sk-alice")
    keys_file.write_text("{not json")
    assert store.lookup("sk-alice").name == "alice"


async def _through_the_gate(gate, key, method, path, body, headers=None):
    """What the gateway does with a request: the key at the door, then the route, models and limits."""
    user = gate.authenticate(key)
    await gate.admit(user, method, path, body, headers)
    return user


def check(gate, key, model="code", path="/v1/completions", method="POST", body=None, headers=None):
    body = {"model": model, "prompt": "x"} if body is None else body
    return asyncio.run(_through_the_gate(gate, key, method, path, body, headers))


def test_disallowed_model_is_403_and_rpm_429(keys_file):
    now = [0.0]
    gate = auth.Gate(auth.KeyStore(str(keys_file)), auth.SharedLimits(local=auth.RpmWindow(clock=lambda: now[0])))
    with pytest.raises(auth.Forbidden403):
        check(gate, "sk-alice", "chat")
    check(gate, "sk-alice")
    check(gate, "sk-alice")
    with pytest.raises(auth.TooMany429):
        check(gate, "sk-alice")
    now[0] = 61.0
    check(gate, "sk-alice")


def test_one_bad_entry_refuses_only_itself_and_is_logged(keys_file, caplog):
    """A typo in one entry used to freeze the whole file, a revocation written with it included."""
    store = auth.KeyStore(str(keys_file))
    assert store.lookup("sk-alice").name == "alice"
    write_keys(keys_file, [
        {"name": "alice", "key_sha256": auth.hash_key("sk-alice"), "revoked": True},
        {"name": "typo", "key_sha256": auth.hash_key("sk-typo"), "expires": "31.12.2026"},
        {"name": "bob", "key_sha256": auth.hash_key("sk-bob"), "rpm": "lots"},
        {"name": "carol", "key_sha256": auth.hash_key("sk-carol")},
    ])
    with caplog.at_level(logging.ERROR, logger="llm_appliance.auth"):
        with pytest.raises(auth.KeyError401, match="revoked"):
            store.lookup("sk-alice")
        assert store.lookup("sk-carol").name == "carol"
    for key in ("sk-typo", "sk-bob"):
        with pytest.raises(auth.KeyError401):
            store.lookup(key)
    logged = caplog.text
    assert "'typo'" in logged and "expires" in logged and "'bob'" in logged and "rpm" in logged


def test_a_new_store_on_a_file_with_a_bad_entry_takes_the_good_ones(tmp_path):
    path = tmp_path / "keys.json"
    write_keys(path, [{"name": "typo", "key_sha256": "not-a-hash"},
                      {"name": "dave", "key_sha256": auth.hash_key("sk-dave")}])
    assert auth.KeyStore(str(path)).lookup("sk-dave").name == "dave"


def test_the_key_is_checked_before_the_body(keys_file):
    gate = auth.Gate(auth.KeyStore(str(keys_file)))
    with pytest.raises(auth.KeyError401):
        check(gate, "sk-nobody", body="not even a mapping")
    with pytest.raises(auth.KeyError401):
        check(gate, None, path="/v1/files")


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/files"), ("POST", "/v1/batches"), ("POST", "/openai/deployments/secret/chat/completions"),
    ("POST", "/engines/secret/chat/completions"), ("POST", "/key/generate"), ("GET", "/v1/chat/completions"),
    ("POST", "/v1/responses"), ("POST", "/vllm/v1/completions"),
])
def test_only_the_offered_routes(keys_file, method, path):
    gate = auth.Gate(auth.KeyStore(str(keys_file)))
    with pytest.raises(auth.NotOffered404):
        check(gate, "sk-alice", method=method, path=path)


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/completions"), ("POST", "/completions/"), ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"), ("GET", "/v1/models/code"),
])
def test_offered_routes_pass(tmp_path, method, path):
    keys = tmp_path / "keys.json"
    write_keys(keys, [{"name": "eve", "key_sha256": auth.hash_key("sk-eve"), "models": ["code"]}])
    check(auth.Gate(auth.KeyStore(str(keys))), "sk-eve", method=method, path=path)


@pytest.mark.parametrize("body", [
    {"model": "code", "fallbacks": ["chat"]},
    {"model": "code", "fallbacks": [{"model": "chat"}]},
    {"model": "code", "context_window_fallbacks": [{"code": ["chat"]}]},
    {"model": "code,chat"},
])
def test_every_model_a_request_can_reach_is_checked(keys_file, body):
    gate = auth.Gate(auth.KeyStore(str(keys_file)))
    with pytest.raises(auth.Forbidden403, match="chat"):
        check(gate, "sk-alice", body=body)


@pytest.mark.parametrize("body", [
    {"model": "code", "api_base": "http://evil.example/v1"}, {"model": "code", "api_key": "x"},
    {"model": "code", "mock_response": "hi"}, {"model": "code", "aws_region_name": "x"},
    {"model": "code", "user_config": {"model_list": []}}, {"prompt": "no model"}, {"model": ""},
])
def test_fields_no_client_may_set_and_a_missing_model_are_400(keys_file, body):
    gate = auth.Gate(auth.KeyStore(str(keys_file)))
    with pytest.raises(auth.BadRequest400):
        check(gate, "sk-alice", body=body)


class DownRedis:
    async def eval(self, *args):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_redis_down_each_instance_takes_its_share_of_the_limit():
    """Fail-safe: 3 rpm over 2 instances is 1 per instance while Redis is away, never 3 per instance."""
    limits = [auth.SharedLimits(DownRedis(), instances=2) for _ in range(2)]
    allowed = 0
    for i in range(6):
        try:
            asyncio.run(limits[i % 2].hit_rpm("k", 3))
            allowed += 1
        except auth.TooMany429:
            pass
    assert allowed == 2
    assert limits[0].share(3) == 1 and limits[0].share(100) == 50 and limits[0].share(None) is None


class CountingRedis:
    """Redis's answer to the window script for one key (the molecule test runs the real one)."""

    def __init__(self):
        self.count = 0

    async def eval(self, script, numkeys, key, now, limit, member):
        if self.count >= limit:
            return 0
        self.count += 1
        return 1


def test_redis_up_the_whole_limit_is_shared_and_counted_locally_too():
    redis = CountingRedis()
    limits = auth.SharedLimits(redis, instances=2)
    for _ in range(3):
        asyncio.run(limits.hit_rpm("k", 3))
    with pytest.raises(auth.TooMany429):
        asyncio.run(limits.hit_rpm("k", 3))
    assert limits.share(3) == 3
    # Redis goes away within the minute: this instance has used its share already.
    limits.redis = DownRedis()
    with pytest.raises(auth.TooMany429):
        asyncio.run(limits.hit_rpm("k", 3))


def test_no_model_list_allows_all():
    user = auth.User(name="x", key_sha256="0")
    assert user.may_use("anything")


def test_only_a_forwarding_service_key_records_the_named_person():
    service = auth.parse_users({"users": [
        {"name": "open-webui", "key_sha256": auth.hash_key("sk-ui"), "forwards_user": True},
    ]})[auth.hash_key("sk-ui")]
    plain = auth.User(name="alice", key_sha256="0")
    headers = {"x-openwebui-user-email": "bob@example.org", "x-openwebui-user-id": "42"}
    assert auth.recorded_user(service, headers) == "bob@example.org"
    assert auth.recorded_user(service, {"x-openwebui-user-id": "42"}) == "42"
    assert auth.recorded_user(service, {}) == "open-webui"
    assert auth.recorded_user(plain, headers) == "alice"


def test_each_person_behind_the_chat_has_their_own_limit(tmp_path):
    keys = tmp_path / "keys.json"
    write_keys(keys, [{"name": "open-webui", "key_sha256": auth.hash_key("sk-ui"), "forwards_user": True,
                       "rpm": 100, "per_person_rpm": 2}])
    gate = auth.Gate(auth.KeyStore(str(keys)))
    heavy, light = {"x-openwebui-user-email": "heavy@example.org"}, {"x-openwebui-user-email": "light@example.org"}
    chat_body = {"model": "chat", "messages": []}
    for _ in range(2):
        check(gate, "sk-ui", path="/v1/chat/completions", method="POST", body=chat_body, headers=heavy)
    with pytest.raises(auth.TooMany429, match="2 requests per minute for each person using open-webui"):
        check(gate, "sk-ui", path="/v1/chat/completions", method="POST", body=chat_body, headers=heavy)
    check(gate, "sk-ui", path="/v1/chat/completions", method="POST", body=chat_body, headers=light)
    # Listing the models is not a completion: the chat does it on every page.
    for _ in range(5):
        check(gate, "sk-ui", path="/v1/models", method="GET", body=None, headers=heavy)
