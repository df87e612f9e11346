"""OpenPGP fingerprints without gpg (llm_appliance/openpgp.py), checked against gpg itself
and against NVIDIA's CUDA repository key (fixture: tests/fixtures/README.md)."""
import base64
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from llm_appliance.openpgp import dearmor, key_fingerprints, packets

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
NVIDIA_KEY = FIXTURES / "nvidia-cuda-3bf863cc.pub"
NVIDIA_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"


def gpg_key(directory):
    """A key made by gpg in its own GNUPGHOME: (armored text, binary, primary fprs, subkey fprs)."""
    env = dict(os.environ, GNUPGHOME=str(directory))
    gpg = ["gpg", "--batch", "--no-tty", "--passphrase", "", "--pinentry-mode", "loopback"]

    def run(*args):
        return subprocess.run(gpg + list(args), env=env, capture_output=True, check=True, timeout=120).stdout

    try:
        # An RSA primary (its packet needs a two-octet length) and a Curve25519 subkey.
        run("--quick-gen-key", "Fingerprint Test <fingerprint-test@example.invalid>", "rsa2048", "sign", "never")
        primary = [line.split(":")[9] for line in run("--with-colons", "--fingerprint").decode().splitlines()
                   if line.startswith("fpr:")][0]
        run("--quick-add-key", primary, "cv25519", "encr", "never")
        armored = run("--armor", "--export", primary).decode("ascii")
        binary = run("--export", primary)
        listing = run("--with-colons", "--fingerprint", primary).decode().splitlines()
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, check=False, timeout=30)
    kinds, fingerprints = [], {"pub": [], "sub": []}
    for line in listing:
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            kinds.append(fields[0])
        elif fields[0] == "fpr":
            fingerprints[kinds[-1]].append(fields[9])
    return armored, binary, fingerprints["pub"], fingerprints["sub"]


@pytest.fixture(scope="module")
def generated_key():
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed: no key can be generated to compare with")
    home = tempfile.mkdtemp(prefix="gpg-")  # short path: gpg-agent's socket lives there
    os.chmod(home, 0o700)
    try:
        yield gpg_key(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def new_format(tag, body, encoding):
    """One packet in the new format with the given length encoding."""
    header = bytes([0xC0 | tag])
    if encoding == "one":
        assert len(body) < 192
        return header + bytes([len(body)]) + body
    if encoding == "two":
        assert 192 <= len(body) <= 8383
        value = len(body) - 192
        return header + bytes([(value >> 8) + 192, value & 0xFF]) + body
    if encoding == "five":
        return header + b"\xff" + len(body).to_bytes(4, "big") + body
    if encoding == "partial":  # 32-octet chunks, then the rest with a one- or five-octet length
        out, rest = header, body
        while len(rest) > 32:
            out, rest = out + bytes([224 + 5]) + rest[:32], rest[32:]
        return out + b"\xff" + len(rest).to_bytes(4, "big") + rest
    raise AssertionError(encoding)


def old_format(tag, body, size):
    """One packet in the old format: 1-, 2- or 4-octet length, or None for indeterminate."""
    if size is None:
        return bytes([0x80 | (tag << 2) | 3]) + body
    length_type = {1: 0, 2: 1, 4: 2}[size]
    return bytes([0x80 | (tag << 2) | length_type]) + len(body).to_bytes(size, "big") + body


def test_nvidia_cuda_repository_key_gives_the_pinned_fingerprint():
    if not NVIDIA_KEY.exists():
        pytest.skip("tests/fixtures/nvidia-cuda-3bf863cc.pub is absent: NVIDIA's key text could not be obtained "
                    "from a public source when this test was written (see tests/fixtures/README.md)")
    result = key_fingerprints(NVIDIA_KEY.read_text())
    assert result == {"primary": [NVIDIA_FINGERPRINT], "subkeys": []}
    assert key_fingerprints(NVIDIA_KEY.read_bytes()) == result


def test_generated_key_armored_matches_gpg(generated_key):
    armored, _, primary, subkeys = generated_key
    assert len(primary) == 1 and len(subkeys) == 1
    assert key_fingerprints(armored) == {"primary": primary, "subkeys": subkeys}
    assert key_fingerprints(armored.encode("ascii")) == {"primary": primary, "subkeys": subkeys}


def test_generated_key_binary_matches_gpg(generated_key):
    _, binary, primary, subkeys = generated_key
    assert key_fingerprints(binary) == {"primary": primary, "subkeys": subkeys}
    assert dearmor(generated_key[0]) == binary


def test_every_length_encoding_gives_the_same_fingerprints(generated_key):
    _, binary, primary, subkeys = generated_key
    parsed = list(packets(binary))
    assert [tag for _, tag, _ in parsed][:3] == [6, 13, 2]
    assert max(len(body) for _, _, body in parsed) >= 192  # the RSA key packet
    expected = {"primary": primary, "subkeys": subkeys}
    for encoding in ("two_or_one", "five", "partial"):
        data = b"".join(new_format(tag, body,
                                   encoding if encoding != "two_or_one" else ("one" if len(body) < 192 else "two"))
                        for _, tag, body in parsed)
        assert key_fingerprints(data) == expected, encoding
    for size in (1, 2, 4):
        if size == 1:
            data = b"".join(old_format(tag, body, 1 if len(body) < 256 else 2) for _, tag, body in parsed)
        else:
            data = b"".join(old_format(tag, body, size) for _, tag, body in parsed)
        assert key_fingerprints(data) == expected, size
    # Indeterminate length: the last packet runs to the end of the data.
    data = (b"".join(old_format(tag, body, 4) for _, tag, body in parsed[:-1])
            + old_format(parsed[-1][1], parsed[-1][2], None))
    assert key_fingerprints(data) == expected


def test_armor_headers_crlf_and_surrounding_text(generated_key):
    armored, _, primary, _ = generated_key
    lines = armored.strip().splitlines()
    assert lines[0] == "-----BEGIN PGP PUBLIC KEY BLOCK-----"
    body = [line for line in lines[1:-1] if line and ": " not in line]
    text = "\r\n".join(["Here is our key:", "", lines[0], "Version: GnuPG v2.0.22 (GNU/Linux)",
                        "Comment: test", ""] + body + [lines[-1], "Thanks."]) + "\r\n"
    assert key_fingerprints(text)["primary"] == primary
    # No headers and no blank line before the body is accepted too.
    assert key_fingerprints("\n".join([lines[0]] + body + [lines[-1]]))["primary"] == primary


@pytest.mark.parametrize("data, message", [
    ("", "empty input"),
    (" \n", "empty input"),
    ("hello world\n", "no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line"),
    ("<html><body>404 Not Found</body></html>", "no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line"),
    (b"", "empty input"),
    (b"\x00\x01\x02garbage", "nor ASCII-armored text|no '-----BEGIN"),
    (b"\xff\xfe\x00", "reserved tag 0|truncated"),
    ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!not base64!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
     "not valid base64"),
    ("-----BEGIN PGP SIGNATURE-----\n\niQIz\n-----END PGP SIGNATURE-----\n",
     "PGP SIGNATURE, not a PGP PUBLIC KEY BLOCK"),
    ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQ==\n-----END PGP PRIVATE KEY BLOCK-----\n", "PGP PRIVATE KEY BLOCK"),
    ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQIN\n", "no END line"),
    (new_format(11, b"b\x00\x00\x00\x00\x00hello", "one"), r"tag 11 \(literal data\), which does not belong"),
    (old_format(5, b"\x04" + b"\x00" * 20, 1), "secret key material"),
    (old_format(13, b"someone", 1), "comes before any public key packet"),
    (old_format(14, b"\x04" + b"\x00" * 20, 1), "comes before any primary public key"),
    (old_format(2, b"\x04\x00", 1), "comes before any public key packet"),
    (old_format(6, b"\x04\x00", 1), "too short for a version 4 key"),
])
def test_not_a_public_key(data, message):
    with pytest.raises(ValueError, match=message):
        key_fingerprints(data)


