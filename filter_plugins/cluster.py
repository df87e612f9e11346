"""Where the site's hosts reach each other: one host or several, the same rules.

A service that only clients on its own host use listens on loopback; as soon as a client is on
another host it listens on the host's cluster address too, and the firewall admits those clients
alone. Clients use 127.0.0.1 for a service on their own host and the cluster address otherwise.
"""

from ansible.errors import AnsibleFilterError

LOOPBACK = "127.0.0.1"


def appliance_host_address(host, hostvars):
    """The address the site's other hosts reach `host` at: appliance_cluster_address from the
    inventory, else the default IPv4 address its facts gave, else ansible_host."""
    if host not in hostvars:
        raise AnsibleFilterError("host %s is not in the inventory" % host)
    found = hostvars[host]
    facts = found.get("ansible_facts") or {}
    address = (found.get("appliance_cluster_address") or (facts.get("default_ipv4") or {}).get("address")
               or found.get("ansible_host"))
    if not address:
        raise AnsibleFilterError("cannot tell where the other hosts reach %s: set appliance_cluster_address for it "
                                 "in the inventory (its default IPv4 address is used when facts are gathered)" % host)
    return str(address)


def appliance_peer_address(host, me, hostvars):
    """How `me` reaches a service on `host`: loopback on its own host, the cluster address otherwise."""
    return LOOPBACK if host == me else appliance_host_address(host, hostvars)


def appliance_listen_addresses(me, client_hosts, hostvars, loopback=(LOOPBACK,)):
    """Loopback, and the cluster address as well when a client of the service is on another host."""
    addresses = list(loopback)
    if any(host != me for host in client_hosts):
        address = appliance_host_address(me, hostvars)
        if address not in addresses:
            addresses.append(address)
    return addresses


def appliance_remote_clients(me, client_hosts, hostvars):
    """The cluster addresses of a service's clients on other hosts (what the firewall admits)."""
    return sorted({appliance_host_address(host, hostvars) for host in client_hosts if host != me})


def appliance_engine_endpoints(gpu_hosts, gateway_hosts, hostvars):
    """Each GPU host's engine address: loopback and plain http while its own host is the only
    gateway, else its cluster address over TLS (the internal CA's certificate; the firewall admits
    the gateway hosts alone)."""
    def endpoint(host):
        if list(gateway_hosts) == [host]:
            return {"address": LOOPBACK, "scheme": "http"}
        return {"address": appliance_host_address(host, hostvars), "scheme": "https"}
    return {host: endpoint(host) for host in gpu_hosts}


def _group(groups, name):
    return list(groups.get(name) or [])


def appliance_cluster_admits(me, groups, hostvars, engine_ports=(), gateway_ports=(), redis_port=6379,
                             database_port=5432, pipeline_hosts=(), metrics_ports=None):
    """What this host's firewall admits from the site's other hosts, by service: its engines from the
    gateway hosts, its gateway instances from the chat hosts (nginx), Redis (first gateway host) from
    the other gateway hosts, PostgreSQL from the gateway, chat and GPU hosts (usage rows, chat
    data, GPU samples), the metrics of what runs here from the monitoring hosts, and every TCP
    port from the other hosts of this host's pipeline (a model over
    several hosts: Ray and vLLM's stages talk on ports they pick). A list of {service, ports,
    sources}, ports empty for every port; services with no remote client are left out."""
    gateway_hosts, gpu_hosts = _group(groups, "gateway_hosts"), _group(groups, "gpu_hosts")
    services = []
    if me in gpu_hosts:
        services.append(("engines", list(engine_ports), gateway_hosts))
    if me in gateway_hosts:
        services.append(("gateway", list(gateway_ports), _group(groups, "chat_hosts")))
        if gateway_hosts[0] == me:
            services.append(("redis", [redis_port], gateway_hosts))
    if me in _group(groups, "db_hosts"):
        services.append(("postgresql", [database_port], gateway_hosts + _group(groups, "chat_hosts") + gpu_hosts))
    if me in pipeline_hosts:
        services.append(("pipeline", [], list(pipeline_hosts)))
    if metrics_ports:
        services.append(("metrics", _metrics_ports(me, groups, metrics_ports, engine_ports, gateway_ports),
                         _group(groups, "monitoring_hosts")))
    admits = []
    for service, ports, clients in services:
        sources = appliance_remote_clients(me, clients, hostvars)
        if (ports or service == "pipeline") and sources:
            admits.append({"service": service, "ports": sorted(int(p) for p in ports), "sources": sources})
    return admits


def _metrics_ports(me, groups, ports, engine_ports, gateway_ports):
    """What the monitoring hosts scrape on `me`: node exporter everywhere, the other exporters where
    their service runs, the engines' and the gateway's own metrics."""
    wanted = [ports["node"]]
    if me in _group(groups, "chat_hosts"):
        wanted.append(ports["nginx"])
    if me in _group(groups, "db_hosts"):
        wanted.append(ports["postgresql"])
    if me in _group(groups, "gateway_hosts"):
        wanted += list(gateway_ports)
        if _group(groups, "gateway_hosts")[0] == me:
            wanted.append(ports["redis"])
    if me in _group(groups, "gpu_hosts"):
        wanted += [ports["dcgm"], *engine_ports]
    return wanted


class FilterModule:
    def filters(self):
        return {
            "appliance_host_address": appliance_host_address,
            "appliance_peer_address": appliance_peer_address,
            "appliance_listen_addresses": appliance_listen_addresses,
            "appliance_remote_clients": appliance_remote_clients,
            "appliance_engine_endpoints": appliance_engine_endpoints,
            "appliance_cluster_admits": appliance_cluster_admits,
        }
