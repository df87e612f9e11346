"""Who reaches whom, from the inventory groups (filter_plugins/cluster.py)."""
import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.test_plan import load_filter_plugin

cluster = load_filter_plugin("cluster")

HOSTVARS = {
    "front": {"ansible_host": "front.example.internal", "ansible_facts": {"default_ipv4": {"address": "10.0.0.10"}}},
    "gw2": {"ansible_host": "10.0.0.20"},
    "gpu1": {"ansible_host": "10.0.0.11", "appliance_cluster_address": "192.168.50.11"},
    "gpu2": {"ansible_host": "10.0.0.12"},
    "db": {"ansible_host": "10.0.0.30"},
}


def test_the_cluster_address_comes_from_the_inventory_then_the_facts_then_ansible_host():
    assert cluster.appliance_host_address("gpu1", HOSTVARS) == "192.168.50.11"
    assert cluster.appliance_host_address("front", HOSTVARS) == "10.0.0.10"
    assert cluster.appliance_host_address("gpu2", HOSTVARS) == "10.0.0.12"
    assert cluster.appliance_peer_address("gpu2", "gpu2", HOSTVARS) == "127.0.0.1"
    with pytest.raises(AnsibleFilterError, match="cannot tell where the other hosts reach lonely: set "
                                                 "appliance_cluster_address"):
        cluster.appliance_host_address("lonely", {"lonely": {}})


def test_services_listen_beyond_loopback_only_for_clients_elsewhere_and_engines_there_over_tls():
    assert cluster.appliance_listen_addresses("front", ["front"], HOSTVARS) == ["127.0.0.1"]
    assert cluster.appliance_listen_addresses("front", ["front", "gpu1"], HOSTVARS,
                                              ["127.0.0.1", "::1"]) == ["127.0.0.1", "::1", "10.0.0.10"]
    endpoints = cluster.appliance_engine_endpoints(["gpu1", "gpu2"], ["gpu1"], HOSTVARS)
    assert endpoints == {"gpu1": {"address": "127.0.0.1", "scheme": "http"},
                         "gpu2": {"address": "10.0.0.12", "scheme": "https"}}


def test_each_service_admits_exactly_the_hosts_that_use_it():
    groups = {"gpu_hosts": ["gpu1", "gpu2"], "gateway_hosts": ["front", "gw2"], "chat_hosts": ["front"],
              "db_hosts": ["db"]}

    def admits(host):
        return {a["service"]: (a["ports"], a["sources"]) for a in cluster.appliance_cluster_admits(
            host, groups, HOSTVARS, engine_ports=[8002, 8001], gateway_ports=[4000, 4001])}

    assert admits("gpu1") == {"engines": ([8001, 8002], ["10.0.0.10", "10.0.0.20"])}
    # The first gateway host runs Redis for the other; nginx is local to it, remote to gw2.
    assert admits("front") == {"redis": ([6379], ["10.0.0.20"])}
    assert admits("gw2") == {"gateway": ([4000, 4001], ["10.0.0.10"])}
    assert admits("db") == {"postgresql": ([5432], ["10.0.0.10", "10.0.0.12", "10.0.0.20", "192.168.50.11"])}
    # One server in every group: nothing from outside.
    single = {name: ["front"] for name in groups}
    assert cluster.appliance_cluster_admits("front", single, HOSTVARS, engine_ports=[8001], gateway_ports=[4000]) == []


def test_the_hosts_of_a_pipeline_admit_each_other_on_every_port():
    """Ray and vLLM's stages pick their own ports: a model's pipeline hosts admit each other's TCP, nobody else's."""
    groups = {"gpu_hosts": ["gpu1", "gpu2"], "gateway_hosts": ["front"], "chat_hosts": ["front"], "db_hosts": ["db"]}
    admits = cluster.appliance_cluster_admits("gpu2", groups, HOSTVARS, engine_ports=[8001],
                                              pipeline_hosts=["gpu1", "gpu2"])
    assert {"service": "pipeline", "ports": [], "sources": ["192.168.50.11"]} in admits
    assert not [a for a in cluster.appliance_cluster_admits("gpu2", groups, HOSTVARS, engine_ports=[8001])
                if a["service"] == "pipeline"]
