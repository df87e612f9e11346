"""A closed network, for real: the scenario's hosts have no route out (an internal Docker network),
converged from the site's offline bundle alone, and nothing in the running appliance tries to
reach the internet. The other tests of this scenario (completions over both replicas, failover,
usage rows) run on the same hosts, so they also show the appliance working with egress blocked.
"""
import json
import os
import pathlib
import subprocess

import pytest
import testinfra

HOSTS = ["cluster-front", "cluster-gpu1", "cluster-gpu2"]
PROJECT = pathlib.Path(__file__).resolve().parents[3]
BUILD = pathlib.Path(os.environ.get("APPLIANCE_BUILD_DIR", PROJECT / "build"))
BUNDLE = BUILD / "bundle" / "cluster"
BUNDLE_SOURCE = "file:/var/lib/llm-appliance/bundle/debian ./"

testinfra_hosts = ["cluster-front"]


def on(name):
    return testinfra.get_host("docker://" + name)


def process_environment(host, unit):
    pid = host.check_output("systemctl show --property MainPID --value %s", unit)
    assert pid not in ("", "0"), "%s is not running" % unit
    entries = host.check_output("tr '\\0' '\\n' < /proc/%s/environ", pid).splitlines()
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def test_the_scenarios_network_is_internal():
    inspected = subprocess.run(["docker", "network", "inspect", "llm-cluster", "--format", "{{.Internal}}"],
                               capture_output=True, text=True, check=False)
    assert inspected.stdout.strip() == "true", inspected.stdout + inspected.stderr


@pytest.mark.parametrize("name", HOSTS)
def test_no_host_reaches_an_outside_address(name):
    host = on(name)
    # deb.debian.org's address (Fastly) and a public resolver, by address: no name service needed.
    # (Docker gives containers of an internal network a default route; the traffic is dropped.)
    # Docker's resolver retries for 20 s before it gives up on a name it cannot forward. The three
    # tries run at once: each waits out its own timeout.
    probes = {"151.101.2.132": "curl -sS --max-time 3 -o /dev/null http://151.101.2.132/",
              "1.1.1.1": "curl -sS --max-time 3 -o /dev/null http://1.1.1.1/",
              "deb.debian.org": "timeout 5 getent hosts deb.debian.org"}
    script = " ".join("(%s >/dev/null 2>&1; echo %s=$?) &" % (probe, target) for target, probe in probes.items())
    out = host.check_output("bash -c %s", script + " wait")
    codes = dict(line.split("=") for line in out.split())
    assert sorted(codes) == sorted(probes), out
    reached = [target for target, code in codes.items() if code == "0"]
    assert not reached, "%s reached or resolved %s" % (name, reached)


@pytest.mark.parametrize("name", HOSTS)
def test_apt_reads_the_bundle_alone_and_every_package_came_from_it(name):
    host = on(name)
    update = host.run("apt-get update")
    assert update.rc == 0 and "W:" not in update.stderr and "E:" not in update.stderr, update.stderr
    policy = host.check_output("apt-cache policy")
    assert BUNDLE_SOURCE in policy
    assert "http" not in policy, "apt reads another source than the bundle:\n" + policy
    # Installed by the roles: the installed version is the bundle's.
    for package in ("nftables", "rsync", "python3-venv"):
        assert BUNDLE_SOURCE in host.check_output("apt-cache policy %s", package)


