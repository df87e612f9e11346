"""Ansible adapters over llm_appliance.gpu_facts (runs on the controller)."""

from ansible.errors import AnsibleFilterError

from llm_appliance.gpu_facts import gpu_facts, pci_inventory


def nvidia_gpu_facts(query_text, topo_text="", nvswitch_count=0):
    """{{ query_stdout | nvidia_gpu_facts(topo_stdout, nvswitch_count) }} -> the planner's GPU facts."""
    try:
        return gpu_facts(str(query_text), str(topo_text), int(nvswitch_count))
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError("nvidia_gpu_facts: %s" % exc) from None


def nvidia_pci_inventory(text):
    """{{ pci_listing | nvidia_pci_inventory }} -> NVIDIA GPU and NVSwitch counts."""
    try:
        return pci_inventory(str(text))
    except ValueError as exc:
        raise AnsibleFilterError("nvidia_pci_inventory: %s" % exc) from None


class FilterModule:
    """GPU facts filters."""

    def filters(self):
        return {"nvidia_gpu_facts": nvidia_gpu_facts, "nvidia_pci_inventory": nvidia_pci_inventory}
