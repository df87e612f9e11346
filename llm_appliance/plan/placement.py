"""Where each model runs: its GPUs, tensor-parallel size and memory fraction, chosen by the memory
estimate of each candidate. NVLink groups come first; GPUs are shared only when the catalog says so."""
from dataclasses import dataclass, field
from typing import Any, NoReturn

from llm_appliance.plan.config import ModelShape
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import MemoryEstimate, estimate_memory
from llm_appliance.plan.speculative import Speculation

# CUDA reports a little less than nvidia-smi's memory.total: the driver's reserved memory.
DEFAULT_RESERVED_MIB = 470
MAX_SHARED_FRACTION = 0.95


def gpu_total_gib(gpu: dict[str, Any]) -> float:
    if gpu.get("cuda_total_gib"):
        return float(gpu["cuda_total_gib"])
    reserved = gpu.get("memory_reserved_mib")
    reserved = DEFAULT_RESERVED_MIB if reserved is None else reserved
    return round((int(gpu["memory_total_mib"]) - int(reserved)) / 1024, 2)


def default_block_size(shape: ModelShape, engine: str) -> int:
    """The block vLLM picks when not told: 128 tokens on the CPU build; on CUDA 16, or 64 for MLA,
    whose backends (FlashMLA on Hopper) take no smaller block (platforms/interface.py
    update_block_size_for_backend, get_preferred_block_size, 0.18-0.33)."""
    if engine == "cpu":
        return 128
    return 64 if shape.use_mla else 16


def valid_tp_sizes(shape: ModelShape, gpu_count: int) -> list[int]:
    """Powers of two up to gpu_count that split the heads (MLA: any) and the vocabulary evenly."""
    sizes = []
    size = 1
    while size <= gpu_count:
        if (shape.use_mla or shape.heads % size == 0) and shape.vocab % size == 0:
            sizes.append(size)
        size *= 2
    return sizes


def _gpu_sets(free: set[int], size: int, nvlink_groups: list[list[int]]) -> list[list[int]]:
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


@dataclass
class ModelRequest:
    """One catalog entry as placement, speed and rendering all read it: its shape and settings."""
    entry: dict[str, Any]
    shape: ModelShape
    profile: str
    settings: dict[str, Any]
    needed_tokens: int
    speculation: Speculation | None = None

    @property
    def name(self) -> str:
        name: str = self.entry["name"]
        return name


@dataclass
class Site:
    """The GPUs while models are placed one after another: which are free, who holds the others."""
    engine: str
    vllm_version: str
    by_index: dict[int, dict[str, Any]]          # GPU index -> its facts (name, memory_total_mib, ...)
    nvlink_groups: list[list[int]]
    free: set[int]
    gpu_memory_utilization: float
    cpu_kvcache_space_gib: float
    placed: dict[str, "Placement"] = field(default_factory=dict)   # model name -> Placement, in placement order


@dataclass
class Placement:
    """One model's placement decision; the speed prediction and the rendering are made from it."""
    gpus: list[int]
    tensor_parallel_size: int
    gpu_memory_utilization: float | None   # None on the CPU engine
    estimate: MemoryEstimate
    reasons: list[str]
    # A model over several hosts: one pipeline stage per host, in order (the first serves the API),
    # and each host's GPUs.
    nodes: list[str] = field(default_factory=list)
    node_gpus: dict[str, list[int]] = field(default_factory=dict)

    @property
    def pipeline_parallel_size(self) -> int:
        return max(len(self.nodes), 1)


def estimate_candidate(request: ModelRequest, site: Site, gpu: dict[str, Any] | None, tp: int, gmu: float,
                       entry: dict[str, Any] | None = None, kv_space_gib: float | None = None,
                       pp: int = 1) -> MemoryEstimate:
    """vLLM's memory split for one candidate (GPU kind, TP size, memory fraction, pipeline stages);
    `entry` replaces the catalog entry to try another setting, kv_space_gib is the CPU engine's KV space."""
    entry = request.entry if entry is None else entry
    settings = request.settings
    return estimate_memory(
        request.shape, gpu_memory_gib=gpu_total_gib(gpu) if gpu else 0.0, tensor_parallel_size=tp,
        pipeline_parallel_size=pp, gpu_memory_utilization=gmu, max_model_len=settings["max_model_len"],
        max_num_batched_tokens=settings["max_num_batched_tokens"], max_num_seqs=settings["max_num_seqs"],
        weights_bytes=entry.get("weights_bytes"), quantization=entry.get("quantization", ""),
        kv_cache_dtype=entry.get("kv_cache_dtype", "auto"), dtype=entry.get("dtype", "auto"),
        vllm_version=site.vllm_version,
        block_size=int(entry.get("block_size", default_block_size(request.shape, site.engine))),
        cpu_kvcache_space_gib=kv_space_gib, speculation=request.speculation,
        prefix_caching=bool(settings["prefix_caching"]),
        gpu_name=gpu.get("name", "") if gpu else "", name=entry["name"])


