"""GPU facts from nvidia-smi and PCI listings (pure, standard library only).

The planner reads the dictionary built by :func:`gpu_facts`::

    {"driver_version": "550.54.15",
     "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
               "memory_total_mib": 81559, "memory_reserved_mib": 470,   # or None
               "pci_bus_id": "00000000:18:00.0", "numa_node": 0}],     # or None
     "nvlink_groups": [[0, 1, 2, 3]],
     "nvswitch_count": 0}

Inputs, exactly as the role collects them on the host:

* ``nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.reserved,pci.bus_id,driver_version
  --format=csv,noheader,nounits`` (see :data:`QUERY_FIELDS`). ``memory.reserved`` reads
  ``[N/A]`` or ``N/A`` on drivers that do not report it; that becomes ``None``. A header line and
  ``MiB`` units are tolerated, so the output of ``--format=csv`` parses too.
* ``nvidia-smi topo -m``: tab separated (as printed) or space separated (as pasted in
  reports). Optional NIC rows, optional ``CPU Affinity``, ``NUMA Affinity`` and ``GPU NUMA ID``
  columns, and the legend after the matrix are all handled.
* ``lspci -nn`` or the role's sysfs listing for :func:`pci_inventory`.

Every parser raises ValueError naming what was wrong and on which line.
"""
import csv
import re

QUERY_FIELDS = ("index", "name", "uuid", "memory.total", "memory.reserved", "pci.bus_id", "driver_version")
QUERY_ARG = "--query-gpu=" + ",".join(QUERY_FIELDS)

NVIDIA_VENDOR = "10de"
# PCI classes: 0300 VGA compatible controller, 0302 3D controller (datacenter GPUs), 0680 other bridge (NVSwitch).
GPU_CLASSES = ("0300", "0302")
NVSWITCH_CLASS = "0680"

_NA = ("[n/a]", "n/a", "[not supported]", "not supported", "")
_UUID_RE = re.compile(r"^(GPU|MIG)-[0-9a-fA-F-]+$")
_BUS_ID_RE = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
_LINK_RE = re.compile(r"^(X|SYS|NODE|PHB|PXB|PIX|NV\d+|SOC|PSB|PCI|N/A)$")
_DEVICE_RE = re.compile(r"^(GPU\d+|NIC\d+|mlx\d+_\d+|[A-Za-z][\w.-]*)$")


def _is_na(value):
    return value.strip().lower() in _NA


def _mib(value, field, lineno):
    text = value.strip()
    if text.lower().endswith("mib"):
        text = text[:-3].strip()
    if not text.isdigit():
        raise ValueError("nvidia-smi query line %d: %s is %r, expected a whole number of MiB" % (lineno, field, value))
    return int(text)


def parse_query_gpu_csv(text):
    """Parse the --query-gpu CSV (fields in QUERY_FIELDS order) into a list of GPU dictionaries.

    Each dictionary has index, name, uuid, memory_total_mib, memory_reserved_mib (None when the
    driver says N/A), pci_bus_id and driver_version. Sorted by index. Empty input -> [].
    """
    if not isinstance(text, str):
        raise ValueError("nvidia-smi query output must be text, got %s" % type(text).__name__)
    gpus = []
    seen = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = next(csv.reader([line], skipinitialspace=True))
        row = [cell.strip() for cell in row]
        if row and row[0].lower() == "index":
            continue  # header line of --format=csv
        if len(row) != len(QUERY_FIELDS):
            raise ValueError("nvidia-smi query line %d: %d fields, expected %d (%s): %r"
                             % (lineno, len(row), len(QUERY_FIELDS), ",".join(QUERY_FIELDS), line))
        index, name, uuid, total, reserved, bus_id, version = row
        if not index.isdigit():
            raise ValueError("nvidia-smi query line %d: index is %r, expected a number" % (lineno, index))
        if int(index) in seen:
            raise ValueError("nvidia-smi query line %d: GPU index %s appears twice" % (lineno, index))
        if not name:
            raise ValueError("nvidia-smi query line %d: empty GPU name" % lineno)
        if not _UUID_RE.match(uuid):
            raise ValueError("nvidia-smi query line %d: uuid is %r, expected GPU-..." % (lineno, uuid))
        if not _BUS_ID_RE.match(bus_id):
            raise ValueError("nvidia-smi query line %d: pci.bus_id is %r, expected DOMAIN:BB:DD.F" % (lineno, bus_id))
        if not _VERSION_RE.match(version):
            raise ValueError("nvidia-smi query line %d: driver_version is %r" % (lineno, version))
        seen.add(int(index))
        gpus.append({
            "index": int(index),
            "name": name,
            "uuid": uuid,
            "memory_total_mib": _mib(total, "memory.total", lineno),
            "memory_reserved_mib": None if _is_na(reserved) else _mib(reserved, "memory.reserved", lineno),
            "pci_bus_id": _normalise_bus_id(bus_id),
            "driver_version": version,
        })
    gpus.sort(key=lambda gpu: gpu["index"])
    return gpus