@pytest.mark.parametrize("name", HOSTS)
def test_apt_trusts_the_bundle_by_the_pinned_key_only(name):
    host = on(name)
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    shown = host.check_output("gpg --batch --with-colons --show-keys /etc/apt/keyrings/llm-appliance-bundle.asc")
    fingerprints = [line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:")]
    assert fingerprints[0] == manifest["key_fingerprint"]
    assert "signed-by=/etc/apt/keyrings/llm-appliance-bundle.asc" in host.file(
        "/etc/llm-appliance/apt/sources.list").content_string


@pytest.mark.parametrize("name", ["cluster-gpu1", "cluster-gpu2"])
def test_the_engines_run_with_usage_stats_and_downloads_switched_off(name):
    environment = process_environment(on(name), "vllm-tiny-code.service")
    for switch, value in {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                          "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        assert environment.get(switch) == value, switch


def test_the_gateway_runs_with_the_local_cost_map_and_no_telemetry(host):
    environment = process_environment(host, "litellm@1.service")
    assert environment.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
    assert environment.get("LITELLM_TELEMETRY") == "False"
    assert environment.get("DO_NOT_TRACK") == "1"
    assert "telemetry: false" in host.file("/etc/llm-appliance/litellm/config.yaml").content_string


def test_the_chat_runs_offline_without_version_checks(host):
    environment = process_environment(host, "open-webui.service")
    for switch, value in {"OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "ENABLE_VERSION_UPDATE_CHECK": "False",
                          "ANONYMIZED_TELEMETRY": "False", "SCARF_NO_ANALYTICS": "true"}.items():
        assert environment.get(switch) == value, switch


@pytest.mark.parametrize("name", HOSTS)
def test_pip_in_every_venv_uses_its_wheelhouse_only(name):
    host = on(name)
    # A venv is a directory with pyvenv.cfg (beside them: <venv>.wheelhouse, <venv>.appliance).
    venvs = host.check_output("find /opt/llm-appliance/venvs -mindepth 2 -maxdepth 2 -name pyvenv.cfg -printf '%h\\n'")
    assert venvs, "no venv found on %s" % name
    for venv in venvs.splitlines():
        conf = host.file(venv + "/pip.conf").content_string
        assert "no-index = true" in conf and "disable-pip-version-check = true" in conf, venv
        # pip itself, run as an operator would, reads it.
        assert "global.no-index" in host.check_output("%s/bin/pip config list", venv)


def test_the_bundle_rebuilds_to_the_same_manifest(tmp_path):
    """Re-made from the same pins (its package lock, the same wheelhouses, models and key)."""
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    wheelhouses = [part.split("/", 1)[1] for part in manifest["parts"] if part.startswith("wheelhouse/")]
    out = tmp_path / "bundle" / "cluster"
    command = [str(PROJECT / ".venv" / "bin" / "appliance-bundle"), "--site", "cluster", "--out", str(out),
               "--key-dir", str(BUILD / "bundle-keys" / "cluster"), "--cache", str(BUILD / "bundle-cache"),
               "--debian-lock", str(BUNDLE / "debian-packages.lock"), "--models", str(BUILD / "models")]
    if os.environ.get("MOLECULE_IMAGE"):
        command += ["--image", os.environ["MOLECULE_IMAGE"]]
    for name in wheelhouses:
        command += ["--wheelhouse", str(BUILD / "wheelhouse" / name)]
    # The same build time too: the commit the bundle was made from.
    environment = dict(os.environ, SOURCE_DATE_EPOCH=str(manifest["built_from_time"]))
    built = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT, env=environment)
    assert built.returncode == 0, built.stderr
    print(built.stdout)
    assert (out / "manifest.json").read_bytes() == (BUNDLE / "manifest.json").read_bytes()


def test_the_readmes_check_of_a_carried_bundle_passes():
    """README: `sha256sum -c SHA256SUMS` in the bundle directory, after carrying it in."""
    checked = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=BUNDLE, capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = (BUNDLE / "SHA256SUMS").read_text().splitlines()
    assert any(line.endswith("  debian.tar") for line in listed)
    assert len(listed) == len(json.loads((BUNDLE / "manifest.json").read_text())["files"])


def _stand_in_deb(directory, name, version, depends=""):
    """A small package with NVIDIA's name and version (the real ones cannot be fetched here)."""
    root = directory / "src" / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / name).mkdir(parents=True)
    (root / "usr" / "share" / "doc" / name / "README").write_text("stand-in\n")
    (root / "DEBIAN" / "control").write_text(
        "Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: tests <tests@example.invalid>\n%s"
        "Description: stand-in for NVIDIA's %s\n" % (name, version, "Depends: %s\n" % depends if depends else "", name))
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                    str(directory / "debs" / ("%s_%s_amd64.deb" % (name, version)))], check=True, capture_output=True)


