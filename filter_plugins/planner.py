"""Ansible adapters over llm_appliance.plan: the site's plan, and what each role takes from it."""

from ansible.errors import AnsibleFilterError

from llm_appliance.plan.cli import UsageError, attach_configs, format_plan
from llm_appliance.plan.decide import host_plan, plan_cluster
from llm_appliance.plan.engines import check_engine_driver
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.speculative import with_draft_path


def appliance_plan(models, gpus_by_host, engine="cuda", vllm_version="0.32.0", base_port=8001,
                   gpu_memory_utilization=0.90, cpu_kvcache_space_gib=1, endpoints=None):
    """The site's plan: the catalog (entries carrying their parsed `config`) over every GPU host's
    GPUs (host -> facts or declared). `endpoints` (host -> {address, scheme}) says where the gateway
    reaches each host's engines."""
    try:
        plan = plan_cluster(list(models), dict(gpus_by_host), engine=engine, vllm_version=str(vllm_version),
                            base_port=int(base_port), gpu_memory_utilization=float(gpu_memory_utilization),
                            cpu_kvcache_space_gib=float(cpu_kvcache_space_gib))
    except PlanError as exc:
        raise AnsibleFilterError("The plan does not work, nothing was changed: %s" % exc) from None
    for host, share in plan["hosts"].items():
        share.update((endpoints or {}).get(host) or {"address": "127.0.0.1", "scheme": "http"})
    return plan


def appliance_plan_hosts(gpu_hosts, hostvars, engine="cuda"):
    """host -> its GPUs, for every GPU host. The plan covers the whole site even when a run is
    limited to some hosts: a GPU host outside the run counts with its declared GPUs (appliance_gpus)."""
    result, missing = {}, []
    for host in gpu_hosts:
        found = hostvars[host].get("appliance_plan_gpus")
        if found is None:
            found = {} if engine == "cpu" else hostvars[host].get("appliance_gpus") or None
        if found is None:
            missing.append(host)
        result[host] = found
    if missing:
        raise AnsibleFilterError(
            "The site's plan covers every GPU host, but %s %s outside this run and %s no GPUs declared: run "
            "without --limit, or declare appliance_gpus for %s in the inventory. Nothing was changed."
            % (", ".join(missing), "is" if len(missing) == 1 else "are", "has" if len(missing) == 1 else "have",
               "it" if len(missing) == 1 else "them"))
    return result


def appliance_host_plan(plan, host):
    """One GPU host's share of the site's plan (engine, vllm_version, models, free_gpus)."""
    return host_plan(plan, host)


def appliance_host_catalog(models, plan):
    """The catalog entries a host stores weights for: those planned on it, those it runs a pipeline
    stage of (Ray's workers there load their layers from the same path), their drafts, and the
    retired ones."""
    planned = {m["name"] for m in plan["models"]} | {s["model"] for s in plan.get("pipeline_stages", [])}
    # The drafts the host's models speculate with.
    planned |= {m["speculative"]["draft"] for m in plan["models"] if (m.get("speculative") or {}).get("draft")}
    return [m for m in models if m["name"] in planned or m.get("state", "present") == "absent"]


def appliance_engine_driver_check(engine, vllm_version, driver_branch, driver_version=None):
    """A one-line summary when the engine's CUDA build runs on the driver; an error naming both otherwise."""
    try:
        return check_engine_driver(str(engine), str(vllm_version), driver_branch, driver_version or None)
    except PlanError as exc:
        raise AnsibleFilterError("%s. Nothing was changed." % exc) from None


def appliance_model_configs(models, base_dir="."):
    """The catalog with each present model's config.json read from the controller."""
    try:
        return attach_configs(list(models), str(base_dir))
    except UsageError as exc:
        raise AnsibleFilterError("%s. Nothing was changed." % exc) from None


def appliance_plan_text(plan):
    """The plan as an operator reads it."""
    return format_plan(plan)


def appliance_vllm_units(plan, model_paths):
    """One entry per planned model for the vllm role: name, port, model_path, args, environment."""
    units = []
    for model in plan["models"]:
        if model["name"] not in model_paths:
            raise AnsibleFilterError("model %s is planned but not stored on the host" % model["name"])
        try:
            args = with_draft_path(model["vllm_args"], model_paths)
        except PlanError as exc:
            raise AnsibleFilterError("model %s: %s" % (model["name"], exc)) from None
        units.append({
            "name": model["name"],
            "port": model["port"],
            "model_path": model_paths[model["name"]],
            "served_model_name": model["name"],
            "args": args,
            "environment": model["environment"],
            # Checked before each start (ExecStartPre): these GPUs, this kind, enough free memory.
            "gpu_check": model.get("gpu_devices", []),
            "gpu_memory_utilization": model["gpu_memory_utilization"],
            # A model over several hosts: this engine heads the pipeline on their Ray cluster.
            **({"nodes": model["nodes"]} if model.get("nodes") else {}),
        })
    return units


def appliance_litellm_backends(plan):
    """One gateway backend per planned model and replica: its name, aliases, URL and profile."""
    return [{"name": m["name"], "aliases": m["aliases"], "profile": m["profile"], "served_model_name": m["name"],
             "host": host, "api_base": "%s://%s:%d/v1" % (plan["hosts"][host].get("scheme", "http"),
                                                         plan["hosts"][host].get("address", "127.0.0.1"), m["port"])}
            for m in plan["models"] for host in m["hosts"]]


class FilterModule:
    def filters(self):
        return {
            "appliance_plan": appliance_plan,
            "appliance_host_plan": appliance_host_plan,
            "appliance_plan_hosts": appliance_plan_hosts,
            "appliance_host_catalog": appliance_host_catalog,
            "appliance_model_configs": appliance_model_configs,
            "appliance_engine_driver_check": appliance_engine_driver_check,
            "appliance_plan_text": appliance_plan_text,
            "appliance_vllm_units": appliance_vllm_units,
            "appliance_litellm_backends": appliance_litellm_backends,
        }
