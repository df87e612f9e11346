"""The GPU play on a machine without GPUs (this one): it decides, records and says so,
and it refuses an inventory that expects GPUs here. Runs for real with connection local;
its records go to a temporary directory instead of /etc/llm-appliance."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PCI_DEVICES = Path("/sys/bus/pci/devices")


def run_gpu_play(tmp_path, **extra_vars):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"gpu_hosts": {"hosts": {"controller": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    extra = {"nvidia_driver_facts_dir": str(tmp_path / "facts"), **extra_vars}
    (tmp_path / "facts").mkdir(exist_ok=True)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(REPO / "playbooks/gpu.yml"), "-i", str(inventory), "-e", json.dumps(extra)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def nvidia_gpus_here():
    """NVIDIA GPUs and NVSwitches on this machine's PCI bus (vendor 10de, class 0300/0302/0680), as the role
    detects them (a container may see its host's)."""
    found = []
    for device in sorted(PCI_DEVICES.glob("*")):
        try:
            vendor = (device / "vendor").read_text().strip().lower()
            pci_class = (device / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == "0x10de" and pci_class[:6] in ("0x0300", "0x0302", "0x0680"):
            found.append(device.name)
    return found


@pytest.fixture(scope="module", autouse=True)
def no_gpu_here():
    """On a machine with NVIDIA GPUs the play would install the driver for real: these tests skip there."""
    gpus = nvidia_gpus_here()
    if gpus:
        pytest.skip("these tests describe a machine without NVIDIA GPUs; this one has %d NVIDIA GPU or NVSwitch "
                    "device(s) (%s), where the play would install the driver" % (len(gpus), ", ".join(gpus)))


def test_no_gpu_is_said_plainly_and_recorded(tmp_path):
    result = run_gpu_play(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "No NVIDIA GPU found on controller (PCI vendor 10de): driver installation skipped" in output
    facts = json.loads((tmp_path / "facts/gpu-facts.json").read_text())
    assert facts["gpus"] == [] and facts["nvswitch_count"] == 0
    decision = json.loads((tmp_path / "facts/nvidia-driver-decision.json").read_text())
    assert decision["packages"][0] == "nvidia-open"
    assert decision["repo_url"].endswith("/debian12/x86_64/")


def test_expected_gpus_missing_fails_with_the_reason(tmp_path):
    result = run_gpu_play(tmp_path, nvidia_driver_expected_gpu_count=4)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "No NVIDIA GPU found on controller (PCI vendor 10de)" in output
    assert "but the inventory expects 4 (nvidia_driver_expected_gpu_count)" in output
