"""appliance-bundle: build a site's offline bundle on a machine that can reach Debian's mirror.

    appliance-bundle --site demo --out build/bundle/demo \
        --wheelhouse build/wheelhouse/litellm-1.100.5 ... [--models build/models] \
        [--nvidia-debs DIR --kernel 6.1.0-28-amd64] [--debian-lock OLD_BUNDLE/debian-packages.lock]

The bundle directory:
    debian.tar                  signed flat apt repository (Debian's packages, NVIDIA's when given)
    llm-appliance-bundle.asc    its public key (the fingerprint is printed; pin it in the inventory)
    debian-packages.lock        name=version of each Debian package, to re-make the same bundle
    wheelhouse/<name>/          each component's wheels, as `make artefacts` made them
    models/<name>/              model weights (optional)
    manifest.json, SHA256SUMS   every file's size and SHA-256 (sha256sum -c SHA256SUMS checks a copy)
Built twice from the same pins (the lock, the wheelhouses, the models, the same key and commit),
the manifest is the same.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llm_appliance.bundle import BundleError, debian, repo

DISTRIBUTION = "debian-12"


def _timestamp(project: Path) -> int:
    """The build's one timestamp: SOURCE_DATE_EPOCH, else the project's last commit."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(["git", "-C", str(project), "log", "-1", "--format=%ct"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise BundleError("no build time: set SOURCE_DATE_EPOCH (seconds since 1970) or build from a git checkout")
    return int(result.stdout.strip())


