"""The nvidia_driver role on a host without GPUs (the test container): it changes nothing but
records its decision and empty GPU facts."""
import json

import pytest

FACTS = "/etc/llm-appliance/gpu-facts.json"
DECISION = "/etc/llm-appliance/nvidia-driver-decision.json"


def read_json(host, path):
    f = host.file(path)
    assert f.exists, path
    assert f.mode == 0o644, oct(f.mode)
    assert f.user == "root"
    return json.loads(f.content_string)


def test_gpu_facts_are_empty(host):
    facts = read_json(host, FACTS)
    assert facts["driver_version"] is None
    assert facts["gpus"] == []
    assert facts["nvlink_groups"] == []
    assert facts["nvswitch_count"] == 0


def test_decision_record_names_repository_and_packages(host):
    decision = read_json(host, DECISION)
    # A container never installs the driver: no GPU, or GPUs that belong to its host.
    assert decision["action"] in ("skipped: no GPU", "skipped: container")
    assert decision["distribution"] == "Debian-12"
    arch = {"x86_64": "x86_64", "aarch64": "sbsa"}[host.system_info.arch]
    assert decision["repo_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/debian12/%s/" % arch
    assert decision["key_source"] == decision["repo_url"] + "3bf863cc.pub"
    assert decision["branch"] == "580"
    assert decision["pinning_package"] == "nvidia-driver-pinning-580"
    assert decision["packages"][0] == "nvidia-open"
    assert decision["open_kernel_modules"] is True
    if decision["nvswitch_count"] == 0:
        assert decision["fabricmanager"] is False
        assert "nvidia-fabricmanager" not in decision["packages"]
    assert decision["dcgm"] is False


@pytest.mark.parametrize("path", [
    "/etc/modprobe.d/llm-appliance-blacklist-nouveau.conf",
    "/etc/apt/sources.list.d/nvidia-cuda.sources",
    "/etc/apt/keyrings/nvidia-cuda.asc",
])
def test_nothing_installed_on_the_host(host, path):
    assert not host.file(path).exists, path


def test_no_nvidia_packages(host):
    listed = host.run("dpkg-query -W -f='${Package}\\n' 'nvidia-*' 'libnvidia-*' 2>/dev/null").stdout.split()
    assert listed == []
    held = host.run("dpkg --get-selections | awk '$2 == \"hold\" {print $1}'").stdout.split()
    assert not [name for name in held if "nvidia" in name], held