def suggestions(request: ModelRequest, site: Site, gpu: dict[str, Any], tp: int, gmu: float) -> list[str]:
    """Settings that would make a refused model fit, each checked with the same arithmetic."""
    shape, entry = request.shape, request.entry
    tips = []
    for bigger in valid_tp_sizes(shape, len(site.free)):
        if bigger > tp and estimate_candidate(request, site, gpu, bigger, gmu).fits:
            tips.append("tensor_parallel_size: %d" % bigger)
            break
    est = estimate_candidate(request, site, gpu, tp, gmu)
    if est.max_model_len_that_fits > 0:
        tips.append("max_model_len: %d" % est.max_model_len_that_fits)
    if (entry.get("kv_cache_dtype", "auto") == "auto"
            and estimate_candidate(request, site, gpu, tp, gmu, entry=dict(entry, kv_cache_dtype="fp8")).fits):
        tips.append("kv_cache_dtype: fp8")
    if (not entry.get("quantization") and not shape.checkpoint_quantization
            and estimate_candidate(request, site, gpu, tp, gmu, entry=dict(entry, quantization="fp8")).fits):
        tips.append("quantization: fp8")
    tips.append("retire another model (state: absent) to free GPUs")
    return tips


def place_on_cpu(request: ModelRequest, site: Site) -> Placement:
    """The CPU engine: no GPUs, the KV cache in VLLM_CPU_KVCACHE_SPACE."""
    kv_space = float(request.entry.get("cpu_kvcache_space_gib", site.cpu_kvcache_space_gib))
    estimate = estimate_candidate(request, site, None, 1, 1.0, kv_space_gib=kv_space)
    if not estimate.fits:
        raise PlanError("%s. Raise cpu_kvcache_space_gib or lower max_model_len (at most %d fits)."
                        % (estimate.reason, estimate.max_model_len_that_fits))
    return Placement([], 1, None, estimate, ["CPU engine: %s GiB KV cache space" % estimate.requested_gib])


def place_shared(request: ModelRequest, site: Site) -> Placement:
    """On the GPUs of the model named by share_gpus_with, the two fractions within MAX_SHARED_FRACTION."""
    name, entry, partner_name = request.name, request.entry, request.entry["share_gpus_with"]
    partner = site.placed.get(partner_name)
    if not partner:
        raise PlanError("model %s: share_gpus_with names %s, which is not a present model of the catalog"
                        % (name, partner_name))
    gpu_set, tp, partner_gmu = partner.gpus, partner.tensor_parallel_size, partner.gpu_memory_utilization
    # Shared placements exist on the GPU engines only, where every placement has its memory fraction.
    assert partner_gmu is not None
    gmu = float(entry.get("gpu_memory_utilization", 0.45))
    if partner_gmu + gmu > MAX_SHARED_FRACTION + 1e-9:
        raise PlanError("models %s and %s share GPUs %s with gpu_memory_utilization %.2f + %.2f > %.2f: "
                        "lower one of them" % (partner_name, name, gpu_set,
                                               partner_gmu, gmu, MAX_SHARED_FRACTION))
    estimate = estimate_candidate(request, site, site.by_index[gpu_set[0]], tp, gmu)
    if not estimate.fits:
        raise PlanError("%s on its share (%.2f) of GPUs %s. Give it more of them, or its own GPUs."
                        % (estimate.reason, gmu, gpu_set))
    return Placement(gpu_set, tp, gmu, estimate, ["shares GPUs %s with %s (%.2f + %.2f of their memory)"
                                                  % (gpu_set, partner_name, partner_gmu, gmu)])


