"""Fixtures for the edge checks that need no container: the roles' templates rendered by
Ansible itself, a real nginx binary, certificates made with `cryptography`."""
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
PLAYBOOK = shutil.which("ansible-playbook", path=str(pathlib.Path(sys.executable).parent)) or "ansible-playbook"
CHAT_NAME = "chat.demo.internal"
API_NAME = "api.demo.internal"


def run_playbook(playbook, extra_vars, check=True):
    """Run a playbook on localhost with the given extra variables; return the completed process."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_LOCALHOST_WARNING="False")
    proc = subprocess.run([PLAYBOOK, "-i", "localhost,", str(playbook), "-e", json.dumps(extra_vars)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="session")
def render(tmp_path_factory):
    """Render nginx.conf, the onboarding page and the nftables ruleset with these variables.
    Each set of variables is rendered once a session (an Ansible run costs seconds); tests that
    change a rendered file put it back."""
    rendered = {}

    def _render(**extra):
        key = json.dumps(extra, sort_keys=True)
        if key not in rendered:
            out = tmp_path_factory.mktemp("rendered")
            base = {"out_dir": str(out), "appliance_site_name": "demo",
                    "edge_chat_server_name": CHAT_NAME, "edge_api_server_name": API_NAME}
            run_playbook(HERE / "render.yml", {**base, **extra})
            rendered[key] = out
        return rendered[key]

    return _render


@pytest.fixture(scope="session")
def nginx_bin(tmp_path_factory):
    """An nginx binary: $NGINX_BIN, the installed one, or Debian's package unpacked (not installed)."""
    for candidate in (os.environ.get("NGINX_BIN"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    cache = ROOT / ".cache" / "nginx-deb"
    binary = cache / "root" / "usr" / "sbin" / "nginx"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        download = subprocess.run(["apt-get", "download", "nginx"], cwd=cache, capture_output=True, text=True,
                                  check=False)
        debs = list(cache.glob("nginx_*.deb"))
        if download.returncode != 0 or not debs:
            pytest.skip("no nginx binary (set NGINX_BIN, or let apt-get download nginx work): "
                        + download.stderr[-300:])
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(cache / "root")], check=True)
    return str(binary)


def make_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def write_key(key, path):
    from cryptography.hazmat.primitives import serialization
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_cert(key, path, names=(CHAT_NAME, API_NAME), not_before=None, not_after=None, issuer_key=None,
              issuer_name=None, ca=False):
    """Write a PEM certificate for key, self-signed or signed by issuer_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA" if ca else names[0])])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - datetime.timedelta(days=1))
               .not_valid_after(not_after or now + datetime.timedelta(days=90))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def make_pki(d):
    """A test CA and a server certificate and key for the chat and API names, signed by it, in d."""
    d.mkdir()
    ca_key = make_key()
    ca_cert = make_cert(ca_key, d / "ca.crt", ca=True)
    key = make_key()
    write_key(key, d / "server.key")
    make_cert(key, d / "server.crt", issuer_key=ca_key, issuer_name=ca_cert.subject)
    return d
