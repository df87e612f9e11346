"""GPU facts parsers against nvidia-smi and PCI listings (fixtures: tests/fixtures/nvidia-smi/README.md)."""
import pathlib

import pytest

from llm_appliance.gpu_facts import (
    QUERY_ARG,
    gpu_facts,
    nvlink_groups,
    parse_query_gpu_csv,
    parse_topo_matrix,
    pci_inventory,
)

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi"


def fixture(name):
    return (FIXTURES / name).read_text()


def facts(system, nvswitch_count=0):
    return gpu_facts(fixture(system + ".query.csv"), fixture(system + ".topo.txt"), nvswitch_count)


def test_query_argument_matches_documented_fields():
    assert QUERY_ARG == "--query-gpu=index,name,uuid,memory.total,memory.reserved,pci.bus_id,driver_version"


def test_h100_sxm_8gpu_nvswitch():
    result = facts("h100-sxm-8gpu", nvswitch_count=4)
    assert result["driver_version"] == "550.54.15"
    assert result["nvswitch_count"] == 4
    assert result["nvlink_groups"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert [g["index"] for g in result["gpus"]] == list(range(8))
    assert [g["numa_node"] for g in result["gpus"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [g["pci_bus_id"] for g in result["gpus"]] == [
        "00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0",
        "00000000:9A:00.0", "00000000:AB:00.0", "00000000:BA:00.0", "00000000:DB:00.0"]
    assert result["gpus"][0] == {
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-8a3b1f0e-2c4d-4e5f-9a6b-7c8d9e0f1a2b",
        "memory_total_mib": 81559, "memory_reserved_mib": 535, "pci_bus_id": "00000000:18:00.0", "numa_node": 0}


def test_h100_4gpu_reference_nv6_with_nics():
    result = facts("h100-4gpu-nv6")
    assert result == {
        "driver_version": "570.124.06",
        "gpus": [
            {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0f1e2d3c-4b5a-4968-8776-655443322110",
             "memory_total_mib": 81559, "memory_reserved_mib": 535, "pci_bus_id": "00000000:19:00.0", "numa_node": 3},
            {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1f2e3d4c-5b6a-4a79-9887-766554433221",
             "memory_total_mib": 81559, "memory_reserved_mib": 535, "pci_bus_id": "00000000:3B:00.0", "numa_node": 1},
            {"index": 2, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-2f3e4d5c-6b7a-4b8a-a998-877665544332",
             "memory_total_mib": 81559, "memory_reserved_mib": 535, "pci_bus_id": "00000000:86:00.0", "numa_node": 7},
            {"index": 3, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-3f4e5d6c-7b8a-4c9b-baa9-988776655443",
             "memory_total_mib": 81559, "memory_reserved_mib": 535, "pci_bus_id": "00000000:AF:00.0", "numa_node": 5},
        ],
        "nvlink_groups": [[0, 1, 2, 3]],
        "nvswitch_count": 0,
    }


def test_h100_nvl_pairs():
    result = facts("h100-nvl-4gpu")
    assert result["driver_version"] == "580.95.05"
    assert result["nvlink_groups"] == [[0, 1], [2, 3]]
    assert [g["numa_node"] for g in result["gpus"]] == [0, 0, 1, 1]
    assert {g["memory_total_mib"] for g in result["gpus"]} == {95830}
    assert {g["name"] for g in result["gpus"]} == {"NVIDIA H100 NVL"}


def test_h100_pcie_no_nvlink_and_reserved_na():
    result = facts("h100-pcie-2gpu")
    assert result["nvlink_groups"] == []
    assert result["driver_version"] == "535.161.08"
    assert [g["memory_reserved_mib"] for g in result["gpus"]] == [None, None]
    assert [g["numa_node"] for g in result["gpus"]] == [0, 0]


def test_topo_reads_nic_rows_and_affinity():
    topo = parse_topo_matrix(fixture("h100-4gpu-nv6.topo.txt"))
    assert topo["devices"] == ["GPU0", "GPU1", "GPU2", "GPU3", "NIC0", "NIC1", "NIC2", "NIC3"]
    assert topo["links"]["NIC2"]["GPU2"] == "PIX"
    assert topo["gpus"][0] == {"cpu_affinity": "6,14,22,30", "numa_node": 3}


def test_topo_tab_separated_with_gpu_numa_id():
    topo = parse_topo_matrix(fixture("h100-nvl-4gpu.topo.txt"))
    assert topo["links"]["GPU2"]["GPU3"] == "NV12"
    assert topo["gpus"][3] == {"cpu_affinity": "32-63,96-127", "numa_node": 1}


def test_topo_without_numa_columns():
    text = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV4\t0-15\nGPU1\tNV4\t X \t0-15\n"
    topo = parse_topo_matrix(text)
    assert topo["gpus"][1] == {"cpu_affinity": "0-15", "numa_node": None}
    assert nvlink_groups(topo) == [[0, 1]]


def test_topo_numa_na_is_none():
    text = "\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-7\tN/A\n"
    assert parse_topo_matrix(text)["gpus"][0]["numa_node"] is None


def test_nvlink_groups_are_transitive():
    text = ("\tGPU0\tGPU1\tGPU2\tGPU3\n"
            "GPU0\t X \tNV2\tSYS\tSYS\n"
            "GPU1\tNV2\t X \tNV2\tSYS\n"
            "GPU2\tSYS\tNV2\t X \tSYS\n"
            "GPU3\tSYS\tSYS\tSYS\t X \n")
    assert nvlink_groups(text) == [[0, 1, 2]]


def test_single_gpu():
    query = "0, NVIDIA H100 PCIe, GPU-e5f6a7b8-c9d0-4e1f-8a3b-4c5d6e7f8091, 81559, 0, 00000000:41:00.0, 580.95.05\n"
    topo = "\tGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\nGPU0\t X \t0-31\t0\t\tN/A\n"
    result = gpu_facts(query, topo)
    assert result["nvlink_groups"] == []
    assert result["gpus"][0]["memory_reserved_mib"] == 0


def test_no_gpus_gives_empty_facts():
    assert gpu_facts("", "") == {"driver_version": None, "gpus": [], "nvlink_groups": [], "nvswitch_count": 0}


def test_query_with_header_and_units():
    text = ("index, name, uuid, memory.total [MiB], memory.reserved [MiB], pci.bus_id, driver_version\n"
            "0, NVIDIA H100 80GB HBM3, GPU-8a3b1f0e-2c4d-4e5f-9a6b-7c8d9e0f1a2b, 81559 MiB, [N/A], "
            "0000:18:00.0, 550.54.15\n")
    gpus = parse_query_gpu_csv(text)
    assert gpus[0]["memory_total_mib"] == 81559
    assert gpus[0]["memory_reserved_mib"] is None
    assert gpus[0]["pci_bus_id"] == "00000000:18:00.0"


@pytest.mark.parametrize("text, message", [
    ("0, NVIDIA H100, GPU-ab, 81559, 0, 00000000:18:00.0\n", "line 1: 6 fields, expected 7"),
    ("x, NVIDIA H100, GPU-ab, 81559, 0, 00000000:18:00.0, 550.54.15\n", "line 1: index is 'x'"),
    ("\n0, NVIDIA H100, GPU-ab, 80GB, 0, 00000000:18:00.0, 550.54.15\n", "line 2: memory.total is '80GB'"),
    ("0, NVIDIA H100, nope, 81559, 0, 00000000:18:00.0, 550.54.15\n", "line 1: uuid is 'nope'"),
    ("0, NVIDIA H100, GPU-ab, 81559, 0, 18:00.0, 550.54.15\n", "line 1: pci.bus_id is '18:00.0'"),
    ("0, NVIDIA H100, GPU-ab, 81559, 0, 00000000:18:00.0, ERR!\n", "line 1: driver_version is 'ERR!'"),
    ("0, A, GPU-ab, 1, 0, 00000000:18:00.0, 550.54.15\n0, A, GPU-ac, 1, 0, 00000000:19:00.0, 550.54.15\n",
     "line 2: GPU index 0 appears twice"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", "line 1: 1 fields"),
])
def test_malformed_query(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_query_gpu_csv(text)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("No devices were found\n", "does not start with GPU0"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV4\n", "no row for GPU1"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tNV4\n", "line 3: row GPU1 has 1 link cells, expected 2"),
    ("\tGPU0\tGPU1\nGPU0\t X \tFOO\nGPU1\tFOO\t X \n", "line 2: row GPU0 column GPU1 is 'FOO'"),
    ("\tGPU0\tGPU1\nGPU0\tNV4\t X \nGPU1\tNV4\t X \n", "line 2: row GPU0 does not have X on the diagonal"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU2\tNV4\t X \n", "line 3: row 'GPU2' is not one of the columns"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tSYS\t X \n", "GPU0-GPU1 is NV4 but GPU1-GPU0 is SYS"),
    ("\tGPU0\tNUMA Affinity\nGPU0\t X \tzero\n", "NUMA Affinity of GPU0 is 'zero'"),
])
def test_malformed_topo(text, message):
    with pytest.raises(ValueError, match=message):
        parse_topo_matrix(text)


def test_query_and_topo_disagree():
    topo = fixture("h100-pcie-2gpu.topo.txt")
    query = fixture("h100-sxm-8gpu.query.csv")
    with pytest.raises(ValueError, match=r"topo lists GPUs \[0, 1\] but the query lists GPUs \[0, 1, 2"):
        gpu_facts(query, topo)


def test_mixed_driver_versions():
    query = ("0, A, GPU-ab, 1, 0, 00000000:18:00.0, 550.54.15\n"
             "1, A, GPU-ac, 1, 0, 00000000:19:00.0, 550.54.14\n")
    with pytest.raises(ValueError, match="different driver versions"):
        gpu_facts(query, "\tGPU0\tGPU1\nGPU0\t X \tSYS\nGPU1\tSYS\t X \n")


@pytest.mark.parametrize("bad", [-1, "4", True])
def test_bad_nvswitch_count(bad):
    with pytest.raises(ValueError, match="nvswitch_count"):
        gpu_facts("", "", bad)


def test_pci_inventory_lspci_hgx():
    inv = pci_inventory(fixture("hgx-h100-8gpu.lspci.txt"))
    assert inv["gpu_count"] == 8
    assert inv["nvswitch_count"] == 4
    assert inv["gpus"][0] == {"slot": "18:00.0", "class": "0302", "device_id": "2330"}
    assert inv["nvswitches"][0] == {"slot": "05:00.0", "class": "0680", "device_id": "22a3"}


def test_pci_inventory_sysfs():
    inv = pci_inventory(fixture("h100-nvl-4gpu.sysfs.txt"))
    assert (inv["gpu_count"], inv["nvswitch_count"]) == (4, 0)
    assert [g["slot"] for g in inv["gpus"]] == ["0000:17:00.0", "0000:31:00.0", "0000:b1:00.0", "0000:ca:00.0"]
    assert {g["device_id"] for g in inv["gpus"]} == {"2321"}


def test_pci_inventory_no_gpu():
    assert pci_inventory(fixture("no-gpu.sysfs.txt")) == {"gpu_count": 0, "nvswitch_count": 0,
                                                          "gpus": [], "nvswitches": []}
    assert pci_inventory("")["gpu_count"] == 0


def test_pci_inventory_bad_line():
    with pytest.raises(ValueError, match="PCI listing line 2 is neither"):
        pci_inventory("0000:00:00.0 0x060000 0x8086 0x1237\ngarbage here\n")


def test_filter_adapter():
    pytest.importorskip("ansible")
    from ansible.errors import AnsibleFilterError

    from filter_plugins.gpu_facts import FilterModule
    filters = FilterModule().filters()
    result = filters["nvidia_gpu_facts"](fixture("h100-nvl-4gpu.query.csv"), fixture("h100-nvl-4gpu.topo.txt"), "0")
    assert result["nvlink_groups"] == [[0, 1], [2, 3]]
    assert filters["nvidia_pci_inventory"](fixture("no-gpu.sysfs.txt"))["gpu_count"] == 0
    with pytest.raises(AnsibleFilterError, match="nvidia_gpu_facts: nvidia-smi query line 1"):
        filters["nvidia_gpu_facts"]("garbage", "")
