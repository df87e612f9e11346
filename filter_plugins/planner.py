"""Ansible adapters over llm_appliance.plan: the site's plan, and what each role takes from it."""

from ansible.errors import AnsibleFilterError

from llm_appliance.plan.cli import UsageError, attach_configs, format_plan
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.engines import check_engine_driver
from llm_appliance.plan.errors import PlanError


def appliance_plan(models, gpus=None, engine="cuda", vllm_version="0.32.0", base_port=8001,
                   gpu_memory_utilization=0.90, cpu_kvcache_space_gib=1):
    """Plan the catalog (entries carrying their parsed `config`) on the GPUs (facts or declared)."""
    try:
        return plan_site(list(models), gpus or {}, engine=engine, vllm_version=str(vllm_version),
                         base_port=int(base_port), gpu_memory_utilization=float(gpu_memory_utilization),
                         cpu_kvcache_space_gib=float(cpu_kvcache_space_gib))
    except PlanError as exc:
        raise AnsibleFilterError("The plan does not work, nothing was changed: %s" % exc) from None


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
        units.append({
            "name": model["name"],
            "port": model["port"],
            "model_path": model_paths[model["name"]],
            "served_model_name": model["name"],
            "args": model["vllm_args"],
            "environment": model["environment"],
            # Checked before each start (ExecStartPre): these GPUs, this kind, enough free memory.
            "gpu_check": model.get("gpu_devices", []),
            "gpu_memory_utilization": model["gpu_memory_utilization"],
        })
    return units


def appliance_litellm_backends(plan, host="127.0.0.1"):
    """One gateway backend per planned model: its name, aliases, URL and profile."""
    return [{"name": m["name"], "aliases": m["aliases"], "profile": m["profile"],
             "served_model_name": m["name"], "api_base": "http://%s:%d/v1" % (host, m["port"])}
            for m in plan["models"]]


class FilterModule:
    def filters(self):
        return {
            "appliance_plan": appliance_plan,
            "appliance_model_configs": appliance_model_configs,
            "appliance_engine_driver_check": appliance_engine_driver_check,
            "appliance_plan_text": appliance_plan_text,
            "appliance_vllm_units": appliance_vllm_units,
            "appliance_litellm_backends": appliance_litellm_backends,
        }
