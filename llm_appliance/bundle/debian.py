"""The Debian side of the offline bundle: which packages, resolved and downloaded in a bare Debian
container (the distribution's own apt does the resolving), and their control records.

The container is the test image (tools/build-test-image): a minimal Debian 12 with systemd and
Python, what a bare appliance host has. Three sets are fetched into one download cache:
- what `apt-get install` of the roles' packages would fetch on such a host, recommends included,
  as the roles install them (python3-pip's recommends bring the C compiler Triton needs);
- the whole Depends/Pre-Depends closure of those packages, installed ones too, so that a host
  made from an older point release can upgrade a library a package needs;
- with NVIDIA's driver packages (a directory the operator supplies), their Debian dependencies,
  DKMS and the headers of the GPU hosts' kernel.
With a lock file (name=version lines from an earlier bundle) exactly those versions are fetched,
nothing resolved: the same pins give the same packages.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llm_appliance.bundle import BundleError

# What the roles install with apt (their tasks name the same packages; tests/unit/test_bundle.py
# checks that every apt task's packages are here). postgresql-15: roles/postgresql's default.
ROLE_PACKAGES = {
    "base": ["acl", "chrony", "curl", "jq", "python3-venv", "python3-pip", "rsync", "tar", "unzip"],
    "edge": ["nginx", "logrotate", "python3-cryptography", "curl"],
    "internal_ca": ["python3-cryptography"],
    "firewall": ["nftables"],
    "litellm": ["redis-server"],
    "postgresql": ["postgresql-15", "postgresql-client-15", "python3-psycopg2"],
    "nvidia_driver": ["ca-certificates"],
    "monitoring": ["prometheus", "prometheus-alertmanager"],
    "monitoring_exporters": ["prometheus-node-exporter", "prometheus-nginx-exporter", "prometheus-postgres-exporter",
                             "prometheus-redis-exporter"],
}
# With NVIDIA's packages: what roles/nvidia_driver/vars/Debian-12.yml installs besides them.
NVIDIA_PREREQUISITES = ["dkms"]

_CONTAINER_SCRIPT = r"""
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cache=/bundle/cache
mkdir -p "$cache/partial"
# The release with its point updates and security fixes: what a maintained host runs. The mirror
# is the image's own unless one is given.
mirror=${BUNDLE_MIRROR:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)}
security=${BUNDLE_SECURITY_MIRROR:-${mirror%/debian}/debian-security}
cat >/etc/apt/sources.list <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
apt-get update -qq
# apt-get download leaves out of --print-uris what the current directory already holds.
cd "$cache"
wanted=/bundle/work/wanted
: >"$wanted"
if [ -s /bundle/work/lock ]; then
  # Exactly the pinned versions.
  (cd /tmp && xargs -a /bundle/work/lock apt-get download -qq --print-uris) | awk '{print $2}' >>"$wanted"
  xargs -a /bundle/work/lock apt-get download -qq
else
  read -r -a packages </bundle/work/packages
  local_debs=()
  if [ -d /bundle/nvidia ]; then
    while IFS= read -r -d '' f; do local_debs+=("$f"); done \
      < <(find /bundle/nvidia -maxdepth 1 -name '*.deb' -print0 | sort -z)
  fi
  # What a bare host would fetch: recommends included, as the roles install.
  apt-get install -y -qq --download-only --print-uris "${packages[@]}" "${local_debs[@]}" \
    | awk '/^\x27(https?|ftp):/ {print $2}' >>"$wanted"  # the operator's local files are added apart
  apt-get install -y -qq --download-only -o Dir::Cache::archives="$cache" "${packages[@]}" "${local_debs[@]}" >/dev/null
  # The Depends closure, installed packages included; virtual names (<...>) have no file.
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${packages[@]}" \
    | grep -v '^ ' | grep -v '^<' | sort -u >/bundle/work/closure
  (cd /tmp && xargs -a /bundle/work/closure apt-get download -qq --print-uris) | awk '{print $2}' >>"$wanted"
  xargs -a /bundle/work/closure apt-get download -qq
fi
sort -u -o "$wanted" "$wanted"
# Each package's control record, read by dpkg itself.
mkdir -p /bundle/work/control
while IFS= read -r f; do
  dpkg-deb --field "$cache/$f" >"/bundle/work/control/$f.control"