def test_truncated_binary_key(generated_key):
    _, binary, _, _ = generated_key
    for cut in (1, 2, 10, len(binary) // 2, len(binary) - 1):
        with pytest.raises(ValueError, match="truncated"):
            key_fingerprints(binary[:cut])


def test_truncated_armored_key(generated_key):
    armored, binary, _, _ = generated_key
    short = base64.b64encode(binary[:len(binary) // 2]).decode("ascii")
    text = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n%s\n-----END PGP PUBLIC KEY BLOCK-----\n" % short
    with pytest.raises(ValueError, match="truncated"):
        key_fingerprints(text)
    with pytest.raises(ValueError, match="no END line"):
        key_fingerprints(armored[:len(armored) // 2])


@pytest.mark.parametrize("version, message", [
    (6, "version 6 key \\(RFC 9580\\).*not supported"),
    (5, "version 5 key \\(LibrePGP\\).*not supported"),
    (3, "obsolete version 3 key"),
    (9, "unknown key version 9"),
])
def test_other_key_versions_are_refused(version, message):
    body = bytes([version]) + b"\x65\x00\x00\x00" + b"\x1b" + b"\x00" * 40
    with pytest.raises(ValueError, match=message):
        key_fingerprints(new_format(6, body, "one"))
    v4_primary = new_format(6, b"\x04\x65\x00\x00\x00\x16" + b"\x00" * 10, "one")
    with pytest.raises(ValueError, match="subkey packet at offset %d" % len(v4_primary)):
        key_fingerprints(v4_primary + new_format(14, body, "one"))


def test_v4_fingerprint_is_sha1_over_the_framed_body():
    body = b"\x04\x65\x00\x00\x00\x16" + bytes(range(40))
    expected = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    for data in (old_format(6, body, 1), new_format(6, body, "five")):
        assert key_fingerprints(data) == {"primary": [expected], "subkeys": []}
    marker = new_format(10, b"PGP", "one")
    assert key_fingerprints(marker + old_format(6, body, 2))["primary"] == [expected]


def test_filter_adapter(generated_key):
    pytest.importorskip("ansible")
    from ansible.errors import AnsibleFilterError

    from filter_plugins.openpgp import FilterModule
    openpgp_fingerprints = FilterModule().filters()["openpgp_fingerprints"]
    armored, _, primary, subkeys = generated_key
    assert openpgp_fingerprints(armored) == {"primary": primary, "subkeys": subkeys}
    with pytest.raises(AnsibleFilterError,
                       match="openpgp_fingerprints: no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line"):
        openpgp_fingerprints("<html>Not Found</html>")
