"""From the site's catalog and its GPUs to a plan: per model the GPUs, tensor-parallel size,
memory settings, vLLM arguments, the predicted KV capacity and decode speed, and why."""
import collections
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from llm_appliance.plan.config import ModelShape, parse_config
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import kv_dtype_bytes, parse_version
from llm_appliance.plan.placement import ModelRequest, Placement, Site, place, place_across_hosts
from llm_appliance.plan.speculative import DRAFT_PROFILE, read_speculation, speculative_argument
from llm_appliance.plan.speed import DecodePrediction, gpu_bandwidth_gbps, gpu_peak_tflops, predict_decode, speed_reason

# --- settings per profile ---------------------------------------------------------------------

# What each workload needs. typical_request_tokens x target_concurrency KV tokens must fit.
PROFILES: dict[str, dict[str, int | bool]] = {
    # IDE completion: short prompts, bursts of 20-40 requests in 6 s, latency first.
    "completion": {"max_model_len": 16384, "max_num_seqs": 64, "max_num_batched_tokens": 8192,
                   "typical_request_tokens": 2048, "target_concurrency": 40, "prefix_caching": True},
    # Chat: long conversations and documents.
    "chat": {"max_model_len": 32768, "max_num_seqs": 32, "max_num_batched_tokens": 8192,
             "typical_request_tokens": 8192, "target_concurrency": 8, "prefix_caching": True},
    # Evaluation models: best effort, smallest footprint.
    "eval": {"max_model_len": 8192, "max_num_seqs": 16, "max_num_batched_tokens": 4096,
             "typical_request_tokens": 4096, "target_concurrency": 2, "prefix_caching": False},
}


def _settings(entry: dict[str, Any], profile: str, shape: ModelShape) -> dict[str, Any]:
    """The profile's settings with the catalog's overrides; max_model_len capped by the config."""
    settings: dict[str, Any] = dict(PROFILES[profile])
    for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "target_concurrency",
                "typical_request_tokens", "prefix_caching"):
        if entry.get(key) is not None:
            settings[key] = entry[key]
    settings["max_model_len"] = min(int(settings["max_model_len"]), shape.max_position)
    settings["max_num_batched_tokens"] = max(int(settings["max_num_batched_tokens"]), 1)
    return settings


def _request(entry: dict[str, Any], drafts: dict[str, dict[str, Any]]) -> ModelRequest:
    """A catalog entry with its shape, its settings, the KV tokens its profile's target needs and
    its speculative decoding (drafts: the catalog's present draft entries by name)."""
    shape = parse_config(entry["config"], entry["name"])
    profile = entry.get("profile", "chat")
    settings = _settings(entry, profile, shape)
    speculation = read_speculation(entry, drafts)
    if speculation and speculation.draft and entry.get("nodes", 1) != 1:
        raise PlanError("model %s: a draft model over several hosts (nodes %s) is not planned; use speculative "
                        "method ngram or one host" % (entry["name"], entry.get("nodes")))
    return ModelRequest(entry, shape, profile, settings,
                        settings["typical_request_tokens"] * settings["target_concurrency"], speculation)


def _profile_reason(request: ModelRequest) -> str:
    """The plan's first line on a model: the settings its profile and the catalog gave it."""
    settings = request.settings
    return ("profile %s: max_model_len %d, up to %d sequences, %d tokens per batch"
            % (request.profile, settings["max_model_len"], settings["max_num_seqs"],
               settings["max_num_batched_tokens"]))


# --- the catalog ------------------------------------------------------------------------------

# Every field a catalog entry may carry; anything else is a typo that would silently be ignored.
CATALOG_FIELDS = {
    # identity and lifecycle
    "name", "state", "profile", "aliases", "port", "purge_weights",
    # where the weights come from (model_store)
    "source", "controller_path", "hf_repo", "revision", "config_path", "config", "weights_bytes", "trust_pickle",
    # engine settings
    "quantization", "kv_cache_dtype", "dtype", "block_size", "tool_call_parser", "speculative", "extra_args",
    # planner overrides
    "max_model_len", "max_num_seqs", "max_num_batched_tokens", "target_concurrency",
    "typical_request_tokens", "prefix_caching", "tensor_parallel_size", "gpu_memory_utilization",
    "share_gpus_with", "cpu_kvcache_space_gib",
    # several GPU hosts: how many copies, on which hosts, and over how many hosts one copy runs
    "replicas", "hosts", "nodes",
}


