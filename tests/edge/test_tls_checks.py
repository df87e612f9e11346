"""The edge role refuses a bad operator certificate on the controller, before nginx is touched:
a key that is not the certificate's, an expired certificate, one not yet valid, one that does
not name the chat and the API, a certificate given without its key. Real community.crypto."""
import datetime

import pytest

from tests.edge.conftest import HERE, make_cert, make_key, run_playbook, write_key

NOW = datetime.datetime.now(datetime.UTC)


def validate(cert, key):
    return run_playbook(HERE / "validate.yml", {"edge_tls_cert_file": str(cert) if cert else "",
                                                "edge_tls_key_file": str(key) if key else ""}, check=False)


@pytest.fixture()
def key_file(tmp_path):
    key = make_key()
    write_key(key, tmp_path / "server.key")
    return key, tmp_path / "server.key"


def test_matching_valid_certificate_passes(tmp_path, key_file):
    key, path = key_file
    make_cert(key, tmp_path / "server.crt")
    result = validate(tmp_path / "server.crt", path)
    assert result.returncode == 0, result.stdout


def test_wildcard_certificate_passes(tmp_path, key_file):
    key, path = key_file
    make_cert(key, tmp_path / "server.crt", names=("*.demo.internal",))
    result = validate(tmp_path / "server.crt", path)
    assert result.returncode == 0, result.stdout


def test_key_of_another_certificate_is_refused(tmp_path, key_file):
    _, path = key_file
    make_cert(make_key(), tmp_path / "server.crt")
    result = validate(tmp_path / "server.crt", path)
    assert result.returncode != 0
    assert "is not the key of" in result.stdout
    assert "nginx was not touched" in result.stdout


@pytest.mark.parametrize("validity", [
    {"not_before": NOW - datetime.timedelta(days=400), "not_after": NOW - datetime.timedelta(days=1)},
    {"not_after": NOW + datetime.timedelta(days=2)},  # inside the renewal margin
    {"not_before": NOW + datetime.timedelta(days=3)},
], ids=["expired", "expiring-within-the-margin", "not-yet-valid"])
def test_certificate_outside_its_validity_is_refused(tmp_path, key_file, validity):
    key, path = key_file
    make_cert(key, tmp_path / "server.crt", **validity)
    result = validate(tmp_path / "server.crt", path)
    assert result.returncode != 0
    assert "must be valid now" in result.stdout


def test_certificate_for_other_names_is_refused(tmp_path, key_file):
    key, path = key_file
    make_cert(key, tmp_path / "server.crt", names=("www.example.org",))
    result = validate(tmp_path / "server.crt", path)
    assert result.returncode != 0
    assert "does not cover chat.demo.internal" in result.stdout


def test_certificate_without_key_is_refused(tmp_path, key_file):
    key, _ = key_file
    make_cert(key, tmp_path / "server.crt")
    result = validate(tmp_path / "server.crt", None)
    assert result.returncode != 0
    assert "Give both edge_tls_cert_file and edge_tls_key_file" in result.stdout
