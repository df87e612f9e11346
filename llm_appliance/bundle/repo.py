"""A flat apt repository, signed with the bundle's own key, packed as a reproducible tar.

Flat layout (apt's "flat repository format"): Packages, Packages.gz, Release, InRelease and
Release.gpg at the top, the .deb files under pool/. Hosts name it in one line:
    deb [signed-by=/etc/apt/keyrings/llm-appliance-bundle.asc] file:/var/lib/llm-appliance/bundle/debian ./

Reproducible: entries sorted, gzip and tar times set to the build's timestamp, owners 0, and the
signatures made by gpg at that same (faked) time with the same key. Ed25519 signatures are
deterministic (RFC 8032), so the same inputs sign to the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

from llm_appliance.bundle import BundleError
from llm_appliance.bundle.debian import DebianPackage, digests_of

KEY_FILE_NAME = "llm-appliance-bundle.asc"


def _gpg(home: Path, *args: str, input_text: str | None = None) -> str:
    result = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty", *args],
                            input=input_text, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError("gpg %s failed: %s" % (" ".join(args[:2]), result.stderr.strip()[-800:]))
    return result.stdout


def signing_key(home: Path, site: str) -> tuple[str, int]:
    """The site's bundle key (made on first use, kept in home): fingerprint and creation time."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    listing = _gpg(home, "--with-colons", "--list-secret-keys")
    if "\nfpr:" not in "\n" + listing:
        _gpg(home, "--passphrase", "", "--quick-generate-key",
             "llm-appliance bundle (%s)" % site, "ed25519", "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-secret-keys")
    lines = [line.split(":") for line in listing.splitlines()]
    secret = next(f for f in lines if f[0] == "sec")
    fingerprint = next(f[9] for f in lines if f[0] == "fpr")
    return fingerprint, int(secret[5])


def export_key(home: Path, fingerprint: str) -> str:
    return _gpg(home, "--armor", "--export-options", "export-minimal", "--export", fingerprint)


def _hash_lines(files: dict[str, bytes], algorithm: str) -> str:
    return "".join(" %s %d %s\n" % (hashlib.new(algorithm, data).hexdigest(), len(data), name)
                   for name, data in sorted(files.items()))


def packages_index(packages: list[DebianPackage], pool_names: dict[Path, str],
                   digests: dict[Path, dict[str, str]]) -> bytes:
    """The Packages file: each control record plus where the file is and its size and hashes."""
    stanzas = []
    for p in packages:
        stanzas.append(p.control.rstrip("\n") + "\nFilename: pool/%s\nSize: %d\nMD5sum: %s\nSHA256: %s\n"
                       % (pool_names[p.path], p.path.stat().st_size, digests[p.path]["md5"],
                          digests[p.path]["sha256"]))
    return "\n".join(stanzas).encode()


def release_file(site: str, timestamp: int, indexes: dict[str, bytes]) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(timestamp))
    return ("Origin: llm-appliance\nLabel: llm-appliance bundle %s\nSuite: bundle\nCodename: bundle\n"
            "Date: %s\nArchitectures: amd64 arm64 all\n"
            "MD5Sum:\n%sSHA256:\n%s" % (site, date, _hash_lines(indexes, "md5"), _hash_lines(indexes, "sha256")))


def sign(home: Path, fingerprint: str, timestamp: int, release: str) -> tuple[str, str]:
    """InRelease (clear-signed) and Release.gpg (detached), made at the build's time."""
    common = ["--faked-system-time", "%d!" % timestamp, "--local-user", fingerprint, "--digest-algo", "SHA512"]
    in_release = _gpg(home, *common, "--clearsign", "--output", "-", input_text=release)
    detached = _gpg(home, *common, "--armor", "--detach-sign", "--output", "-", input_text=release)
    return in_release, detached


def write_tar(target: Path, members: list[tuple[str, bytes | Path]], timestamp: int) -> None:
    """A tar whose bytes depend only on the members: sorted, owner 0, mode 0644, one mtime."""
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for directory in sorted({os.path.dirname(name) for name, _ in members} - {""}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, timestamp
            tar.addfile(info)
        for name, content in sorted(members, key=lambda m: m[0]):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, timestamp
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with content.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    partial.replace(target)


def build_repository(target: Path, site: str, packages: list[DebianPackage], key_home: Path,
                     timestamp: int) -> dict[str, object]:
    """Writes target (debian.tar) and returns what the manifest says of it."""
    try:
        return _build_repository(target, site, packages, key_home, timestamp)
    finally:
        # gpg starts an agent for the key's home; it is not needed once the repository is signed.
        subprocess.run(["gpgconf", "--homedir", str(key_home), "--kill", "gpg-agent"], capture_output=True, check=False)


def _build_repository(target: Path, site: str, packages: list[DebianPackage], key_home: Path,
                      timestamp: int) -> dict[str, object]:
    fingerprint, key_created = signing_key(key_home, site)
    # Signatures may not predate their key: gpgv refuses them.
    signed_at = max(timestamp, key_created)
    # Each package read once for both hashes the index carries.
    digests = {p.path: digests_of(p.path, "md5", "sha256") for p in packages}
    pool_names = {p.path: p.path.name for p in packages}
    if len(set(pool_names.values())) != len(pool_names):
        raise BundleError("two packages share a file name in the pool: %s" % sorted(pool_names.values()))
    index = packages_index(packages, pool_names, digests)
    index_gz = gzip.compress(index, compresslevel=9, mtime=0)
    release = release_file(site, signed_at, {"Packages": index, "Packages.gz": index_gz})
    in_release, detached = sign(key_home, fingerprint, signed_at, release)
    public_key = export_key(key_home, fingerprint)
    members: list[tuple[str, bytes | Path]] = [
        ("Packages", index), ("Packages.gz", index_gz), ("Release", release.encode()),
        ("InRelease", in_release.encode()), ("Release.gpg", detached.encode()),
        (KEY_FILE_NAME, public_key.encode()),
    ]
    members += [("pool/" + pool_names[p.path], p.path) for p in packages]
    write_tar(target, members, signed_at)
    (target.parent / KEY_FILE_NAME).write_text(public_key)
    return {
        "key_fingerprint": fingerprint,
        "signed_at": signed_at,
        "packages": [{"name": p.name, "version": p.version, "architecture": p.architecture, "origin": p.origin,
                      "file": "pool/" + pool_names[p.path], "size": p.path.stat().st_size,
                      "sha256": digests[p.path]["sha256"]} for p in packages],
    }

