"""Prometheus scrape jobs for the site: every engine of the plan, every gateway instance, and the
exporters of each host by its groups. Each target is labelled with `host` (the inventory name), and
engines with `model`, so that rules and dashboards speak of hosts and models, not addresses.
"""

from __future__ import annotations

from typing import Any

DEFAULT_PORTS = {"node": 9100, "nginx": 9113, "postgresql": 9187, "redis": 9121, "dcgm": 9400,
                 "prometheus": 9090, "alertmanager": 9093}


def _target(address: str, port: int) -> str:
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def _static(targets: list[tuple[str, int, dict[str, str]]]) -> list[dict[str, Any]]:
    return [{"targets": [_target(address, port)], "labels": labels} for address, port, labels in targets]


def scrape_configs(addresses: dict[str, str], groups: dict[str, list[str]], site_plan: dict[str, Any],
                   gateway_ports: list[int], dcgm_hosts: list[str], engine_key_file: str, ca_file: str,
                   ports: dict[str, int] | None = None, redis_host: str | None = None) -> list[dict[str, Any]]:
    """addresses: how the monitoring host reaches each host (loopback for itself)."""
    port = {**DEFAULT_PORTS, **(ports or {})}

    def hosts(group: str) -> list[str]:
        return [h for h in groups.get(group) or [] if h in addresses]

    me = [h for h, a in addresses.items() if a == "127.0.0.1"]
    jobs: list[dict[str, Any]] = []
    engines_by_scheme: dict[str, list[tuple[str, int, dict[str, str]]]] = {}
    for host, host_plan in sorted((site_plan.get("hosts") or {}).items()):
        if host not in addresses:
            continue
        scheme = "http" if addresses[host] == "127.0.0.1" else host_plan.get("scheme", "http")
        for model in host_plan.get("models") or []:
            engines_by_scheme.setdefault(scheme, []).append(
                (addresses[host], int(model["port"]), {"host": host, "model": model["name"]}))
    for scheme, targets in sorted(engines_by_scheme.items()):
        job: dict[str, Any] = {
            "job_name": "vllm" if scheme == "http" else "vllm-tls",
            "scheme": scheme,
            "metrics_path": "/metrics",
            # vLLM's metrics need no key today; it is sent so that a release that guards them keeps working.
            "authorization": {"type": "Bearer", "credentials_file": engine_key_file},
            "static_configs": _static(targets),
            # One job name in rules and dashboards whatever the transport.
            "relabel_configs": [{"target_label": "job", "replacement": "vllm"}],
        }
        if scheme == "https":
            job["tls_config"] = {"ca_file": ca_file}
        jobs.append(job)
    gateway = [(addresses[h], int(p), {"host": h}) for h in hosts("gateway_hosts") for p in gateway_ports]
    if gateway:
        jobs.append({"job_name": "gateway", "static_configs": _static(gateway)})
    every_host = sorted(addresses)
    jobs.append({"job_name": "node", "static_configs": _static(
        [(addresses[h], port["node"], {"host": h}) for h in every_host])})
    for job_name, group in (("nginx", "chat_hosts"), ("postgresql", "db_hosts")):
        targets = [(addresses[h], port[job_name], {"host": h}) for h in hosts(group)]
        if targets:
            jobs.append({"job_name": job_name, "static_configs": _static(targets)})
    if redis_host and redis_host in addresses:
        jobs.append({"job_name": "redis", "static_configs": _static(
            [(addresses[redis_host], port["redis"], {"host": redis_host})])})
    dcgm = [(addresses[h], port["dcgm"], {"host": h}) for h in dcgm_hosts if h in addresses]
    if dcgm:
        jobs.append({"job_name": "dcgm", "static_configs": _static(dcgm)})
    for job_name in ("prometheus", "alertmanager"):
        jobs.append({"job_name": job_name, "static_configs": _static(
            [("127.0.0.1", port[job_name], {"host": h}) for h in me])})
    return jobs