def _image():
    return os.environ.get("MOLECULE_IMAGE", "llm-appliance/debian12-systemd:latest")


def test_a_gpu_sites_bundle_carries_nvidias_packages_and_installs_them_with_no_network(tmp_path):
    """--nvidia-debs with packages of the pinned branch: their Debian dependencies, DKMS and the
    kernel's headers are resolved into the bundle, and a host with no network installs them from it."""
    (tmp_path / "debs").mkdir()
    _stand_in_deb(tmp_path, "nvidia-driver-pinning-580", "580.95.05-1")
    _stand_in_deb(tmp_path, "nvidia-kernel-open-dkms", "580.95.05-1", "dkms")
    _stand_in_deb(tmp_path, "nvidia-open", "580.95.05-1", "nvidia-kernel-open-dkms (= 580.95.05-1), libvulkan1")
    # The current Debian 12 kernel, as its headers' meta package names it.
    kernel = subprocess.run(
        ["docker", "run", "--rm", _image(), "bash", "-c",
         "m=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list); "
         "printf 'deb %s bookworm main\\ndeb %s bookworm-updates main\\ndeb %s-security bookworm-security main\\n' "
         "$m $m $m >/etc/apt/sources.list; apt-get update -qq; "
         "apt-cache depends linux-headers-amd64 | awk '/Depends: linux-headers-.*-amd64/ {print $2; exit}'"],
        capture_output=True, text=True, check=True).stdout.strip().removeprefix("linux-headers-")
    assert kernel, "no Debian 12 kernel headers found"
    out = tmp_path / "bundle" / "gpu"
    command = [str(PROJECT / ".venv" / "bin" / "appliance-bundle"), "--site", "gpu", "--out", str(out),
               "--image", _image(), "--cache", str(BUILD / "bundle-cache"), "--nvidia-debs", str(tmp_path / "debs"),
               "--kernel", kernel]
    built = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    origins = {p["name"]: p["origin"] for p in manifest["debian_packages"]}
    assert origins["nvidia-open"] == "nvidia" and origins["nvidia-driver-pinning-580"] == "nvidia"
    assert origins["libvulkan1"] == origins["dkms"] == origins["linux-headers-" + kernel] == "debian"
    installed = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", "%s:/bundle:ro" % out, _image(), "bash", "-c",
         "set -e; mkdir /srv/debian; tar -C /srv/debian -xf /bundle/debian.tar; "
         "echo 'deb [signed-by=/bundle/llm-appliance-bundle.asc] file:/srv/debian ./' >/etc/apt/sources.list; "
         "apt-get update -qq; export DEBIAN_FRONTEND=noninteractive; "
         "apt-get install -y -qq nvidia-driver-pinning-580 >/dev/null; "
         "apt-get install -y -qq --no-install-recommends nvidia-open dkms linux-headers-%s >/dev/null; "
         "dpkg-query -W -f '${Package} ${Version}\\n' nvidia-open libvulkan1" % kernel],
        capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "nvidia-open 580.95.05-1" in installed.stdout


def test_nvidia_packages_of_another_branch_are_refused_before_anything_is_built(tmp_path):
    (tmp_path / "debs").mkdir()
    _stand_in_deb(tmp_path, "nvidia-driver-pinning-580", "580.95.05-1")
    _stand_in_deb(tmp_path, "nvidia-open", "575.57.08-1")
    out = tmp_path / "bundle" / "gpu"
    refused = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "appliance-bundle"), "--site", "gpu", "--out", str(out), "--image", _image(),
         "--nvidia-debs", str(tmp_path / "debs"), "--kernel", "6.1.0-0-amd64"],
        capture_output=True, text=True, check=False, cwd=PROJECT)
    assert refused.returncode == 2
    assert "nvidia-open_575.57.08-1_amd64.deb" in refused.stderr and "nvidia_driver_branch" in refused.stderr
    assert not out.exists() and not out.with_name("gpu.partial").exists()
