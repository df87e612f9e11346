"""Ansible adapter over llm_appliance.systemd_units: the units' shared hardening block."""

from ansible.errors import AnsibleFilterError

from llm_appliance.systemd_units import NVIDIA_DEVICES, hardening_lines


def appliance_unit_hardening(options):
    """{{ {'read_write_paths': [dir], 'devices': 'nvidia', 'address_families': [...],
    'proc_subset_pid': true, 'loopback_only': true, 'capabilities': ['CAP_NET_BIND_SERVICE'],
    'peers': ['10.20.0.11']}
    | appliance_unit_hardening }} -> the lines."""
    options = dict(options or {})
    devices = options.pop("devices", [])
    if devices == "nvidia":
        devices = list(NVIDIA_DEVICES)
    elif devices == "nvidia-smi":
        devices = list(NVIDIA_DEVICES[:3])
    try:
        return "\n".join(hardening_lines(devices=devices, **options))
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"appliance_unit_hardening: {exc}") from None


class FilterModule:
    def filters(self):
        return {"appliance_unit_hardening": appliance_unit_hardening}
