"""From the site's catalog and its GPUs to a plan: per model the GPUs, tensor-parallel size,
memory settings, vLLM arguments, the predicted KV capacity and decode speed, and why."""
import collections
import math

from llm_appliance.plan.config import parse_config
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import GIB, estimate_memory, parse_version, weights_bytes_per_gpu

# What each workload needs. typical_request_tokens x target_concurrency KV tokens must fit.
PROFILES = {
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

# Memory bandwidth (GB/s) of known GPUs, for the decode roofline; the inventory may override it.
GPU_BANDWIDTH_GBPS = {
    "H100 80GB HBM3": 3350, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
    "H200": 4800, "GH200": 4000, "B200": 8000, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935,
    "A100-SXM4-40GB": 1555, "A100": 1555, "L40S": 864, "L40": 864, "L4": 300, "A10": 600,
}
# Share of peak bandwidth a single decode stream achieves (kernels, launch gaps, all-reduce).
DECODE_EFFICIENCY = 0.6
# All-reduce cost per extra tensor-parallel rank, as a share of a step.
TP_STEP_OVERHEAD = 0.08
# CUDA reports a little less than nvidia-smi's memory.total: the driver's reserved memory.
DEFAULT_RESERVED_MIB = 470
MAX_SHARED_FRACTION = 0.95


def gpu_total_gib(gpu):
    if gpu.get("cuda_total_gib"):
        return float(gpu["cuda_total_gib"])
    reserved = gpu.get("memory_reserved_mib")
    reserved = DEFAULT_RESERVED_MIB if reserved is None else reserved
    return round((int(gpu["memory_total_mib"]) - int(reserved)) / 1024, 2)


def gpu_bandwidth_gbps(gpu):
    if gpu.get("memory_bandwidth_gbps"):
        return float(gpu["memory_bandwidth_gbps"])
    name = gpu.get("name", "")
    for known in sorted(GPU_BANDWIDTH_GBPS, key=len, reverse=True):
        if known in name:
            return GPU_BANDWIDTH_GBPS[known]
    return None


def decode_tokens_per_s(shape, weights_gib_per_gpu, tensor_parallel_size, bandwidth_gbps):
    """Single-stream decode speed from memory bandwidth: each token reads every active weight once."""
    if not bandwidth_gbps:
        return None
    active_share = shape.active_params_estimate() / max(shape.params_estimate, 1)
    bytes_per_token_per_gpu = weights_gib_per_gpu * GIB * active_share
    seconds = bytes_per_token_per_gpu / (bandwidth_gbps * 1e9 * DECODE_EFFICIENCY)
    seconds *= 1 + TP_STEP_OVERHEAD * (tensor_parallel_size - 1)
    return round(1 / seconds, 1)


def _valid_tp_sizes(shape, gpu_count):
    sizes = []
    size = 1
    while size <= gpu_count:
        if (shape.use_mla or shape.heads % size == 0) and shape.vocab % size == 0:
            sizes.append(size)
        size *= 2
    return sizes


def _gpu_sets(free, size, nvlink_groups):
    """Candidate GPU sets of `size` from the free ones, NVLink-connected first, lowest indices first."""
    candidates = []
    for group in nvlink_groups:
        inside = [g for g in sorted(group) if g in free]
        if len(inside) >= size:
            candidates.append(inside[:size])
    ordered = sorted(free)
    if len(ordered) >= size:
        candidates.append(ordered[:size])
    return candidates


def _settings(entry, profile, shape):
    settings = dict(PROFILES[profile])
    for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "target_concurrency",
                "typical_request_tokens", "prefix_caching"):
        if entry.get(key) is not None:
            settings[key] = entry[key]
    settings["max_model_len"] = min(int(settings["max_model_len"]), shape.max_position)
    settings["max_num_batched_tokens"] = max(int(settings["max_num_batched_tokens"]), 1)
    return settings


