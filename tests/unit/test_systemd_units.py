"""The shared hardening block: every unit gets the same closed set, with only its stated differences."""
import importlib.util
from pathlib import Path

import pytest

from llm_appliance.systemd_units import NVIDIA_DEVICES, hardening_lines

REPO = Path(__file__).resolve().parents[2]


def test_a_unit_without_devices_gets_private_devices_and_loopback_only():
    lines = hardening_lines(read_write_paths=["/var/lib/x"])
    assert "PrivateDevices=yes" in lines and not any(line.startswith("DeviceAllow=") for line in lines)
    assert lines[-2:] == ["IPAddressDeny=any", "IPAddressAllow=localhost"]
    assert "ReadWritePaths=/var/lib/x" in lines
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "SystemCallFilter=~@privileged @obsolete",
                    "ProtectProc=invisible", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
        assert setting in lines
    assert len(lines) == len(set(lines)), "a setting is repeated"


def test_the_site_s_other_hosts_are_the_only_addresses_beyond_loopback():
    lines = hardening_lines(peers=["10.20.0.10", "10.20.0.12"])
    assert lines[-4:] == ["IPAddressDeny=any", "IPAddressAllow=localhost", "IPAddressAllow=10.20.0.10",
                          "IPAddressAllow=10.20.0.12"]


def test_gpu_units_keep_their_devices_and_may_leave_loopback():
    lines = hardening_lines(devices=NVIDIA_DEVICES, loopback_only=False, proc_subset_pid=True)
    allowed = [line for line in lines if line.startswith("DeviceAllow=")]
    assert allowed == [f"DeviceAllow={device} rw" for device in NVIDIA_DEVICES]
    assert "PrivateDevices=yes" not in lines and "DevicePolicy=closed" in lines
    assert not any(line.startswith("IPAddress") for line in lines)
    assert "ProcSubset=pid" in lines


def test_a_server_on_a_low_port_holds_that_one_capability_and_no_other():
    lines = hardening_lines(capabilities=["CAP_NET_BIND_SERVICE"], loopback_only=False)
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in lines
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines
    plain = hardening_lines()
    assert "CapabilityBoundingSet=" in plain and "AmbientCapabilities=" in plain
    with pytest.raises(ValueError, match="CAP_"):
        hardening_lines(capabilities=["NET_BIND_SERVICE"])


def test_a_wrong_address_family_is_refused():
    with pytest.raises(ValueError, match="AF_"):
        hardening_lines(address_families=["INET"])


def test_the_filter_names_the_nvidia_device_sets():
    spec = importlib.util.spec_from_file_location("systemd_units_filter", REPO / "filter_plugins/systemd_units.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    block = module.appliance_unit_hardening({"devices": "nvidia-smi"})
    assert block.count("DeviceAllow=") == 3 and "char-nvidia-nvswitch" not in block
    assert module.appliance_unit_hardening({"devices": "nvidia"}).count("DeviceAllow=") == 4