def _role_driver_branch() -> str:
    """roles/nvidia_driver's default branch, read from its defaults (one line, no YAML parser needed)."""
    defaults = Path(__file__).resolve().parents[2] / "roles" / "nvidia_driver" / "defaults" / "main.yml"
    for line in defaults.read_text().splitlines() if defaults.exists() else []:
        if line.startswith("nvidia_driver_branch:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    return ""


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _add_tree(source: Path, target: Path) -> None:
    """A wheelhouse or model directory, its visible files only (no .complete markers)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            _link_or_copy(path, target / relative)


def _part(relative: Path) -> str:
    top = relative.parts[0]
    return "/".join(relative.parts[:2]) if top in ("wheelhouse", "models") and len(relative.parts) > 2 else (
        "debian" if top in ("debian.tar", repo.KEY_FILE_NAME, "debian-packages.lock") else top)


def write_manifest(bundle: Path, site: str, timestamp: int, repository: dict[str, object]) -> dict[str, object]:
    files = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle)
        if relative.as_posix() in ("manifest.json", "SHA256SUMS"):
            continue
        files.append({"path": relative.as_posix(), "size": path.stat().st_size, "sha256": debian.sha256_of(path)})
    parts: dict[str, dict[str, int]] = {}
    for entry in files:
        part = parts.setdefault(_part(Path(str(entry["path"]))), {"files": 0, "bytes": 0})
        part["files"] += 1
        part["bytes"] += int(str(entry["size"]))
    manifest = {
        "site": site, "distribution": DISTRIBUTION, "built_from_time": timestamp,
        "key_fingerprint": repository["key_fingerprint"],
        "parts": dict(sorted(parts.items())),
        "total_bytes": sum(p["bytes"] for p in parts.values()),
        "debian_packages": repository["packages"],
        "files": files,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (bundle / "SHA256SUMS").write_text("".join("%s  %s\n" % (f["sha256"], f["path"]) for f in files))
    return manifest


def build(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    out: Path = args.out
    project = Path(__file__).resolve().parents[2]
    timestamp = _timestamp(project)
    for wheelhouse in args.wheelhouse:
        if not (wheelhouse / ".complete").exists():
            raise BundleError("--wheelhouse %s is not a complete wheelhouse (no .complete marker): make it with "
                              "`make artefacts` (or artefacts-cuda) first" % wheelhouse)
    if args.nvidia_debs and not args.kernel:
        raise BundleError("--nvidia-debs needs --kernel: the GPU hosts' kernel release (uname -r, e.g. "
                          "6.1.0-28-amd64), whose headers DKMS builds the driver against")
    if args.nvidia_debs and not args.nvidia_branch:
        raise BundleError("--nvidia-debs needs --nvidia-branch: the site's nvidia_driver_branch (e.g. 580)")
    lock = None
    if args.debian_lock:
        lock = [line.strip() for line in args.debian_lock.read_text().splitlines() if line.strip()]
    nvidia_packages = []
    if args.nvidia_debs:
        controls = debian.read_controls(args.image, args.nvidia_debs)
        debian.check_nvidia_debs(args.nvidia_debs, args.nvidia_branch, controls)
        nvidia_packages = [debian.package(args.nvidia_debs / name, control, "nvidia")
                           for name, control in sorted(controls.items())]

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    work = args.cache / "work"
    packages = debian.fetch(args.image, args.cache / "debian", work,
                            debian.packages_to_install(args.kernel if args.nvidia_debs else None),
                            lock, args.nvidia_debs, args.debian_mirror, args.security_mirror)
    (staging / "debian-packages.lock").write_text(
        "".join("%s=%s\n" % (p.name, p.version) for p in packages))
    repository = repo.build_repository(staging / "debian.tar", args.site, packages + nvidia_packages,
                                       args.key_dir, timestamp)
    for wheelhouse in args.wheelhouse:
        _add_tree(wheelhouse, staging / "wheelhouse" / wheelhouse.name)
    if args.models:
        for model in sorted(p for p in args.models.iterdir() if p.is_dir()):
            _add_tree(model, staging / "models" / model.name)
    manifest = write_manifest(staging, args.site, timestamp, repository)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    manifest["build_seconds"] = round(time.monotonic() - started, 1)
    return manifest


def _size(n: int) -> str:
    return "%.1f MiB" % (n / 2**20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance-bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", required=True, help="site name (names the signing key and the manifest)")
    parser.add_argument("--out", type=Path, required=True, help="the bundle directory (replaced when whole)")
    parser.add_argument("--image", default=os.environ.get("MOLECULE_IMAGE", "llm-appliance/debian12-systemd:latest"),
                        help="a bare Debian 12 container image to resolve packages in (tools/build-test-image)")
    parser.add_argument("--wheelhouse", type=Path, action="append", default=[],
                        help="a wheelhouse made by `make artefacts` (repeat for each component)")
    parser.add_argument("--models", type=Path, help="a directory of model directories to carry (optional)")
    parser.add_argument("--nvidia-debs", type=Path, help="NVIDIA's driver packages for the pinned branch")
    parser.add_argument("--nvidia-branch", default=_role_driver_branch(),
                        help="the pinned driver branch, when the site sets nvidia_driver_branch "
                             "(default: the driver role's, %(default)s)")
    parser.add_argument("--kernel", help="the GPU hosts' kernel release, for its headers (with --nvidia-debs)")
    parser.add_argument("--debian-mirror", default="",
                        help="Debian mirror for bookworm and bookworm-updates (default: the image's, "
                             "APPLIANCE_DEBIAN_MIRROR when it was built)")
    parser.add_argument("--security-mirror", default="",
                        help="mirror of bookworm-security (default: debian-security beside --debian-mirror)")
    parser.add_argument("--debian-lock", type=Path, help="debian-packages.lock of an earlier bundle: same versions")
    parser.add_argument("--key-dir", type=Path, help="GnuPG home of the site's signing key "
                        "(default: bundle-keys/<site> beside --out's parent); keep it to sign later bundles")
    parser.add_argument("--cache", type=Path, help="download cache (default: bundle-cache beside --out's parent)")
    args = parser.parse_args(argv)
    base = args.out.resolve().parent.parent
    args.key_dir = args.key_dir or base / "bundle-keys" / args.site
    args.cache = args.cache or base / "bundle-cache"
    try:
        manifest = build(args)
    except BundleError as error:
        print("appliance-bundle: %s" % error, file=sys.stderr)
        return 2
    parts: dict[str, dict[str, int]] = manifest["parts"]  # type: ignore[assignment]
    print("bundle %s for %s: %s in %d files, built in %.0f s"
          % (args.out, args.site, _size(sum(p["bytes"] for p in parts.values())),
             sum(p["files"] for p in parts.values()), float(str(manifest["build_seconds"]))))
    for name, part in parts.items():
        print("  %-40s %6d files %12s" % (name, part["files"], _size(part["bytes"])))
    print("signing key fingerprint: %s\n  set appliance_bundle_key_fingerprint to it in the site's inventory"
          % manifest["key_fingerprint"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