def _estimate(shape, entry, settings, gpu, tp, gmu, engine, version, kv_space_gib):
    return estimate_memory(
        shape, gpu_memory_gib=gpu_total_gib(gpu) if gpu else 0.0, tensor_parallel_size=tp,
        gpu_memory_utilization=gmu, max_model_len=settings["max_model_len"],
        max_num_batched_tokens=settings["max_num_batched_tokens"], max_num_seqs=settings["max_num_seqs"],
        weights_bytes=entry.get("weights_bytes"), quantization=entry.get("quantization", ""),
        kv_cache_dtype=entry.get("kv_cache_dtype", "auto"), dtype=entry.get("dtype", "auto"),
        vllm_version=version, block_size=int(entry.get("block_size", 128 if engine == "cpu" else 16)),
        cpu_kvcache_space_gib=kv_space_gib, name=entry["name"])


def _suggestions(shape, entry, settings, gpu, tp, gmu, engine, version, free_count):
    """Settings that would make a refused model fit, each checked with the same arithmetic."""
    tips = []
    for bigger in _valid_tp_sizes(shape, free_count):
        if bigger > tp and _estimate(shape, entry, settings, gpu, bigger, gmu, engine, version, None).fits:
            tips.append("tensor_parallel_size: %d" % bigger)
            break
    est = _estimate(shape, entry, settings, gpu, tp, gmu, engine, version, None)
    if est.max_model_len_that_fits > 0:
        tips.append("max_model_len: %d" % est.max_model_len_that_fits)
    if entry.get("kv_cache_dtype", "auto") == "auto":
        fp8 = dict(entry, kv_cache_dtype="fp8")
        if _estimate(shape, fp8, settings, gpu, tp, gmu, engine, version, None).fits:
            tips.append("kv_cache_dtype: fp8")
    if not entry.get("quantization") and not shape.checkpoint_quantization:
        quantized = dict(entry, quantization="fp8")
        if _estimate(shape, quantized, settings, gpu, tp, gmu, engine, version, None).fits:
            tips.append("quantization: fp8")
    tips.append("retire another model (state: absent) to free GPUs")
    return tips


# Every field a catalog entry may carry; anything else is a typo that would silently be ignored.
CATALOG_FIELDS = {
    # identity and lifecycle
    "name", "state", "profile", "aliases", "port", "purge_weights",
    # where the weights come from (model_store)
    "source", "controller_path", "hf_repo", "revision", "config_path", "config", "weights_bytes",
    # engine settings
    "quantization", "kv_cache_dtype", "dtype", "block_size", "tool_call_parser", "extra_args",
    # planner overrides
    "max_model_len", "max_num_seqs", "max_num_batched_tokens", "target_concurrency",
    "typical_request_tokens", "prefix_caching", "tensor_parallel_size", "gpu_memory_utilization",
    "share_gpus_with", "cpu_kvcache_space_gib",
}


def _repeated(values):
    return sorted(value for value, count in collections.Counter(values).items() if count > 1)


def check_catalog(models):
    """Refuse entries without a name, repeated names and unknown fields, naming each."""
    problems = []
    names = []
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


def _ports(models, base_port):
    """Each catalog entry's port: its own `port`, else the next free one from base_port in catalog
    order. Retired entries (state: absent) keep their place, so adding or retiring one model
    moves no other model's port (which would restart that model's unit)."""
    explicit = [int(m["port"]) for m in models if m.get("port")]
    taken = set(explicit)
    clashes = _repeated(explicit)
    if clashes:
        raise PlanError("the catalog gives port %s to more than one model: each model needs its own port"
                        % ", ".join(str(p) for p in clashes))
    ports, next_port = {}, base_port
    for model in models:
        if model.get("port"):
            ports[model["name"]] = int(model["port"])
            continue
        while next_port in taken:
            next_port += 1
        ports[model["name"]] = next_port
        taken.add(next_port)
    return ports


