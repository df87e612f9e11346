"""The appliance's internal CA (role internal_ca) as the edge role uses it, made for real by
community.crypto on the controller (paths in a temporary directory): a CA on the controller only,
its key encrypted, constrained to the site's domain; a server certificate for both names, nothing
changed on a second run, a server certificate close to its end signed again, and one signed by an
older CA (the one that lived on the host) replaced."""
import grp
import os
import re
import subprocess

import pytest

from tests.edge.conftest import API_NAME, CHAT_NAME, HERE, run_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tasks set root as owner")
PASSPHRASE = "a-passphrase-from-the-vault"


def make(tmp_path, **extra):
    variables = {"appliance_site_name": "demo", "edge_chat_server_name": CHAT_NAME, "edge_api_server_name": API_NAME,
                 "appliance_domain": "demo.internal", "vault_edge_ca_passphrase": PASSPHRASE,
                 "internal_ca_controller_dir": str(tmp_path / "controller-ca"),
                 "internal_ca_host_dir": str(tmp_path / "ca"), "edge_tls_dir": str(tmp_path / "tls"),
                 "edge_www_dir": str(tmp_path / "www"),
                 "edge_ca_controller_path": str(tmp_path / "controller" / "ca.crt"),
                 **extra}
    proc = run_playbook(HERE / "internal_ca.yml", variables)
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)", proc.stdout)
    return int(recap.group(2)), proc


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One first run, shared by the tests that only read what it made: (directory, changed count)."""
    directory = tmp_path_factory.mktemp("internal-ca")
    changed, _ = make(directory)
    return directory, changed


def openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def test_ca_and_server_certificate(made):
    tmp_path, changed = made
    assert changed > 0
    ca, server = tmp_path / "controller-ca" / "ca.crt", tmp_path / "tls" / "server.crt"
    assert openssl("verify", "-CAfile", str(ca), str(server)).returncode == 0
    names = openssl("x509", "-in", str(server), "-noout", "-ext", "subjectAltName,extendedKeyUsage").stdout
    assert "DNS:%s" % API_NAME in names and "DNS:%s" % CHAT_NAME in names and "TLS Web Server Authentication" in names
    assert "CA:TRUE" in openssl("x509", "-in", str(ca), "-noout", "-ext", "basicConstraints").stdout
    # Readable by nginx's own user (nginx has no root process), nobody else.
    key_stat = (tmp_path / "tls" / "server.key").stat()
    assert oct(key_stat.st_mode & 0o777) == "0o640"
    assert grp.getgrgid(key_stat.st_gid).gr_name == "www-data"
    # Handed to the controller's clients, kept on the host and published for download: the certificate only.
    assert (tmp_path / "controller" / "ca.crt").read_text() == ca.read_text()
    assert (tmp_path / "www" / "ca.crt").read_text() == ca.read_text()
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt"]
    # The key really is the certificate's.
    pub_cert = openssl("x509", "-in", str(server), "-noout", "-pubkey").stdout
    pub_key = openssl("pkey", "-in", str(tmp_path / "tls" / "server.key"), "-pubout").stdout
    assert pub_cert == pub_key


def test_the_ca_key_is_on_the_controller_encrypted(made):
    key = made[0] / "controller-ca" / "ca.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert "BEGIN ENCRYPTED PRIVATE KEY" in key.read_text()
    assert openssl("pkey", "-in", str(key), "-passin", "pass:wrong", "-noout").returncode != 0
    assert openssl("pkey", "-in", str(key), "-passin", "pass:" + PASSPHRASE, "-noout").returncode == 0


def test_the_ca_signs_the_sites_domain_only_and_not_for_long(made, tmp_path):
    ca_dir = made[0] / "controller-ca"
    text = openssl("x509", "-in", str(ca_dir / "ca.crt"), "-noout", "-text").stdout
    assert re.search(r"X509v3 Name Constraints: critical\s+Permitted:\s+DNS:demo.internal", text), text
    days = openssl("x509", "-in", str(ca_dir / "ca.crt"), "-noout", "-checkend", str(1096 * 86400))
    assert days.returncode != 0, "the CA outlives three years"
    # Whoever holds the CA's key still cannot make a certificate that clients accept for another domain.
    for name, accepted in (("evil.example.com", False), ("other.demo.internal", True)):
        key, csr, crt = (tmp_path / ("rogue-%s.%s" % (name, ext)) for ext in ("key", "csr", "crt"))
        assert openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                       str(key), "-out", str(csr), "-subj", "/CN=" + name, "-addext",
                       "subjectAltName=DNS:" + name).returncode == 0
        signed = openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
                         "-CAkey", str(ca_dir / "ca.key"), "-passin", "pass:" + PASSPHRASE, "-out", str(crt),
                         "-days", "30", "-copy_extensions", "copy")
        assert signed.returncode == 0, signed.stderr
        verified = openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(crt))
        assert (verified.returncode == 0) == accepted, verified.stdout + verified.stderr
        if not accepted:
            assert "permitted subtree violation" in verified.stdout + verified.stderr


def test_a_server_name_outside_the_domain_is_refused_before_anything_is_made(tmp_path):
    proc = run_playbook(HERE / "internal_ca.yml", {
        "appliance_site_name": "demo", "appliance_domain": "demo.internal", "vault_edge_ca_passphrase": PASSPHRASE,
        "edge_chat_server_name": "chat.elsewhere.org", "edge_api_server_name": API_NAME,
        "internal_ca_controller_dir": str(tmp_path / "controller-ca"), "internal_ca_host_dir": str(tmp_path / "ca"),
        "edge_tls_dir": str(tmp_path / "tls"), "edge_www_dir": str(tmp_path / "www"),
        "edge_ca_controller_path": str(tmp_path / "controller" / "ca.crt")}, check=False)
    assert proc.returncode != 0
    assert "chat.elsewhere.org is outside the internal CA's permitted domains (demo.internal)" in proc.stdout
    assert not (tmp_path / "controller-ca").exists()


def test_a_certificate_from_the_ca_that_lived_on_the_host_is_replaced(tmp_path):
    """Older releases made the CA on the host: its key is removed and the server certificate re-signed."""
    (tmp_path / "ca").mkdir()
    (tmp_path / "tls").mkdir()
    old_key, old_crt = tmp_path / "ca" / "ca.key", tmp_path / "ca" / "ca.crt"
    assert openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                   str(old_key), "-out", str(old_crt), "-subj", "/CN=old host CA", "-days", "3650").returncode == 0
    server_key, server_csr = tmp_path / "tls" / "server.key", tmp_path / "server.csr"
    assert openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                   str(server_key), "-out", str(server_csr), "-subj", "/CN=" + API_NAME, "-addext",
                   "subjectAltName=DNS:%s,DNS:%s" % (API_NAME, CHAT_NAME)).returncode == 0
    assert openssl("x509", "-req", "-in", str(server_csr), "-CA", str(old_crt), "-CAkey", str(old_key), "-out",
                   str(tmp_path / "tls" / "server.crt"), "-days", "300", "-copy_extensions", "copy").returncode == 0
    changed, _ = make(tmp_path)
    assert changed > 0 and not old_key.exists()
    new_ca = tmp_path / "controller-ca" / "ca.crt"
    assert openssl("verify", "-CAfile", str(new_ca), str(tmp_path / "tls" / "server.crt")).returncode == 0
    assert old_crt.read_text() == new_ca.read_text()


def test_second_run_changes_nothing(made):
    tmp_path = made[0]
    before = (tmp_path / "tls" / "server.crt").read_text()
    changed, proc = make(tmp_path)
    assert changed == 0, proc.stdout
    assert (tmp_path / "tls" / "server.crt").read_text() == before


def test_server_certificate_near_its_end_is_signed_again(tmp_path):
    make(tmp_path)
    before = (tmp_path / "tls" / "server.crt").read_text()
    ca_before = (tmp_path / "controller-ca" / "ca.crt").read_text()
    changed, _ = make(tmp_path, internal_ca_cert_renew_days=400)  # longer than its 397 days
    assert changed > 0
    assert (tmp_path / "tls" / "server.crt").read_text() != before
    assert (tmp_path / "controller-ca" / "ca.crt").read_text() == ca_before
