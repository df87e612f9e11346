"""Key checks without any server: hashes, reload on change, expiry, revocation, models, rpm."""

import json
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


def test_disallowed_model_is_403_and_rpm_429(keys_file):
    now = [0.0]
    gate = auth.Gate(auth.KeyStore(str(keys_file)), auth.RpmWindow(clock=lambda: now[0]))
    with pytest.raises(auth.Forbidden403):
        gate.check("sk-alice", "chat")
    gate.check("sk-alice", "code")
    gate.check("sk-alice", "code")
    with pytest.raises(auth.TooMany429):
        gate.check("sk-alice", "code")
    now[0] = 61.0
    gate.check("sk-alice", "code")


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