def _speed_options(shape, entry, tp, gpu_count, bandwidth, target):
    """What would reach the decode-speed target: fp8 weights and/or more GPUs, each figure from the
    same roofline; the fewest GPUs first. Says so when nothing on this host would."""
    quantizations = [entry.get("quantization", "")]
    if not entry.get("quantization") and not shape.checkpoint_quantization:
        quantizations.append("fp8")
    options = []
    for size in _valid_tp_sizes(shape, gpu_count):
        if size < tp:
            continue
        for quantization in quantizations:
            if size == tp and quantization == quantizations[0]:
                continue  # the plan as it stands
            weights = weights_bytes_per_gpu(shape, entry.get("weights_bytes"), size, 1, quantization,
                                            entry.get("dtype", "auto")) / GIB
            speed = decode_tokens_per_s(shape, weights, size, bandwidth)
            label = " and ".join(part for part in (
                "fp8 weights" if quantization == "fp8" and not entry.get("quantization") else "",
                "tensor_parallel_size %d" % size if size != tp else "") if part)
            options.append((speed >= target, size, quantization != quantizations[0], speed, label))
    # Fewest GPUs first, then the unquantized option.
    reaching = sorted((o for o in options if o[0]), key=lambda o: (o[1], o[2]))
    if reaching:
        return "would reach it: " + ", or ".join("%s (~%.0f tokens/s)" % (o[4], o[3]) for o in reaching[:3])
    if not options:
        return "nothing on this host would reach it"
    best = max(options, key=lambda o: o[3])
    return "nothing with up to %d of these GPUs reaches it; the fastest is %s (~%.0f tokens/s)" % (
        gpu_count, best[4], best[3])


def _quantization_argument(quantization, vllm_version):
    """The catalog's quantization as this vLLM names it: from 0.32 (model_executor/model_loader/
    weight_utils.py) runtime `fp8` is a deprecated alias of `fp8_per_tensor`."""
    if quantization == "fp8" and parse_version(vllm_version) >= (0, 32):
        return "fp8_per_tensor"
    return quantization


