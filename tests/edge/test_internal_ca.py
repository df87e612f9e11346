"""The edge role's internal CA, made for real by community.crypto on the controller (paths in a
temporary directory): a CA and a server certificate for both names, the CA handed back, nothing
changed on a second run, and a server certificate close to its end signed again."""
import os
import re
import subprocess

import pytest

from tests.edge.conftest import API_NAME, CHAT_NAME, HERE, run_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tasks set root as owner")


def make(tmp_path, **extra):
    variables = {"appliance_site_name": "demo", "edge_chat_server_name": CHAT_NAME, "edge_api_server_name": API_NAME,
                 "edge_ca_dir": str(tmp_path / "ca"), "edge_tls_dir": str(tmp_path / "tls"),
                 "edge_www_dir": str(tmp_path / "www"),
                 "edge_ca_controller_path": str(tmp_path / "controller" / "ca.crt"),
                 **extra}
    proc = run_playbook(HERE / "internal_ca.yml", variables)
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)", proc.stdout)
    return int(recap.group(2)), proc


def openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def test_ca_and_server_certificate(tmp_path):
    changed, _ = make(tmp_path)
    assert changed > 0
    ca, server = tmp_path / "ca" / "ca.crt", tmp_path / "tls" / "server.crt"
    assert openssl("verify", "-CAfile", str(ca), str(server)).returncode == 0
    names = openssl("x509", "-in", str(server), "-noout", "-ext", "subjectAltName,extendedKeyUsage").stdout
    assert "DNS:%s" % API_NAME in names and "DNS:%s" % CHAT_NAME in names and "TLS Web Server Authentication" in names
    assert "CA:TRUE" in openssl("x509", "-in", str(ca), "-noout", "-ext", "basicConstraints").stdout
    assert oct((tmp_path / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
    # Handed back to the controller, and published for download.
    assert (tmp_path / "controller" / "ca.crt").read_text() == ca.read_text()
    assert (tmp_path / "www" / "ca.crt").read_text() == ca.read_text()
    # The key really is the certificate's.
    pub_cert = openssl("x509", "-in", str(server), "-noout", "-pubkey").stdout
    pub_key = openssl("pkey", "-in", str(tmp_path / "tls" / "server.key"), "-pubout").stdout
    assert pub_cert == pub_key


def test_second_run_changes_nothing(tmp_path):
    make(tmp_path)
    before = (tmp_path / "tls" / "server.crt").read_text()
    changed, proc = make(tmp_path)
    assert changed == 0, proc.stdout
    assert (tmp_path / "tls" / "server.crt").read_text() == before


def test_server_certificate_near_its_end_is_signed_again(tmp_path):
    make(tmp_path)
    before = (tmp_path / "tls" / "server.crt").read_text()
    ca_before = (tmp_path / "ca" / "ca.crt").read_text()
    changed, _ = make(tmp_path, edge_internal_cert_renew_days=400)  # longer than its 397 days
    assert changed > 0
    assert (tmp_path / "tls" / "server.crt").read_text() != before
    assert (tmp_path / "ca" / "ca.crt").read_text() == ca_before