def _tp_sizes_to_try(request: ModelRequest, site: Site) -> list[int]:
    """The catalog's tensor_parallel_size, else every valid one up to the free GPUs, smallest first."""
    name, shape, entry = request.name, request.shape, request.entry
    if not site.free:
        raise PlanError("model %s: no GPU is left (%d in all, every one taken by %s). Retire a model "
                        "(state: absent), share GPUs (share_gpus_with) or add a GPU host."
                        % (name, len(site.by_index), ", ".join(site.placed) or "nothing"))
    sizes = valid_tp_sizes(shape, len(site.free))
    if entry.get("tensor_parallel_size"):
        sizes = [int(entry["tensor_parallel_size"])]
        if sizes[0] > len(site.free):
            raise PlanError("model %s: tensor_parallel_size %d asks for more GPUs than the %d left free"
                            % (name, sizes[0], len(site.free)))
    if not sizes:
        raise PlanError("model %s: no tensor-parallel size up to %d divides its %d heads and %d vocabulary"
                        % (name, len(site.free), shape.heads, shape.vocab))
    return sizes


def _first_fit(request: ModelRequest, site: Site, sizes: list[int],
               gmu: float) -> tuple[tuple[int, list[int], MemoryEstimate] | None, bool]:
    """(tp, GPUs, estimate) of the smallest size that holds the target, else of the smallest that
    fits at all, else None; and whether the target was reached."""
    first_fit = None
    for tp in sizes:
        gpu_set = _gpu_sets(site.free, tp, site.nvlink_groups)[0]
        estimate = estimate_candidate(request, site, site.by_index[gpu_set[0]], tp, gmu)
        if not estimate.fits:
            continue
        first_fit = first_fit or (tp, gpu_set, estimate)
        if estimate.kv_cache_tokens >= request.needed_tokens:
            return (tp, gpu_set, estimate), True
    return first_fit, False


def _refuse(request: ModelRequest, site: Site, tp: int, gmu: float) -> NoReturn:
    """Nothing fits on the free GPUs: say what the model needs and which settings would fit."""
    gpu = site.by_index[sorted(site.free)[0]]
    estimate = estimate_candidate(request, site, gpu, tp, gmu)
    tips = suggestions(request, site, gpu, tp, gmu)
    raise PlanError("%s (on %s, %.2f GiB each, %d of %d GPUs free). Settings that would fit: %s."
                    % (estimate.reason, gpu.get("name", "GPU"), gpu_total_gib(gpu), len(site.free),
                       len(site.by_index), "; ".join(tips)))


def _tp_reasons(request: ModelRequest, site: Site, tp: int, gpu_set: list[int],
                estimate: MemoryEstimate) -> list[str]:
    """Why this tensor-parallel size, and whether its GPUs talk over NVLink."""
    shape, needed = request.shape, request.needed_tokens
    if request.entry.get("tensor_parallel_size"):
        reasons = ["tensor_parallel_size %d: set in the catalog; holds %d KV tokens (needed %d)"
                   % (tp, estimate.kv_cache_tokens, needed)]
    else:
        reasons = ["tensor_parallel_size %d: the smallest that divides %d heads and %d vocabulary and "
                   "holds %d KV tokens (needed %d)" % (tp, shape.heads, shape.vocab, estimate.kv_cache_tokens,
                                                       needed)]
    in_group = any(set(gpu_set) <= set(group) for group in site.nvlink_groups)
    if tp > 1:
        reasons.append("GPUs %s %s" % (gpu_set, "share an NVLink group" if in_group else
                                        "do not share an NVLink group: all-reduce crosses PCIe"))
    return reasons


def place_on_free_gpus(request: ModelRequest, site: Site) -> Placement:
    """The smallest TP size whose KV cache holds the profile's target, on free GPUs; takes them."""
    gmu = float(request.entry.get("gpu_memory_utilization", site.gpu_memory_utilization))
    sizes = _tp_sizes_to_try(request, site)
    choice, reached = _first_fit(request, site, sizes, gmu)
    if choice is None:
        _refuse(request, site, sizes[0], gmu)
    tp, gpu_set, estimate = choice
    reasons = []
    if not reached:
        settings = request.settings
        reasons.append("target of %d concurrent %d-token requests (%d KV tokens) not reachable on the free "
                       "GPUs; planned for %d tokens" % (settings["target_concurrency"],
                                                        settings["typical_request_tokens"], request.needed_tokens,
                                                        estimate.kv_cache_tokens))
    reasons += _tp_reasons(request, site, tp, gpu_set, estimate)
    site.free -= set(gpu_set)
    return Placement(gpu_set, tp, gmu, estimate, reasons)


# vLLM's CPU build has no Ray device (CpuPlatform sets no ray_device_key): both Ray executors stop
# at vllm/v1/executor/ray_utils.py (initialize_ray_cluster) in 0.32.0, and still in 0.34.0.
CPU_RAY_REFUSAL = ("vLLM's CPU build cannot serve a model over several hosts: its Ray executor stops with "
                   "\"ValueError: current platform cpu does not support ray\" (vllm/v1/executor/ray_utils.py)")