_Key = TypeVar("_Key", str, int)


def _repeated(values: Iterable[_Key]) -> list[_Key]:
    return sorted(value for value, count in collections.Counter(values).items() if count > 1)


def check_catalog(models: Sequence[object]) -> None:
    """Refuse entries without a name, repeated names and unknown fields, naming each."""
    problems = []
    names: list[str] = []
    for position, model in enumerate(models, 1):
        if not isinstance(model, dict) or not model.get("name"):
            problems.append("entry %d has no name" % position)
            continue
        names.append(model["name"])
        unknown = sorted(set(model) - CATALOG_FIELDS)
        if unknown:
            problems.append("model %s: unknown field%s %s (known: %s)" % (
                model["name"], "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(CATALOG_FIELDS))))
        if model.get("state", "present") not in ("present", "absent"):
            problems.append("model %s: state must be present or absent, not %r" % (model["name"], model.get("state")))
    duplicates = _repeated(names)
    if duplicates:
        problems.append("the catalog names %s more than once: model names must be unique" % ", ".join(duplicates))
    if problems:
        raise PlanError("; ".join(problems))


def _ports(models: list[dict[str, Any]], base_port: int) -> dict[str, int]:
    """Each catalog entry's port: its own `port`, else the next free one from base_port in catalog
    order. Retired entries (state: absent) keep their place, so adding or retiring one model
    moves no other model's port (which would restart that model's unit)."""
    explicit = [int(m["port"]) for m in models if m.get("port")]
    taken = set(explicit)
    clashes = _repeated(explicit)
    if clashes:
        raise PlanError("the catalog gives port %s to more than one model: each model needs its own port"
                        % ", ".join(str(p) for p in clashes))
    ports: dict[str, int] = {}
    next_port = base_port
    for model in models:
        if model.get("port"):
            ports[model["name"]] = int(model["port"])
            continue
        while next_port in taken:
            next_port += 1
        ports[model["name"]] = next_port
        taken.add(next_port)
    return ports


def _check_present(present: list[dict[str, Any]]) -> None:
    """Refuse, before anything is placed, a present model with an unknown profile or no config.json."""
    for model in present:
        if model.get("profile", "chat") not in PROFILES and model.get("profile") != DRAFT_PROFILE:
            raise PlanError("model %s: profile %r is not one of %s" % (
                model["name"], model.get("profile"), ", ".join(sorted(PROFILES) + [DRAFT_PROFILE])))
        if model.get("profile") == DRAFT_PROFILE and model.get("speculative"):
            raise PlanError("model %s: a draft (profile draft) is not served and cannot have speculative "
                            "decoding of its own" % model["name"])
        if not isinstance(model.get("config"), dict):
            raise PlanError("model %s: its config.json was not read (check config_path or the model store)"
                            % model.get("name"))


def _placement_order(present: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Larger models first: they are the hardest to place. Shared models follow their partner."""
    return sorted(present, key=lambda m: (bool(m.get("share_gpus_with")),
                                          -(m.get("weights_bytes") or
                                            parse_config(m["config"], m["name"]).params_estimate)))


# --- decode speed -----------------------------------------------------------------------------

def _interconnect(gpus: list[int], site: Site) -> str:
    """nvlink when the model's GPUs are one GPU or inside one NVLink group, else pcie."""
    if len(gpus) <= 1 or any(set(gpus) <= set(group) for group in site.nvlink_groups):
        return "nvlink"
    return "pcie"


def _predict_speed(request: ModelRequest, placement: Placement, site: Site,
                   target: float) -> tuple[DecodePrediction | None, str | None]:
    """Tokens/s per stream on the placed GPUs and how many streams keep the target (None on the
    CPU engine), and the plan's line on it: meets the target, or what would reach it.

    The context is half the profile's typical request (a stream's average over its reply); the
    streams are capped by max_num_seqs and by the requests of typical size the KV cache holds.
    Pipeline stages run one after another for each token: every stage's weights are read (the
    network hop between hosts comes on top and is not modelled)."""
    if not placement.gpus:
        return None, None
    gpu = site.by_index[placement.gpus[0]]
    entry, settings = request.entry, request.settings
    typical = int(settings["typical_request_tokens"])
    most = min(int(settings["max_num_seqs"]), placement.estimate.kv_cache_tokens // max(typical, 1))
    prediction = predict_decode(
        request.shape, weights_bytes=entry.get("weights_bytes"), tensor_parallel_size=placement.tensor_parallel_size,
        bandwidth_gbps=gpu_bandwidth_gbps(gpu), quantization=entry.get("quantization", ""),
        interconnect=_interconnect(placement.gpus, site),
        context_tokens=typical // 2,
        kv_dtype_bytes=kv_dtype_bytes(request.shape, entry.get("kv_cache_dtype"), entry.get("dtype", "auto")),
        peak_tflops=gpu_peak_tflops(gpu), target=target, most_streams=most)
    return prediction, speed_reason(prediction, request.shape, entry, len(site.by_index), target)


def _speculation_reason(request: ModelRequest, placement: Placement) -> str | None:
    """The plan's line on speculative decoding: what it costs here, and what it may gain."""
    speculation = request.speculation
    if speculation is None:
        return None
    record = speculation.record()
    cost = "no GPU memory (the lookup runs on the CPU)"
    if speculation.draft:
        cost = ("draft %s: %.2f GiB per GPU for its weights and unmeasured buffers, its KV cache in the model's"
                % (speculation.draft, placement.estimate.draft_gib))
    return ("speculative decoding %s, %d tokens per step: %s; published: %s (%s); not counted in the speed above"
            % (speculation.method, speculation.num_speculative_tokens, cost, record["expected_effect"],
               record["source"]))


def _reasons(request: ModelRequest, placement: Placement, speed_note: str | None) -> list[str]:
    notes = [placement.estimate.caveat, speed_note, _speculation_reason(request, placement)]
    return [_profile_reason(request)] + placement.reasons + [note for note in notes if note]


# --- rendering: vLLM's arguments and environment ----------------------------------------------

def _quantization_argument(quantization: str, vllm_version: str) -> str:
    """The catalog's quantization as this vLLM names it: from 0.32 (model_executor/model_loader/
    weight_utils.py) runtime `fp8` is a deprecated alias of `fp8_per_tensor`."""
    if quantization == "fp8" and parse_version(vllm_version) >= (0, 32):
        return "fp8_per_tensor"
    return quantization


def vllm_args(request: ModelRequest, placement: Placement, engine: str, vllm_version: str) -> list[str]:
    """`vllm serve` arguments for the decision, so the unit starts with what the plan computed."""
    settings, entry = request.settings, request.entry
    args = ["--max-model-len", str(settings["max_model_len"]),
            "--max-num-seqs", str(settings["max_num_seqs"]),
            "--max-num-batched-tokens", str(settings["max_num_batched_tokens"])]
    if engine != "cpu":
        assert placement.gpu_memory_utilization is not None   # set on every GPU placement
        args += ["--tensor-parallel-size", str(placement.tensor_parallel_size),
                 "--gpu-memory-utilization", "%.2f" % placement.gpu_memory_utilization]
        if placement.nodes:
            # One stage per host on the Ray cluster of those hosts; from 0.32 vLLM no longer picks
            # Ray by itself.
            args += ["--pipeline-parallel-size", str(placement.pipeline_parallel_size),
                     "--distributed-executor-backend", "ray"]
    if entry.get("quantization"):
        args += ["--quantization", _quantization_argument(entry["quantization"], vllm_version)]
    if entry.get("kv_cache_dtype", "auto") != "auto":
        args += ["--kv-cache-dtype", entry["kv_cache_dtype"]]
    if entry.get("dtype", "auto") != "auto":
        args += ["--dtype", entry["dtype"]]
    args.append("--enable-prefix-caching" if settings["prefix_caching"] else "--no-enable-prefix-caching")
    if entry.get("tool_call_parser"):
        # Clients that send OpenAI tool definitions (IDE agents, the chat's native tools) get
        # HTTP 400 from vLLM unless the model's own tool-call format is parsed.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", str(entry["tool_call_parser"])]
    if request.speculation:
        args += speculative_argument(request.speculation)
    args += [str(a) for a in entry.get("extra_args", [])]
    return args


def vllm_environment(placement: Placement, engine: str) -> dict[str, str]:
    """The engine's environment: its KV space on the CPU, its GPUs by bus order on CUDA."""
    environment = {}
    if engine == "cpu":
        estimate = placement.estimate
        environment["VLLM_CPU_KVCACHE_SPACE"] = str(int(estimate.requested_gib)) if float(
            estimate.requested_gib).is_integer() else str(estimate.requested_gib)
    else:
        # CUDA numbers GPUs fastest first unless told otherwise; the plan uses nvidia-smi's (bus) order.
        environment["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in placement.gpus)
    return environment


# --- the plan ---------------------------------------------------------------------------------

def _plan_record(request: ModelRequest, placement: Placement, site: Site, port: int,
                 decode: DecodePrediction | None, reasons: list[str]) -> dict[str, Any]:
    """One model's entry of the plan: what the roles, the gateway and the operator read."""
    args = vllm_args(request, placement, site.engine, site.vllm_version)
    environment = vllm_environment(placement, site.engine)
    settings, entry, estimate, gpu_set = request.settings, request.entry, placement.estimate, placement.gpus
    return {
        "name": request.name, "profile": request.profile, "aliases": list(entry.get("aliases", [])),
        "port": int(port), "gpus": gpu_set, "tensor_parallel_size": placement.tensor_parallel_size,
        "gpu_devices": [{"index": i, "name": site.by_index[i].get("name", "")} for i in gpu_set],
        "gpu_memory_utilization": placement.gpu_memory_utilization, "max_model_len": settings["max_model_len"],
        "max_num_seqs": settings["max_num_seqs"],
        "max_num_batched_tokens": settings["max_num_batched_tokens"],
        "enable_prefix_caching": bool(settings["prefix_caching"]),
        "memory": estimate.as_dict(), "kv_cache_tokens": estimate.kv_cache_tokens,
        "max_concurrency": estimate.max_concurrency,
        "predicted_tokens_per_s": decode.tokens_per_s if decode else None,
        "streams_at_target_speed": decode.streams_at_target if decode else None,
        "decode": decode.as_dict() if decode else None,
        "vllm_args": args, "environment": environment, "reasons": reasons,
        **({"speculative": request.speculation.record()} if request.speculation else {}),
        **({"pipeline_parallel_size": placement.pipeline_parallel_size, "nodes": placement.nodes,
            "node_gpus": placement.node_gpus} if placement.nodes else {}),
    }


def _site(gpus: dict[str, Any] | None, engine: str, vllm_version: str, gpu_memory_utilization: float,
          cpu_kvcache_space_gib: float) -> Site:
    gpu_list = sorted((gpus or {}).get("gpus", []), key=lambda g: g["index"])
    by_index = {g["index"]: g for g in gpu_list}
    return Site(engine=engine, vllm_version=vllm_version, by_index=by_index,
                nvlink_groups=(gpus or {}).get("nvlink_groups", []), free=set(by_index),
                gpu_memory_utilization=gpu_memory_utilization, cpu_kvcache_space_gib=cpu_kvcache_space_gib)


def natural_key(name: str) -> list[Any]:
    """gpu2 before gpu10: hosts are filled in the order their names read."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _wanted_replicas(entry: dict[str, Any], hosts: list[str]) -> tuple[int, list[str]]:
    """How many copies of the model, and the hosts they may go on (in fill order)."""
    name = entry["name"]
    pinned = entry.get("hosts")
    if pinned is not None:
        if not isinstance(pinned, list) or not pinned or not all(isinstance(h, str) for h in pinned):
            raise PlanError("model %s: hosts must be a list of GPU host names, not %r" % (name, pinned))
        unknown = sorted(set(pinned) - set(hosts))
        if unknown:
            raise PlanError("model %s: hosts names %s, which %s not in the GPU hosts (%s)" % (
                name, ", ".join(unknown), "is" if len(unknown) == 1 else "are", ", ".join(hosts)))
        candidates = sorted(set(pinned), key=natural_key)
    else:
        candidates = list(hosts)
    replicas = entry.get("replicas", len(candidates) if pinned is not None else 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise PlanError("model %s: replicas must be a whole number of 1 or more, not %r" % (name, replicas))
    if replicas > len(candidates):
        raise PlanError("model %s: %d replicas must go on different hosts, but only %d GPU host%s %s: %s. Add "
                        "GPU hosts or lower replicas" % (name, replicas, len(candidates),
                                                        "" if len(candidates) == 1 else "s",
                                                        "is named" if pinned is not None else "exist",
                                                        ", ".join(candidates)))
    return replicas, candidates


def _pipeline_hosts(entry: dict[str, Any], hosts: list[str]) -> tuple[int, list[str]]:
    """A model over several hosts (`nodes: N`, one pipeline stage each): N, and the hosts it may
    use in fill order; (1, []) for a model on one host."""
    name, nodes = entry["name"], entry.get("nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise PlanError("model %s: nodes must be a whole number of 1 or more, not %r" % (name, nodes))
    if nodes == 1:
        return 1, []
    if entry.get("replicas", 1) != 1 or entry.get("share_gpus_with"):
        raise PlanError("model %s: a model over several hosts (nodes %d) is planned as one copy on GPUs of its "
                        "own: remove replicas and share_gpus_with" % (name, nodes))
    candidates = sorted(set(entry["hosts"]), key=natural_key) if entry.get("hosts") else list(hosts)
    unknown = sorted(set(candidates) - set(hosts))
    if unknown:
        raise PlanError("model %s: hosts names %s, not in the GPU hosts (%s)" % (name, ", ".join(unknown),
                                                                               ", ".join(hosts)))
    if len(candidates) < nodes:
        raise PlanError("model %s: nodes %d needs %d GPU hosts, but %s: %s. Add GPU hosts or lower nodes" % (
            name, nodes, nodes, "only %d %s" % (len(candidates), "is named" if entry.get("hosts") else "exist"),
            ", ".join(candidates)))
    return nodes, candidates


def plan_cluster(models: list[dict[str, Any]], hosts: dict[str, dict[str, Any] | None], *, engine: str = "cuda",
                 vllm_version: str = "0.32.0", base_port: int = 8001, gpu_memory_utilization: float = 0.90,
                 cpu_kvcache_space_gib: float = 1, speed_target_tokens_per_s: float = 80) -> dict[str, Any]:
    """Plan every present model of the catalog over the site's GPU hosts.

    hosts: GPU host name -> its GPUs (as plan_site's `gpus`). A catalog entry may ask for
    `replicas: N` (copies on N different hosts) or name its `hosts`. Hosts are filled in the
    natural order of their names, larger models first, each replica on the first host where it
    fits: a host added to the site (named after the others) changes nothing that is placed.
    A model's port is the same on every host. `nodes: N` runs one copy over N hosts, one pipeline
    stage each on a Ray cluster of those hosts (tensor parallel within each); the first host's
    engine serves it.
    Returns {engine, vllm_version, hosts: {host: {models, free_gpus[, pipeline_stages]}},
    models: [{name, profile, aliases, port, hosts[, nodes]}]}. Raises PlanError naming the model
    and the hosts when it cannot fit.
    """
    check_catalog(models)
    if not hosts:
        raise PlanError("no GPU host to plan for: put the hosts that serve models in the gpu_hosts group")
    _check_present([m for m in models if m.get("state", "present") == "present"])
    # Drafts (profile draft) are stored for the models that speculate with them, never served.
    drafts = {m["name"]: m for m in models
              if m.get("profile") == DRAFT_PROFILE and m.get("state", "present") == "present"}
    present = [m for m in models if m.get("state", "present") == "present" and m.get("profile") != DRAFT_PROFILE]
    order = sorted(hosts, key=natural_key)
    sites = {h: _site(hosts[h], engine, vllm_version, gpu_memory_utilization, cpu_kvcache_space_gib) for h in order}
    ports = _ports([m for m in models if m.get("profile") != DRAFT_PROFILE], base_port)
    records: dict[str, list[dict[str, Any]]] = {h: [] for h in order}
    # Pipeline stages of models over several hosts: each host's Ray node, and who heads it.
    stages: dict[str, list[dict[str, Any]]] = {h: [] for h in order}
    replicas_of: dict[str, list[str]] = {}
    nodes_of: dict[str, list[str]] = {}
    for entry in _placement_order(present):
        request = _request(entry, drafts)
        nodes, stage_hosts = _pipeline_hosts(entry, order)
        if nodes > 1:
            placement = place_across_hosts(request, sites, stage_hosts, nodes)
            head = placement.nodes[0]
            decode, speed_note = _predict_speed(request, placement, sites[head], speed_target_tokens_per_s)
            reasons = _reasons(request, placement, speed_note)
            records[head].append(_plan_record(request, placement, sites[head], ports[request.name], decode, reasons))
            for rank, host in enumerate(placement.nodes):
                stages[host].append({"model": request.name, "head": head, "rank": rank, "nodes": placement.nodes,
                                     "gpus": placement.node_gpus[host]})
            replicas_of[request.name] = [head]
            nodes_of[request.name] = placement.nodes
            continue
        wanted, candidates = _wanted_replicas(entry, order)
        placed: list[str] = []
        refusals: list[tuple[str, PlanError]] = []
        for host in candidates:
            if len(placed) == wanted:
                break
            site = sites[host]
            partner = entry.get("share_gpus_with")
            if partner in replicas_of and host not in replicas_of[partner]:
                refusals.append((host, PlanError("%s, whose GPUs it shares, is not on this host" % partner)))
                continue
            try:
                placement = place(request, site)
            except PlanError as exc:
                refusals.append((host, exc))
                continue
            decode, speed_note = _predict_speed(request, placement, site, speed_target_tokens_per_s)
            reasons = _reasons(request, placement, speed_note)
            records[host].append(_plan_record(request, placement, site, ports[request.name], decode, reasons))
            placed.append(host)
        if len(placed) < wanted:
            if len(candidates) == 1:
                raise refusals[0][1]
            raise PlanError("model %s: %d of %d replicas placed (%s); %s" % (
                request.name, len(placed), wanted, ", ".join(placed) or "none",
                "; ".join("not on %s: %s" % (host, exc) for host, exc in refusals)))
        replicas_of[request.name] = placed
    names = [e["name"] for e in present]
    return {
        "engine": engine, "vllm_version": vllm_version,
        "hosts": {h: {"models": sorted(records[h], key=lambda m: names.index(m["name"])),
                      "free_gpus": sorted(sites[h].free) if engine != "cpu" else [],
                      **({"pipeline_stages": stages[h]} if stages[h] else {})} for h in order},
        "models": [{"name": e["name"], "profile": e.get("profile", "chat"), "aliases": list(e.get("aliases", [])),
                    "port": ports[e["name"]], "hosts": replicas_of[e["name"]],
                    **({"nodes": nodes_of[e["name"]]} if e["name"] in nodes_of else {})} for e in present],
    }


def host_plan(cluster: dict[str, Any], host: str) -> dict[str, Any]:
    """One GPU host's share of the site's plan, in the shape plan_site returns."""
    share = cluster["hosts"].get(host, {"models": [], "free_gpus": []})
    plan = {"engine": cluster["engine"], "vllm_version": cluster["vllm_version"],
            "models": share["models"], "free_gpus": share["free_gpus"],
            "pipeline_stages": share.get("pipeline_stages", [])}
    # Where the gateway reaches this host's engines, once the site's endpoints are known.
    plan.update({key: share[key] for key in ("address", "scheme") if key in share})
    return plan


def plan_site(models: list[dict[str, Any]], gpus: dict[str, Any] | None = None, *, engine: str = "cuda",
              vllm_version: str = "0.32.0", base_port: int = 8001, gpu_memory_utilization: float = 0.90,
              cpu_kvcache_space_gib: float = 1, speed_target_tokens_per_s: float = 80) -> dict[str, Any]:
    """Plan every present model of the catalog on one host.

    models: catalog entries, each with name, profile, the parsed `config` (config.json) and
            optional weights_bytes, quantization, kv_cache_dtype, dtype, overrides, port,
            tensor_parallel_size, gpu_memory_utilization, share_gpus_with.
    gpus:   {"gpus": [{index, name, memory_total_mib, memory_reserved_mib?, cuda_total_gib?,
            memory_bandwidth_gbps?}], "nvlink_groups": [[...]]}; ignored for the CPU engine.
    Raises PlanError with the model, its need, what is available and the settings that would fit.
    """
    host = "this host"
    cluster = plan_cluster(models, {host: gpus}, engine=engine, vllm_version=vllm_version, base_port=base_port,
                           gpu_memory_utilization=gpu_memory_utilization,
                           cpu_kvcache_space_gib=cpu_kvcache_space_gib,
                           speed_target_tokens_per_s=speed_target_tokens_per_s)
    return host_plan(cluster, host)