def plan_site(models, gpus=None, *, engine="cuda", vllm_version="0.32.0", base_port=8001,
              gpu_memory_utilization=0.90, cpu_kvcache_space_gib=1, speed_target_tokens_per_s=80):
    """Plan every present model of the catalog.

    models: catalog entries, each with name, profile, the parsed `config` (config.json) and
            optional weights_bytes, quantization, kv_cache_dtype, dtype, overrides, port,
            tensor_parallel_size, gpu_memory_utilization, share_gpus_with.
    gpus:   {"gpus": [{index, name, memory_total_mib, memory_reserved_mib?, cuda_total_gib?,
            memory_bandwidth_gbps?}], "nvlink_groups": [[...]]}; ignored for the CPU engine.
    Raises PlanError with the model, its need, what is available and the settings that would fit.
    """
    check_catalog(models)
    present = [m for m in models if m.get("state", "present") == "present"]
    for model in present:
        if model.get("profile", "chat") not in PROFILES:
            raise PlanError("model %s: profile %r is not one of %s" % (model["name"], model.get("profile"),
                                                                      ", ".join(sorted(PROFILES))))
        if not isinstance(model.get("config"), dict):
            raise PlanError("model %s: its config.json was not read (check config_path or the model store)"
                            % model.get("name"))

    gpu_list = sorted((gpus or {}).get("gpus", []), key=lambda g: g["index"])
    by_index = {g["index"]: g for g in gpu_list}
    nvlink_groups = (gpus or {}).get("nvlink_groups", [])
    free = set(by_index)
    ports = _ports(models, base_port)
    placed = {}
    plan = {"engine": engine, "vllm_version": vllm_version, "models": []}

    # Larger models first: they are the hardest to place. Shared models follow their partner.
    order = sorted(present, key=lambda m: (bool(m.get("share_gpus_with")),
                                         -(m.get("weights_bytes") or parse_config(m["config"], m["name"]).params_estimate)))
    for entry in order:
        name = entry["name"]
        shape = parse_config(entry["config"], name)
        profile = entry.get("profile", "chat")
        settings = _settings(entry, profile, shape)
        reasons = ["profile %s: max_model_len %d, up to %d sequences, %d tokens per batch"
                   % (profile, settings["max_model_len"], settings["max_num_seqs"], settings["max_num_batched_tokens"])]
        needed_tokens = settings["typical_request_tokens"] * settings["target_concurrency"]

        if engine == "cpu":
            tp, gpu_set, gmu = 1, [], None
            estimate = _estimate(shape, entry, settings, None, 1, 1.0, engine, vllm_version,
                                 float(entry.get("cpu_kvcache_space_gib", cpu_kvcache_space_gib)))
            if not estimate.fits:
                raise PlanError("%s. Raise cpu_kvcache_space_gib or lower max_model_len (at most %d fits)."
                                % (estimate.reason, estimate.max_model_len_that_fits))
            reasons.append("CPU engine: %s GiB KV cache space" % estimate.requested_gib)
        elif entry.get("share_gpus_with"):
            partner = placed.get(entry["share_gpus_with"])
            if not partner:
                raise PlanError("model %s: share_gpus_with names %s, which is not a present model of the catalog"
                                % (name, entry["share_gpus_with"]))
            gpu_set, tp = partner["gpus"], partner["tensor_parallel_size"]
            gmu = float(entry.get("gpu_memory_utilization", 0.45))
            if partner["gpu_memory_utilization"] + gmu > MAX_SHARED_FRACTION + 1e-9:
                raise PlanError("models %s and %s share GPUs %s with gpu_memory_utilization %.2f + %.2f > %.2f: "
                                "lower one of them" % (partner["name"], name, gpu_set,
                                                       partner["gpu_memory_utilization"], gmu, MAX_SHARED_FRACTION))
            estimate = _estimate(shape, entry, settings, by_index[gpu_set[0]], tp, gmu, engine, vllm_version, None)
            if not estimate.fits:
                raise PlanError("%s on its share (%.2f) of GPUs %s. Give it more of them, or its own GPUs."
                                % (estimate.reason, gmu, gpu_set))
            reasons.append("shares GPUs %s with %s (%.2f + %.2f of their memory)"
                           % (gpu_set, partner["name"], partner["gpu_memory_utilization"], gmu))
        else:
            gmu = float(entry.get("gpu_memory_utilization", gpu_memory_utilization))
            if not free:
                raise PlanError("model %s: no GPU is left (%d in all, every one taken by %s). Retire a model "
                                "(state: absent), share GPUs (share_gpus_with) or add a GPU host."
                                % (name, len(by_index), ", ".join(p["name"] for p in plan["models"]) or "nothing"))
            sizes = _valid_tp_sizes(shape, len(free))
            if entry.get("tensor_parallel_size"):
                sizes = [int(entry["tensor_parallel_size"])]
                if sizes[0] > len(free):
                    raise PlanError("model %s: tensor_parallel_size %d asks for more GPUs than the %d left free"
                                    % (name, sizes[0], len(free)))
            if not sizes:
                raise PlanError("model %s: no tensor-parallel size up to %d divides its %d heads and %d vocabulary"
                                % (name, len(free), shape.heads, shape.vocab))
            choice = first_fit = None
            for tp in sizes:
                gpu_set = _gpu_sets(free, tp, nvlink_groups)[0]
                estimate = _estimate(shape, entry, settings, by_index[gpu_set[0]], tp, gmu, engine, vllm_version, None)
                if not estimate.fits:
                    continue
                first_fit = first_fit or (tp, gpu_set, estimate)
                if estimate.kv_cache_tokens >= needed_tokens:
                    choice = (tp, gpu_set, estimate)
                    break
            if choice is None and first_fit:
                choice = first_fit
                reasons.append("target of %d concurrent %d-token requests (%d KV tokens) not reachable on the free "
                               "GPUs; planned for %d tokens" % (settings["target_concurrency"],
                                                                settings["typical_request_tokens"], needed_tokens,
                                                                choice[2].kv_cache_tokens))
            if choice is None:
                tp = sizes[0]
                gpu = by_index[sorted(free)[0]]
                estimate = _estimate(shape, entry, settings, gpu, tp, gmu, engine, vllm_version, None)
                tips = _suggestions(shape, entry, settings, gpu, tp, gmu, engine, vllm_version, len(free))
                raise PlanError("%s (on %s, %.2f GiB each, %d of %d GPUs free). Settings that would fit: %s."
                                % (estimate.reason, gpu.get("name", "GPU"), gpu_total_gib(gpu), len(free),
                                   len(by_index), "; ".join(tips)))
            tp, gpu_set, estimate = choice
            if entry.get("tensor_parallel_size"):
                reasons.append("tensor_parallel_size %d: set in the catalog; holds %d KV tokens (needed %d)"
                               % (tp, estimate.kv_cache_tokens, needed_tokens))
            else:
                reasons.append("tensor_parallel_size %d: the smallest that divides %d heads and %d vocabulary and "
                               "holds %d KV tokens (needed %d)" % (tp, shape.heads, shape.vocab,
                                                                   estimate.kv_cache_tokens, needed_tokens))
            in_group = any(set(gpu_set) <= set(group) for group in nvlink_groups)
            if tp > 1:
                reasons.append("GPUs %s %s" % (gpu_set, "share an NVLink group" if in_group else
                                                "do not share an NVLink group: all-reduce crosses PCIe"))
            free -= set(gpu_set)

        port = ports[name]
        speed = None
        speed_note = None
        if gpu_set:
            bandwidth = gpu_bandwidth_gbps(by_index[gpu_set[0]])
            speed = decode_tokens_per_s(shape, estimate.weights_gib_per_gpu, tp, bandwidth)
            if speed is not None:
                if speed >= speed_target_tokens_per_s:
                    speed_note = "predicted %.0f tokens/s per stream (roofline, %d%% of %d GB/s): meets %d" % (
                        speed, DECODE_EFFICIENCY * 100, bandwidth, speed_target_tokens_per_s)
                else:
                    speed_note = ("predicted %.0f tokens/s per stream (roofline, %d%% of %d GB/s): below %d; %s"
                                  % (speed, DECODE_EFFICIENCY * 100, bandwidth, speed_target_tokens_per_s,
                                     _speed_options(shape, entry, tp, len(by_index), bandwidth,
                                                    speed_target_tokens_per_s)))
                reasons.append(speed_note)

        args = ["--max-model-len", str(settings["max_model_len"]),
                "--max-num-seqs", str(settings["max_num_seqs"]),
                "--max-num-batched-tokens", str(settings["max_num_batched_tokens"])]
        if engine != "cpu":
            args += ["--tensor-parallel-size", str(tp), "--gpu-memory-utilization", "%.2f" % gmu]
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
        args += [str(a) for a in entry.get("extra_args", [])]
        environment = {}
        if engine == "cpu":
            environment["VLLM_CPU_KVCACHE_SPACE"] = str(int(estimate.requested_gib)) if float(
                estimate.requested_gib).is_integer() else str(estimate.requested_gib)
        else:
            # CUDA numbers GPUs fastest first unless told otherwise; the plan uses nvidia-smi's (bus) order.
            environment["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_set)

        result = {
            "name": name, "profile": profile, "aliases": list(entry.get("aliases", [])),
            "port": int(port), "gpus": gpu_set, "tensor_parallel_size": tp,
            "gpu_devices": [{"index": i, "name": by_index[i].get("name", "")} for i in gpu_set],
            "gpu_memory_utilization": gmu, "max_model_len": settings["max_model_len"],
            "max_num_seqs": settings["max_num_seqs"],
            "max_num_batched_tokens": settings["max_num_batched_tokens"],
            "enable_prefix_caching": bool(settings["prefix_caching"]),
            "memory": estimate.as_dict(), "kv_cache_tokens": estimate.kv_cache_tokens,
            "max_concurrency": estimate.max_concurrency, "predicted_tokens_per_s": speed,
            "vllm_args": args, "environment": environment, "reasons": reasons,
        }
        placed[name] = result
        plan["models"].append(result)

    plan["models"].sort(key=lambda m: [e["name"] for e in present].index(m["name"]))
    plan["free_gpus"] = sorted(free) if engine != "cpu" else []
    return plan