def _pipeline_host_refusal(site: Site, tp: int) -> str | None:
    """Why a host cannot be a pipeline stage of this TP size, or None."""
    stages = [name for name, placement in site.placed.items() if placement.nodes]
    if stages:
        return "already a pipeline stage of %s (one Ray node per host)" % stages[0]
    if len(site.free) < tp:
        return "%d GPU%s free, %d needed" % (len(site.free), "" if len(site.free) == 1 else "s", tp)
    return None


def _pipeline_tp_sizes(request: ModelRequest, sites: list[Site]) -> list[int]:
    """The catalog's tensor_parallel_size, else every valid size up to the most free GPUs of a
    host, largest first: vLLM recommends all of a server's GPUs per stage."""
    if request.entry.get("tensor_parallel_size"):
        return [int(request.entry["tensor_parallel_size"])]
    most = max((len(site.free) for site in sites), default=0)
    return sorted(valid_tp_sizes(request.shape, most), reverse=True)


def place_across_hosts(request: ModelRequest, sites: dict[str, Site], candidates: list[str],
                       nodes: int) -> Placement:
    """One model over `nodes` GPU hosts, as vLLM recommends for a model larger than one server:
    tensor parallel within each host, pipeline parallel across them (one stage per host, the
    first host's engine serving the API). The first hosts in fill order that each have the GPUs
    free; the largest tensor-parallel size that fits, unless the catalog sets one."""
    name, entry = request.name, request.entry
    if any(sites[host].engine == "cpu" for host in candidates):
        raise PlanError("model %s: nodes %d: %s. Serve it on GPU hosts (vLLM's CUDA build)" % (name, nodes,
                                                                                         CPU_RAY_REFUSAL))
    gmu = float(entry.get("gpu_memory_utilization", sites[candidates[0]].gpu_memory_utilization))
    tried: list[str] = []
    for tp in _pipeline_tp_sizes(request, [sites[h] for h in candidates]):
        refusals = {host: _pipeline_host_refusal(sites[host], tp) for host in candidates}
        chosen = [host for host in candidates if refusals[host] is None][:nodes]
        if len(chosen) < nodes:
            tried.append("tensor_parallel_size %d: %d of %d hosts can give %d GPUs (%s)" % (
                tp, len(chosen), nodes, tp, "; ".join("%s: %s" % (h, r) for h, r in refusals.items() if r)))
            continue
        gpu_sets = {host: _gpu_sets(sites[host].free, tp, sites[host].nvlink_groups)[0] for host in chosen}
        smallest = min((sites[h].by_index[gpu_sets[h][0]] for h in chosen), key=gpu_total_gib)
        estimate = estimate_candidate(request, sites[chosen[0]], smallest, tp, gmu, pp=nodes)
        if not estimate.fits:
            # A smaller tensor-parallel size only puts more on each GPU.
            tried.append("tensor_parallel_size %d on %s: %s" % (tp, ", ".join(chosen), estimate.reason))
            break
        reasons = ["pipeline over %d hosts (%s), one stage each, tensor_parallel_size %d within each host "
                   "(vLLM's way for a model larger than one server); holds %d KV tokens (needed %d)"
                   % (nodes, ", ".join(chosen), tp, estimate.kv_cache_tokens, request.needed_tokens)]
        if estimate.kv_cache_tokens < request.needed_tokens:
            reasons.append("target of %d KV tokens not reachable; planned for %d" % (request.needed_tokens,
                                                                                 estimate.kv_cache_tokens))
        placement = Placement(gpu_sets[chosen[0]], tp, gmu, estimate, reasons, nodes=chosen, node_gpus=gpu_sets)
        for host in chosen:
            sites[host].free -= set(gpu_sets[host])
            sites[host].placed[name] = placement
        return placement
    raise PlanError("model %s: nodes %d does not fit on the GPU hosts %s: %s. Raise nodes (with as many GPU "
                    "hosts), or shrink it (quantization: fp8, kv_cache_dtype: fp8, a lower max_model_len)"
                    % (name, nodes, ", ".join(candidates), "; ".join(tried) or "no GPU is free"))


def place(request: ModelRequest, site: Site) -> Placement:
    """Place one model (CPU engine, shared GPUs or free GPUs) and record it on the site."""
    if site.engine == "cpu":
        placement = place_on_cpu(request, site)
    elif request.entry.get("share_gpus_with"):
        placement = place_shared(request, site)
    else:
        placement = place_on_free_gpus(request, site)
    site.placed[request.name] = placement
    return placement
