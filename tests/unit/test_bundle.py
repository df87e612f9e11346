"""The offline bundle's builder: which packages, the NVIDIA branch check, and a repository whose
signature apt's verifier accepts and whose bytes the same inputs always reproduce.

The container side (resolving and downloading in Debian 12) runs in `make cluster-bundle`, and
the cluster scenario converges from its result with no route out (molecule/cluster)."""
import pathlib
import re
import shutil
import subprocess
import time

import pytest
import yaml

from llm_appliance.bundle import BundleError, cli, debian, repo

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _role_variables(role):
    values = {}
    # The bundle is for Debian 12: its per-distribution vars apply.
    for sub, name in (("defaults", "main"), ("vars", "main"), ("vars", "Debian-12")):
        path = ROOT / "roles" / role / sub / (name + ".yml")
        if path.exists():
            values.update(yaml.safe_load(path.read_text()) or {})
    return values


def _apt_names(task, variables):
    names = task["ansible.builtin.apt"].get("name")
    if names is None:
        return []
    if isinstance(names, str):
        match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", names)
        # A variable of the role's, or of the task's own vars.
        names = (variables.get(match.group(1)) or task.get("vars", {}).get(match.group(1))) if match else [names]
    resolved = []
    for name in names:
        # postgresql-{{ postgresql_version }} and the like: the role's own default fills it.
        resolved.append(re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), name))
    return resolved


def _tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        if "ansible.builtin.apt" in node:
            yield node
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from _tasks(node[key])


def test_the_bundle_carries_every_package_the_roles_install_with_apt():
    carried = set(debian.packages_to_install())
    seen = {}
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        role = path.parts[-3]
        if role == "nvidia_driver" or path.name == "dcgm.yml":
            continue  # NVIDIA's packages come from the operator's directory (--nvidia-debs)
        variables = _role_variables(role)
        for task in _tasks(yaml.safe_load(path.read_text())):
            for name in _apt_names(task, variables):
                seen[name] = path.relative_to(ROOT)
    assert seen, "no apt task found: the scan is broken"
    missing = {name: str(where) for name, where in seen.items() if name not in carried}
    assert not missing, "packages the roles install but the bundle lacks: %s" % missing


def test_the_gpu_hosts_get_dkms_and_their_kernels_headers():
    names = debian.packages_to_install(kernel="6.1.0-28-amd64")
    assert "dkms" in names and "linux-headers-6.1.0-28-amd64" in names


def _control(name, version, arch="amd64"):
    return "Package: %s\nVersion: %s\nArchitecture: %s\nDescription: test package\n" % (name, version, arch)


def test_nvidia_packages_of_the_pinned_branch_pass():
    controls = {
        "nvidia-driver-pinning-580_580.95.05-1_all.deb": _control("nvidia-driver-pinning-580", "580.95.05-1", "all"),
        "nvidia-open_580.95.05-1_amd64.deb": _control("nvidia-open", "580.95.05-1"),
        "libnvidia-compute_580.95.05-1_amd64.deb": _control("libnvidia-compute", "1:580.95.05-1"),
        "cuda-drivers_580.95.05-1_amd64.deb": _control("cuda-drivers", "580.95.05-1"),
    }
    names = debian.check_nvidia_debs(pathlib.Path("/nv"), "580", controls)
    assert "nvidia-open" in names


def test_nvidia_packages_of_another_branch_are_refused_by_name():
    controls = {
        "nvidia-driver-pinning-580_580.95.05-1_all.deb": _control("nvidia-driver-pinning-580", "580.95.05-1", "all"),
        "nvidia-open_575.57.08-1_amd64.deb": _control("nvidia-open", "575.57.08-1"),
    }
    with pytest.raises(BundleError, match=r"nvidia-open_575.57.08-1_amd64.deb .*nvidia_driver_branch"):
        debian.check_nvidia_debs(pathlib.Path("/nv"), "580", controls)


def test_nvidia_packages_without_the_pinning_package_are_refused():
    with pytest.raises(BundleError, match="no nvidia-driver-pinning-580 package"):
        debian.check_nvidia_debs(pathlib.Path("/nv"), "580", {"x.deb": _control("nvidia-open", "580.1-1")})
    with pytest.raises(BundleError, match="holds no .deb files"):
        debian.check_nvidia_debs(pathlib.Path("/nv"), "580", {})


@pytest.fixture()
def packages(tmp_path):
    pool = tmp_path / "cache"
    pool.mkdir()
    made = []
    for name, version in (("zlib-test", "1.0-1"), ("acl-test", "2.3-1")):
        path = pool / ("%s_%s_amd64.deb" % (name, version))
        path.write_bytes(("contents of %s" % name).encode() * 100)
        made.append(debian.package(path, _control(name, version), "debian"))
    return sorted(made, key=lambda p: p.name)


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="needs gpg and gpgv")
def test_the_repository_is_signed_verifiably_and_reproducibly(tmp_path, packages):
    keys = tmp_path / "keys"
    first, second = tmp_path / "one" / "debian.tar", tmp_path / "two" / "debian.tar"
    for target in (first, second):
        target.parent.mkdir()
        record = repo.build_repository(target, "unit", packages, keys, 1_700_000_000)
        # Signatures carry their time in seconds: a later second must not change the bytes.
        time.sleep(1.1)
    assert first.read_bytes() == second.read_bytes(), "the same inputs and key must give the same bytes"
    assert [p["name"] for p in record["packages"]] == ["acl-test", "zlib-test"]

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(first), "-C", str(unpacked)], check=True)
    index = (unpacked / "Packages").read_text()
    assert "Filename: pool/acl-test_2.3-1_amd64.deb\n" in index
    assert re.search(r"SHA256: [0-9a-f]{64}\n", index)
    release = (unpacked / "Release").read_text()
    assert release.startswith("Origin: llm-appliance\n")
    # Dated at the build's time, or at the key's creation when that is later (gpgv refuses
    # signatures older than their key): here the key was made after the 2023 build time.
    assert record["signed_at"] > 1_700_000_000
    assert time.strftime("Date: %a, %d %b %Y %H:%M:%S UTC", time.gmtime(record["signed_at"])) in release
    # apt verifies InRelease with gpgv against the key named in signed-by: do the same.
    keyring = tmp_path / "keyring.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(keyring), str(unpacked / repo.KEY_FILE_NAME)],
                   check=True)
    verified = subprocess.run(["gpgv", "--keyring", str(keyring), str(unpacked / "InRelease")],
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    # A changed package list no longer matches the signature.
    tampered = tmp_path / "tampered"
    tampered.write_text((unpacked / "InRelease").read_text().replace("Packages.gz", "Packages.xz"))
    refused = subprocess.run(["gpgv", "--keyring", str(keyring), str(tampered)], capture_output=True, check=False)
    assert refused.returncode != 0


def test_an_incomplete_wheelhouse_is_refused_before_anything_is_built(tmp_path, capsys):
    wheelhouse = tmp_path / "wheelhouse" / "litellm"
    wheelhouse.mkdir(parents=True)
    status = cli.main(["--site", "unit", "--out", str(tmp_path / "bundle" / "unit"), "--wheelhouse", str(wheelhouse)])
    assert status == 2
    assert "is not a complete wheelhouse" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_nvidia_packages_need_the_kernel_release(tmp_path, capsys):
    status = cli.main(["--site", "unit", "--out", str(tmp_path / "b" / "unit"), "--nvidia-debs", str(tmp_path)])
    assert status == 2
    assert "--kernel" in capsys.readouterr().err