done <"$wanted"
chown -R "$BUNDLE_OWNER" /bundle/cache /bundle/work
"""


@dataclass(frozen=True)
class DebianPackage:
    path: Path          # the .deb in the download cache
    control: str        # its control record, as dpkg-deb --field prints it
    name: str
    version: str
    architecture: str
    origin: str         # "debian" or "nvidia"


def packages_to_install(kernel: str | None = None) -> list[str]:
    names = sorted({p for packages in ROLE_PACKAGES.values() for p in packages})
    if kernel:
        names += NVIDIA_PREREQUISITES + ["linux-headers-" + kernel]
    return names


def control_field(control: str, field: str) -> str:
    match = re.search(r"^%s:[ \t]*(.*)$" % re.escape(field), control, re.MULTILINE)
    return match.group(1).strip() if match else ""


def check_nvidia_debs(directory: Path, branch: str, controls: dict[str, str]) -> list[str]:
    """Refuse NVIDIA packages of another driver branch than the pinned one; returns the names.

    controls: file name -> control record of each .deb in directory.
    """
    if not controls:
        raise BundleError("--nvidia-debs %s holds no .deb files: copy NVIDIA's driver packages for branch %s "
                          "(nvidia-driver-pinning-%s, nvidia-open or cuda-drivers, and their dependencies) there"
                          % (directory, branch, branch))
    names = []
    wrong = []
    for file_name, control in sorted(controls.items()):
        name, version = control_field(control, "Package"), control_field(control, "Version")
        names.append(name)
        # Driver packages carry the branch as their upstream version's first part (580.95.05-1);
        # CUDA's own libraries (cuda-*, other version schemes) are not driver packages.
        epochless = version.split(":", 1)[-1]
        if re.match(r"^(lib)?nvidia-|^cuda-drivers|^libcuda1|^libxnvctrl", name) and not name.startswith(
                "nvidia-driver-pinning-") and not epochless.startswith(branch + "."):
            wrong.append("%s (%s %s)" % (file_name, name, version))
    if "nvidia-driver-pinning-" + branch not in names:
        raise BundleError("--nvidia-debs %s has no nvidia-driver-pinning-%s package: the driver role installs it "
                          "first to hold apt to branch %s (nvidia_driver_branch); add it from NVIDIA's repository"
                          % (directory, branch, branch))
    if wrong:
        raise BundleError("--nvidia-debs %s holds packages of another branch than %s (nvidia_driver_branch): %s. "
                          "Remove them, or set nvidia_driver_branch to their branch"
                          % (directory, branch, ", ".join(wrong)))
    return names


def read_controls(image: str, directory: Path) -> dict[str, str]:
    """Control records of the .deb files in directory, read by dpkg-deb in the Debian container."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", "%s:/debs:ro" % directory.resolve(), image,
         "bash", "-c", 'for f in /debs/*.deb; do [ -e "$f" ] || continue; echo "@@@ ${f##*/}"; '
                       'dpkg-deb --field "$f"; done'],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError("reading the packages in %s failed: %s" % (directory, result.stderr.strip()[-500:]))
    controls: dict[str, str] = {}
    for chunk in result.stdout.split("@@@ ")[1:]:
        file_name, _, control = chunk.partition("\n")
        controls[file_name.strip()] = control
    return controls


def fetch(image: str, cache: Path, work: Path, packages: list[str], lock: list[str] | None,
          nvidia_dir: Path | None, mirror: str = "", security_mirror: str = "") -> list[DebianPackage]:
    """Resolve and download in the container; returns the Debian packages of this bundle, by name.

    NVIDIA's packages (nvidia_dir) take part in the resolving but are not returned: they are the
    operator's files, added as they are."""
    for d in (cache, work):
        d.mkdir(parents=True, exist_ok=True)
    (work / "packages").write_text(" ".join(packages) + "\n")
    (work / "lock").write_text("".join(line + "\n" for line in lock or []))
    control_dir = work / "control"
    if control_dir.exists():
        for stale in control_dir.iterdir():
            stale.unlink()
    mounts = ["-v", "%s:/bundle/cache" % cache.resolve(), "-v", "%s:/bundle/work" % work.resolve()]
    if nvidia_dir is not None:
        mounts += ["-v", "%s:/bundle/nvidia:ro" % nvidia_dir.resolve()]
    command = ["docker", "run", "--rm", "-e", "BUNDLE_OWNER=%d:%d" % (os.getuid(), os.getgid()),
               "-e", "BUNDLE_MIRROR=" + mirror, "-e", "BUNDLE_SECURITY_MIRROR=" + security_mirror, *mounts,
               image, "bash", "-c", _CONTAINER_SCRIPT]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError("resolving and downloading the Debian packages failed (in %s): %s"
                          % (image, result.stderr.strip()[-2000:]))
    fetched = []
    for control_file in sorted(control_dir.glob("*.control")):
        control = control_file.read_text()
        fetched.append(package(cache / control_file.name[: -len(".control")], control, "debian"))
    if not fetched:
        raise BundleError("no Debian packages were resolved; is the container's mirror reachable?")
    return sorted(fetched, key=lambda p: (p.name, p.version, p.architecture))


def package(path: Path, control: str, origin: str) -> DebianPackage:
    return DebianPackage(path=path, control=control, name=control_field(control, "Package"),
                         version=control_field(control, "Version"),
                         architecture=control_field(control, "Architecture"), origin=origin)


def digests_of(path: Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of one file for each algorithm, read once."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def sha256_of(path: Path) -> str:
    return digests_of(path, "sha256")["sha256"]
