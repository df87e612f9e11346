"""The hardening block of the appliance's own systemd units, written once.

Each unit states only what differs: the paths it writes, the devices it opens, the address
families it needs, whether it may leave loopback. Everything else is the same closed set, so a
setting added here reaches every unit.
"""
from __future__ import annotations

from collections.abc import Iterable

# The device classes a CUDA process opens (nvidia-smi needs the first three).
NVIDIA_DEVICES = ("char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps", "char-nvidia-nvswitch")
ADDRESS_FAMILIES = ("AF_UNIX", "AF_INET", "AF_INET6")


def hardening_lines(read_write_paths: Iterable[str] = (), devices: Iterable[str] = (),
                    address_families: Iterable[str] = ADDRESS_FAMILIES, proc_subset_pid: bool = False,
                    loopback_only: bool = True, capabilities: Iterable[str] = (),
                    peers: Iterable[str] = ()) -> list[str]:
    """The [Service] lines, in a fixed order. devices: DeviceAllow classes (rw); none gives
    PrivateDevices=yes. loopback_only: IPAddressDeny=any with IPAddressAllow=localhost and the
    addresses of `peers` (the site's other hosts, when its services span several).
    capabilities: the only ones the unit's (unprivileged) user holds, e.g. CAP_NET_BIND_SERVICE
    for a server on port 443; none by default."""
    devices = list(devices)
    families = list(address_families)
    unknown = [family for family in families if not family.startswith("AF_")]
    if unknown or not families:
        raise ValueError(f"address families must be AF_* names, got {families!r}")
    capabilities = list(capabilities)
    if any(not cap.startswith("CAP_") for cap in capabilities):
        raise ValueError(f"capabilities must be CAP_* names, got {capabilities!r}")
    caps = " ".join(capabilities)
    lines = ["UMask=0027", "NoNewPrivileges=yes", "CapabilityBoundingSet=" + caps, "AmbientCapabilities=" + caps,
             "DevicePolicy=closed"]
    if devices:
        lines += [f"DeviceAllow={device} rw" for device in devices]
    else:
        lines.append("PrivateDevices=yes")
    lines += ["ProtectSystem=strict", "ProtectHome=yes"]
    lines += [f"ReadWritePaths={path}" for path in read_write_paths]
    lines += ["PrivateTmp=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
              "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible"]
    if proc_subset_pid:
        lines.append("ProcSubset=pid")
    lines += ["RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes",
              "RemoveIPC=yes", "KeyringMode=private", "SystemCallArchitectures=native",
              "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @obsolete",
              "SystemCallErrorNumber=EPERM", "RestrictAddressFamilies=" + " ".join(families)]
    if loopback_only:
        lines += ["IPAddressDeny=any", "IPAddressAllow=localhost"] + [f"IPAddressAllow={peer}" for peer in peers]
    return lines
