"""The nvidia_driver role's repository key check, run for real on this machine (connection local,
tests/nvidia_repo_key.yml): a key whose fingerprint is not the pinned one stops the run before
anything is written; the pinned key is written to the keyring path. The keyring path is in a
temporary directory instead of /etc/apt/keyrings."""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
NVIDIA_KEY = REPO / "tests/fixtures/nvidia-cuda-3bf863cc.pub"
NVIDIA_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"


def run_key_play(tmp_path, *args, **extra_vars):
    extra = {"nvidia_driver_keyring_path": str(tmp_path / "keyrings/nvidia-cuda.asc"), **extra_vars}
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="False", no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(REPO / "tests/nvidia_repo_key.yml"), "-i", "localhost,",
         "-e", json.dumps(extra), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    return result, result.stdout + result.stderr


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    """(path, fingerprint) of a key that gpg makes here: a stand-in for a wrong or tampered key."""
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed: no wrong key can be generated")
    home = tempfile.mkdtemp(prefix="gpg-")  # short path: gpg-agent's socket lives there
    os.chmod(home, 0o700)
    env = dict(os.environ, GNUPGHOME=home)
    gpg = ["gpg", "--batch", "--no-tty", "--passphrase", "", "--pinentry-mode", "loopback"]
    try:
        new_key = ["--quick-gen-key", "Not NVIDIA <not-nvidia@example.invalid>", "default", "default", "never"]
        subprocess.run(gpg + new_key, env=env, capture_output=True, check=True, timeout=120)
        listing = subprocess.run(gpg + ["--with-colons", "--fingerprint"], env=env, capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        fingerprint = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")][0]
        path = tmp_path_factory.mktemp("other-key") / "other.asc"
        path.write_bytes(subprocess.run(gpg + ["--armor", "--export", fingerprint], env=env, capture_output=True,
                                        check=True, timeout=60).stdout)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False, timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    return path, fingerprint


@pytest.fixture()
def key_server(other_key):
    """An HTTP server on 127.0.0.1 serving the other key as /repos/debian12/x86_64/3bf863cc.pub."""
    root = other_key[0].parent / "www"
    (root / "repos/debian12/x86_64").mkdir(parents=True, exist_ok=True)
    shutil.copy(other_key[0], root / "repos/debian12/x86_64/3bf863cc.pub")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/repos/debian12/x86_64/" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_wrong_key_stops_the_run_and_writes_nothing(tmp_path, other_key):
    path, fingerprint = other_key
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(path))
    assert result.returncode != 0, output
    assert "The repository key from %s is not the pinned key." % path in output
    assert "Found: primary key fingerprint %s" % fingerprint in output
    assert "(subkeys " in output  # gpg's default key has an encryption subkey
    assert "Expected: %s (nvidia_driver_repo_key_fingerprint)" % NVIDIA_FINGERPRINT in output
    assert "correct nvidia_driver_repo_key_fingerprint" in output
    assert "Nothing was changed on the host." in output
    assert "Write the verified repository key" not in output
    assert not (tmp_path / "keyrings").exists()


def test_wrong_key_in_check_mode_fails_the_same_way(tmp_path, other_key):
    path, fingerprint = other_key
    result, output = run_key_play(tmp_path, "--check", "--diff", nvidia_driver_repo_key_file=str(path))
    assert result.returncode != 0, output
    assert "Found: primary key fingerprint %s" % fingerprint in output
    assert not (tmp_path / "keyrings").exists()


def test_wrong_key_from_the_repository_url_stops_the_run(tmp_path, other_key, key_server):
    """The URL case: the host fetches <repository URL>3bf863cc.pub with uri (also in check mode)."""
    url = key_server + "3bf863cc.pub"
    for args in ((), ("--check", "--diff")):
        result, output = run_key_play(tmp_path, *args, nvidia_driver_repo_key_source=url)
        assert result.returncode != 0, output
        assert "The repository key from %s is not the pinned key." % url in output
        assert "Found: primary key fingerprint %s" % other_key[1] in output
        assert "Nothing was changed on the host." in output
        assert not (tmp_path / "keyrings").exists()
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_source=key_server + "missing.pub")
    assert result.returncode != 0, output
    assert "Could not read NVIDIA's repository key from %smissing.pub" % key_server in output
    assert "HTTP Error 404" in output
    assert not (tmp_path / "keyrings").exists()
    pinned, output = run_key_play(tmp_path, nvidia_driver_repo_key_source=url,
                                  nvidia_driver_repo_key_fingerprint=other_key[1])
    assert pinned.returncode == 0, output
    assert (tmp_path / "keyrings/nvidia-cuda.asc").read_text() == other_key[0].read_text().strip() + "\n"


def test_pinned_key_is_written(tmp_path, other_key):
    """The success path with a key pinned for the test (lower case and spaces, as people paste it)."""
    path, fingerprint = other_key
    pin = " ".join(fingerprint[i:i + 4] for i in range(0, 40, 4)).lower()
    check, output = run_key_play(tmp_path, "--check", "--diff", nvidia_driver_repo_key_file=str(path),
                                 nvidia_driver_repo_key_fingerprint=pin)
    assert check.returncode == 0, output
    assert "-----BEGIN PGP PUBLIC KEY BLOCK-----" in output  # the diff of the file it would write
    assert not (tmp_path / "keyrings").exists()
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(path),
                                  nvidia_driver_repo_key_fingerprint=pin)
    assert result.returncode == 0, output
    assert "Repository key %s from %s matches the pin." % (fingerprint, path) in output
    keyring = tmp_path / "keyrings/nvidia-cuda.asc"
    assert keyring.read_text() == path.read_text().strip() + "\n"
    assert oct(keyring.stat().st_mode & 0o777) == "0o644"
    again, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(path),
                                 nvidia_driver_repo_key_fingerprint=pin)
    assert again.returncode == 0 and "changed=0" in output, output


def test_short_pin_is_refused(tmp_path, other_key):
    path, fingerprint = other_key
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(path),
                                  nvidia_driver_repo_key_fingerprint=fingerprint[-8:])
    assert result.returncode != 0, output
    assert "nvidia_driver_repo_key_fingerprint is '%s': it must be the key's" % fingerprint[-8:] in output
    assert not (tmp_path / "keyrings").exists()


def test_not_a_key_is_refused(tmp_path):
    page = tmp_path / "error.html"
    page.write_text("<html><body>404 Not Found</body></html>\n")
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(page))
    assert result.returncode != 0, output
    assert "Could not read NVIDIA's repository key from %s" % page in output
    assert "openpgp_fingerprints: no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line" in output
    assert "Nothing was changed on the host." in output
    assert not (tmp_path / "keyrings").exists()


def test_nvidia_key_passes_the_default_pin(tmp_path):
    if not NVIDIA_KEY.exists():
        pytest.skip("tests/fixtures/nvidia-cuda-3bf863cc.pub is absent: NVIDIA's key text could not be obtained "
                    "from a public source when this test was written (see tests/fixtures/README.md)")
    result, output = run_key_play(tmp_path, nvidia_driver_repo_key_file=str(NVIDIA_KEY))
    assert result.returncode == 0, output
    assert "Repository key %s from %s matches the pin." % (NVIDIA_FINGERPRINT, NVIDIA_KEY) in output
    assert (tmp_path / "keyrings/nvidia-cuda.asc").read_text() == NVIDIA_KEY.read_text().strip() + "\n"