def _normalise_bus_id(bus_id):
    """nvidia-smi prints 00000000:18:00.0 (8-digit domain, upper-case hex); keep that form."""
    domain, rest = bus_id.split(":", 1)
    return ("%08X" % int(domain, 16)) + ":" + rest.upper()


def _split_header(line):
    # Column names contain single spaces ("CPU Affinity"); columns are separated by tabs or 2+ spaces.
    return [cell.strip() for cell in re.split(r"\t+| {2,}", line.strip()) if cell.strip()]


def parse_topo_matrix(text):
    """Parse `nvidia-smi topo -m`.

    Returns {"devices": [...], "links": {"GPU0": {"GPU1": "NV18", ...}, ...},
    "gpus": {0: {"cpu_affinity": "0-47,96-143" or None, "numa_node": 0 or None}, ...}}.
    Only the first matrix is read; the legend (and any later matrix such as -p2p) is ignored.
    """
    if not isinstance(text, str):
        raise ValueError("nvidia-smi topo output must be text, got %s" % type(text).__name__)
    lines = text.splitlines()
    header_at = None
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            header_at = lineno
            break
    if header_at is None:
        raise ValueError("nvidia-smi topo -m output is empty")
    header = _split_header(lines[header_at - 1])
    devices = []
    extra = []
    for cell in header:
        if extra or " " in cell or cell in ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID"):
            extra.append(cell)
        else:
            devices.append(cell)
    if not devices or not devices[0].startswith("GPU"):
        raise ValueError("nvidia-smi topo line %d: header %r does not start with GPU0"
                         % (header_at, lines[header_at - 1]))
    for cell in devices:
        if not _DEVICE_RE.match(cell):
            raise ValueError("nvidia-smi topo line %d: unexpected column %r" % (header_at, cell))
    links = {}
    gpus = {}
    for lineno in range(header_at + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line.strip():
            break  # the matrix ends at the first blank line; the legend follows
        tokens = line.split()
        if tokens[0] == "Legend:":
            break
        name = tokens[0]
        if name not in devices:
            raise ValueError("nvidia-smi topo line %d: row %r is not one of the columns %s" % (lineno, name, devices))
        if name in links:
            raise ValueError("nvidia-smi topo line %d: row %s appears twice" % (lineno, name))
        cells = tokens[1:]
        if len(cells) < len(devices):
            raise ValueError("nvidia-smi topo line %d: row %s has %d link cells, expected %d"
                             % (lineno, name, len(cells), len(devices)))
        row = {}
        for column, value in zip(devices, cells[:len(devices)], strict=True):
            if not _LINK_RE.match(value):
                raise ValueError("nvidia-smi topo line %d: row %s column %s is %r, not a link type"
                                 % (lineno, name, column, value))
            row[column] = value
        if row[name] != "X":
            raise ValueError("nvidia-smi topo line %d: row %s does not have X on the diagonal" % (lineno, name))
        links[name] = row
        if name.startswith("GPU"):
            # The affinity columns, paired as far as both go: a row's cells need not match the header's count.
            rest = dict(zip(extra, cells[len(devices):], strict=False))
            numa = rest.get("NUMA Affinity")
            if numa is not None and not _is_na(numa):
                if not numa.isdigit():
                    raise ValueError("nvidia-smi topo line %d: NUMA Affinity of %s is %r" % (lineno, name, numa))
                numa = int(numa)
            else:
                numa = None
            affinity = rest.get("CPU Affinity")
            gpus[int(name[3:])] = {
                "cpu_affinity": None if affinity is None or _is_na(affinity) else affinity,
                "numa_node": numa,
            }
    gpu_columns = [d for d in devices if d.startswith("GPU")]
    missing = [d for d in gpu_columns if d not in links]
    if missing:
        raise ValueError("nvidia-smi topo: no row for %s" % ", ".join(missing))
    for a in gpu_columns:
        for b in gpu_columns:
            if links[a][b] != links[b][a]:
                raise ValueError("nvidia-smi topo: %s-%s is %s but %s-%s is %s"
                                 % (a, b, links[a][b], b, a, links[b][a]))
    return {"devices": devices, "links": links, "gpus": gpus}


def nvlink_groups(topo):
    """Connected components of GPUs over NV# links, as sorted lists of GPU indexes.

    `topo` is the result of parse_topo_matrix (or its text). GPUs without any NVLink are
    left out: a group has at least two members. Groups are sorted by their first index.
    """
    if isinstance(topo, str):
        topo = parse_topo_matrix(topo)
    gpu_names = [d for d in topo["devices"] if d.startswith("GPU")]
    parent = {int(n[3:]): int(n[3:]) for n in gpu_names}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linked = set()
    for a in gpu_names:
        for b in gpu_names:
            if a != b and topo["links"][a][b].startswith("NV"):
                ia, ib = int(a[3:]), int(b[3:])
                linked.update((ia, ib))
                parent[find(ia)] = find(ib)
    groups = {}
    for i in sorted(linked):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def gpu_facts(query_text, topo_text, nvswitch_count=0):
    """The planner's GPU facts from the query CSV and the topology matrix (see module docstring)."""
    gpus = parse_query_gpu_csv(query_text)
    if not isinstance(nvswitch_count, int) or isinstance(nvswitch_count, bool) or nvswitch_count < 0:
        raise ValueError("nvswitch_count must be a whole number >= 0, got %r" % (nvswitch_count,))
    if not gpus:
        return {"driver_version": None, "gpus": [], "nvlink_groups": [], "nvswitch_count": nvswitch_count}
    versions = sorted({gpu["driver_version"] for gpu in gpus})
    if len(versions) != 1:
        raise ValueError("nvidia-smi query: GPUs report different driver versions %s" % ", ".join(versions))
    topo = parse_topo_matrix(topo_text)
    topo_indexes = sorted(topo["gpus"])
    query_indexes = [gpu["index"] for gpu in gpus]
    if topo_indexes != query_indexes:
        raise ValueError("nvidia-smi topo lists GPUs %s but the query lists GPUs %s" % (topo_indexes, query_indexes))
    out = []
    for gpu in gpus:
        out.append({
            "index": gpu["index"],
            "name": gpu["name"],
            "uuid": gpu["uuid"],
            "memory_total_mib": gpu["memory_total_mib"],
            "memory_reserved_mib": gpu["memory_reserved_mib"],
            "pci_bus_id": gpu["pci_bus_id"],
            "numa_node": topo["gpus"][gpu["index"]]["numa_node"],
        })
    return {"driver_version": versions[0], "gpus": out, "nvlink_groups": nvlink_groups(topo),
            "nvswitch_count": nvswitch_count}


_LSPCI_RE = re.compile(r"^(?P<slot>[0-9a-fA-F:.]+)\s+.*?\[(?P<cls>[0-9a-fA-F]{4})\]:\s.*"
                       r"\[(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\]")
_SYSFS_RE = re.compile(r"^(?P<slot>[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
                       r"(0x)?(?P<cls>[0-9a-fA-F]{4})[0-9a-fA-F]{2}\s+(0x)?(?P<vendor>[0-9a-fA-F]{4})"
                       r"\s+(0x)?(?P<device>[0-9a-fA-F]{4})\s*$")


def pci_inventory(text):
    """Count NVIDIA GPUs and NVSwitches in a PCI listing.

    Accepts `lspci -nn` lines ("18:00.0 3D controller [0302]: NVIDIA ... [10de:2330] (rev a1)")
    or sysfs lines "SLOT CLASS VENDOR DEVICE" as printed by the role from
    /sys/bus/pci/devices/*/{class,vendor,device} ("0000:18:00.0 0x030200 0x10de 0x2330").
    Returns {"gpu_count", "nvswitch_count", "gpus": [{"slot", "class", "device_id"}], "nvswitches": [...]}.
    """
    if not isinstance(text, str):
        raise ValueError("PCI listing must be text, got %s" % type(text).__name__)
    gpus, switches = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SYSFS_RE.match(line.strip()) or _LSPCI_RE.match(line.strip())
        if not match:
            raise ValueError("PCI listing line %d is neither `lspci -nn` nor 'SLOT CLASS VENDOR DEVICE': %r"
                             % (lineno, line))
        vendor = match.group("vendor").lower()
        cls = match.group("cls").lower()
        if vendor != NVIDIA_VENDOR:
            continue
        entry = {"slot": match.group("slot").lower(), "class": cls, "device_id": match.group("device").lower()}
        if cls in GPU_CLASSES:
            gpus.append(entry)
        elif cls == NVSWITCH_CLASS:
            switches.append(entry)
    return {"gpu_count": len(gpus), "nvswitch_count": len(switches), "gpus": gpus, "nvswitches": switches}
