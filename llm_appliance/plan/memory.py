"""vLLM's memory arithmetic at start-up, per GPU (see docs/planner.md for the sources).

available KV = total x gpu_memory_utilization - weights - activation peak - non-torch
               - CUDA-graph estimate (deducted from v0.21 on)
blocks       = available // (page size x tensors per block group)
KV tokens    = blocks // groups x block size          (vLLM <= 0.20's log line)
             = int(max concurrency x max_model_len)   (vLLM >= 0.21's log line, GPU and CPU)
"""
from dataclasses import asdict, dataclass
from typing import Any

from llm_appliance.plan.config import CHUNKED, FULL, LINEAR, SLIDING, ModelShape
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.speculative import Speculation, draft_load

GIB = 1024 ** 3

# Activation peak of the profile run. Two things dominate, whichever is larger: the sampler's
# warm-up over max_num_seqs dummy requests (fp32 logits of the whole vocabulary, about 3.7
# live copies: logits, probabilities, sorted values for top-k/top-p), and the forward pass of
# max_num_batched_tokens tokens through the MLP (gate/up output, 2 x intermediate, 2 bytes,
# and its activation). Calibrated on vLLM 0.17-0.20 H100 logs; 0.15-0.16 kept ~9.7 copies.
SAMPLER_COPIES = 3.7
SAMPLER_COPIES_BEFORE_0_17 = 9.7
ACTIVATION_BASE_GIB = 0.07
# Non-torch memory: CUDA context extras at TP=1; NCCL and custom all-reduce buffers at TP>=2.
NON_TORCH_TP1_GIB = 0.25
NON_TORCH_TP1_BEFORE_0_18_GIB = 0.13
NON_TORCH_TP2_GIB = 2.13
NON_TORCH_PP_ONLY_GIB = 0.07
# CUDA graphs: estimated, then deducted from the KV budget; 0.5-1.9 GiB seen on H100.
CUDA_GRAPH_ESTIMATE_GIB = 0.9

# What changed between vLLM releases, each read in that release's own source (the sdists of 0.10.0
# to 0.34.0 compared file by file; docs/planner.md has the table).
FOLLOWED_FROM, FOLLOWED_UNTIL = (0, 10, 0), (0, 34, 0)   # 0.34 sizes the cache another way (below)
# envs.py: VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS defaults to "1" from 0.20.0 (PR #38284; its
# log line says "default since v0.21.0", which 0.20.0's own source contradicts).
CUDA_GRAPHS_DEDUCTED_FROM = (0, 20, 0)
# v1/core/kv_cache_utils.py _report_kv_cache_config: "GPU KV cache size" is
# int(max_concurrency x max_model_len) from 0.21.0, num_blocks // groups x block before.
TOKENS_AS_CONCURRENCY_FROM = (0, 21, 0)
# v1/kv_cache_interface.py SlidingWindowSpec/ChunkedLocalAttentionSpec reserve
# vllm_config.max_in_flight_tokens (config/vllm.py) instead of one batch from 0.26.0.
IN_FLIGHT_BATCHES_FROM = (0, 26, 0)
# envs.py VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE defaults to "0" in 0.10.1-0.13.x:
# config/vllm.py then turns the hybrid KV-cache manager off for chunked local attention
# (Llama 4), and every chunked layer holds a full-length request like a global one.
CHUNKED_AS_FULL = ((0, 10, 1), (0, 14, 0))
# The pool is held back by this share, and the plan says why, when the release or the model's
# layers are not ones the planner follows: it must never promise more than vLLM will find.
UNFOLLOWED_RELEASE_MARGIN = 0.10
# Hybrid state-space / linear-attention models lost 18-24% of the pool to CUDA-graph estimates
# from 0.26 (vllm issue #50780); Mamba layers are not modelled at all (counted as full attention),
# gated DeltaNet is modelled from vLLM's source but not yet checked against a start-up log.
UNMODELLED_LAYERS_MARGIN = 0.25
# config/model.py is_prefix_caching_supported: hybrid models get prefix caching by default from
# 0.26.0, which puts mamba_cache_mode in "align": 2 state blocks a request per linear group
# (v1/kv_cache_interface.py MambaSpec.max_memory_usage_bytes), 1 without prefix caching.
HYBRID_PREFIX_CACHING_FROM = (0, 26, 0)
# The attention kernel's smallest block on H100 (FlashAttention), which the enlarged hybrid block
# is a multiple of (platforms/interface.py _align_hybrid_block_size, 0.20+; models/config.py before).
KERNEL_BLOCK_ALIGNMENT = 16


def parse_version(version: object) -> tuple[int, ...]:
    parts = []
    for piece in str(version or "0.32.0").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def vllm_defaults(version: tuple[int, ...], gpu_memory_gib: float, gpu_name: str = "") -> dict[str, Any]:
    """What `vllm serve` picks when not told, by release and GPU.

    gpu_memory_utilization (config/cache.py CacheConfig): 0.9 until 0.19, 0.92 from 0.20.0 (PR
    #38284, with the CUDA-graph estimate), None from 0.34.0, which sizes an extensible cache
    (1.0). max_num_batched_tokens / max_num_seqs (engine/arg_utils.py get_batch_defaults, the
    OPENAI_API_SERVER column): 8192 / 1024 on GPUs of 70 GiB or more whose name is not an A100
    (PR #17885), 16384 / 1024 on 160 GiB or more from 0.28.0 (B200, MI300X), else 2048 / 256.
    block_size (config/cache.py): 16 on CUDA until 0.33, 64 from 0.34.0."""
    large = gpu_memory_gib >= 70 and "a100" not in gpu_name.lower()
    huge = gpu_memory_gib >= 160 and version >= (0, 28, 0)
    return {
        "gpu_memory_utilization": 0.9 if version < (0, 20, 0) else (0.92 if version < (0, 34, 0) else 1.0),
        "max_num_batched_tokens": 16384 if huge else (8192 if large else 2048),
        "max_num_seqs": 1024 if large or huge else 256,
        "block_size": 16 if version < (0, 34, 0) else 64,
    }


def layers_caveat(shape: ModelShape) -> str:
    """Why the pool is held back for the model's layers; empty for attention-only models."""
    if shape.kv_unmodelled:
        return ("%s: the KV pool is under-predicted by %d%% and those layers are counted as full attention"
                % (shape.kv_unmodelled, UNMODELLED_LAYERS_MARGIN * 100))
    if shape.linear_attention:
        return ("%s's gated-DeltaNet layers are sized as vLLM 0.32's source sizes them, not yet checked against a "
                "start-up log, and such hybrids lost 18-24%% of the pool to CUDA-graph estimates (vLLM issue "
                "#50780): the KV pool is under-predicted by %d%%"
                % (shape.architecture, UNMODELLED_LAYERS_MARGIN * 100))
    return ""


def release_caveat(version: tuple[int, ...]) -> str:
    """Why the pool is held back for a release the planner does not follow; empty when it does."""
    if FOLLOWED_FROM <= version < FOLLOWED_UNTIL:
        return ""
    shown = ".".join(str(part) for part in version)
    if version >= FOLLOWED_UNTIL:
        why = ("vLLM %s is newer than the releases the planner follows (0.10-0.33; 0.34 sizes an extensible KV "
               "cache with gpu_memory_utilization 1.0 and 64-token blocks)" % shown)
    else:
        why = "vLLM %s is older than the releases the planner follows (0.10-0.33)" % shown
    return "%s: the KV pool is under-predicted by %d%%" % (why, UNFOLLOWED_RELEASE_MARGIN * 100)


@dataclass
class MemoryEstimate:
    weights_gib_per_gpu: float
    draft_gib: float
    caveat: str                 # why the pool is held back (a release or layers not followed); empty if not
    activation_peak_gib: float
    non_torch_gib: float
    cuda_graph_gib: float
    requested_gib: float
    available_kv_cache_gib: float
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    kv_cache_groups: int
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    max_model_len_that_fits: int
    fits: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Measured, not explained: vLLM 0.19 loaded Llama-4-Scout at TP 4 as 53.12 GiB a GPU, 4.9% more than
# a quarter of its checkpoint with the rotary cache (the vision tower is split by TP by default,
# mm_encoder_tp_mode "weights"). Until the cause is found the planner adds the same share to Llama 4
# at TP > 1 (bench/calibration/startups row 212, which therefore no longer tests it).
LOADED_BEYOND_CHECKPOINT = {"llama4": 0.049}


def mxfp4_padding_bytes(shape: ModelShape, tensor_parallel_size: int) -> float:
    """The bytes the MXFP4 MoE kernel adds to each GPU's experts: hidden rounded up to 256 and each
    GPU's share of the intermediate to 128 (model_executor/layers/fused_moe/oracle/mxfp4.py,
    mxfp4_round_up_hidden_size_and_intermediate_size, the Marlin backend's rounding: the largest of
    the backends', so the pool is never over-predicted for it)."""
    if not shape.mxfp4_experts:
        return 0.0
    expert_bytes, hidden, intermediate = shape.mxfp4_experts
    share = intermediate / tensor_parallel_size
    factor = (cdiv(hidden, 256) * 256 / hidden) * (cdiv(int(share), 128) * 128 / share)
    return expert_bytes / tensor_parallel_size * (factor - 1)


def weights_bytes_per_gpu(shape: ModelShape, weights_bytes: float | None, tensor_parallel_size: int,
                          pipeline_parallel_size: int, quantization: str, dtype: str) -> float:
    """Weights on one GPU: the checkpoint split by TP and PP stages.

    Runtime fp8 quantizes the linear layers only: the embedding and LM head stay 16-bit.
    --dtype float32 doubles 16-bit checkpoints.
    """
    if weights_bytes is None:
        weights_bytes = shape.checkpoint_bytes()   # from config.json; PlanError when not understood
    embed_bytes = shape.vocab * shape.hidden * 2 * (1 if shape.tied_embeddings else 2)
    if dtype in ("float32", "float") and not shape.checkpoint_quantization:
        weights_bytes *= 2
        embed_bytes *= 2
    if quantization == "fp8" and not shape.checkpoint_quantization:
        weights_bytes = (weights_bytes - embed_bytes) / 2 + embed_bytes
    # On every GPU: the rotary caches, what the MXFP4 MoE kernel pads its experts to, and for Llama 4
    # what vLLM was measured to load beyond the checkpoint's share (LOADED_BEYOND_CHECKPOINT).
    loaded = shape.rope_cache_bytes + mxfp4_padding_bytes(shape, tensor_parallel_size)
    if tensor_parallel_size > 1:
        loaded += weights_bytes / tensor_parallel_size * LOADED_BEYOND_CHECKPOINT.get(shape.model_type, 0.0)
    if pipeline_parallel_size == 1:
        return weights_bytes / tensor_parallel_size + loaded
    # Layers are split across stages; the first stage also holds the embedding (the last the
    # LM head), so the heaviest stage carries one vocabulary matrix on top of its layers.
    one_vocab_matrix = embed_bytes / (1 if shape.tied_embeddings else 2)
    return ((weights_bytes - embed_bytes) / pipeline_parallel_size + one_vocab_matrix) / tensor_parallel_size + loaded


def activation_peak_gib(shape: ModelShape, max_num_seqs: int, max_num_batched_tokens: int, pipeline_parallel_size: int,
                        version: tuple[int, ...], dtype: str) -> float:
    # 0.17.0 sorts top-k/top-p with a Triton kernel (PR #33538) instead of torch's full sort.
    copies = SAMPLER_COPIES if version >= (0, 17, 0) else SAMPLER_COPIES_BEFORE_0_17
    sampler = copies * max_num_seqs * shape.vocab * 4 / GIB
    if pipeline_parallel_size > 1:
        # Stages share the batch in micro-batches; the last stage's sampler sees half of it.
        sampler /= 2
    width = 4 if dtype in ("float32", "float") else 2
    forward = max_num_batched_tokens * 2 * (shape.expert_intermediate or shape.intermediate) * width * 2 / GIB
    return max(sampler, forward) + ACTIVATION_BASE_GIB


def non_torch_gib(tensor_parallel_size: int, pipeline_parallel_size: int, version: tuple[int, ...]) -> float:
    if tensor_parallel_size >= 2:
        return NON_TORCH_TP2_GIB
    if pipeline_parallel_size >= 2:
        return NON_TORCH_PP_ONLY_GIB
    return NON_TORCH_TP1_GIB if version >= (0, 18, 0) else NON_TORCH_TP1_BEFORE_0_18_GIB


def kv_dtype_bytes(shape: ModelShape, kv_cache_dtype: str | None, dtype: str = "auto") -> int:
    """Bytes per KV element: fp8 caches 1; otherwise the model's dtype (float32 4, 16-bit 2)."""
    if kv_cache_dtype and kv_cache_dtype.startswith("fp8"):
        return 1
    if dtype in ("float32", "float") or (dtype == "auto" and shape.torch_dtype in ("float32", "float")):
        return 4
    return 2


def kv_layout(shape: ModelShape, tensor_parallel_size: int, pipeline_parallel_size: int, kv_cache_dtype: str | None,
              dtype: str, block_size: int, chunked_as_full: bool = False) -> tuple[int, int, dict[str, int], int]:
    """Page size per layer-block and the grouping of layer kinds, as vLLM's KV-cache manager builds them
    (chunked_as_full: the releases that turn the hybrid manager off for chunked local attention)."""
    dtype_bytes = kv_dtype_bytes(shape, kv_cache_dtype, dtype)
    page = block_size * shape.kv_bytes_per_token_per_layer(tensor_parallel_size, dtype_bytes)
    layers_per_stage = cdiv(shape.layers, pipeline_parallel_size)
    kinds = shape.layer_kinds[:layers_per_stage] if shape.layer_kinds else [FULL] * layers_per_stage
    if chunked_as_full:
        kinds = [FULL if kind == CHUNKED else kind for kind in kinds]
    counts = {kind: kinds.count(kind) for kind in (FULL, SLIDING, CHUNKED, LINEAR) if kinds.count(kind)}
    if len(counts) == 1:
        group_size = layers_per_stage
        groups = {kind: 1 for kind in counts}
    else:
        smallest, largest = min(counts.values()), max(counts.values())
        group_size = largest if largest < 1.5 * smallest else smallest
        groups = {kind: cdiv(n, group_size) for kind, n in counts.items()}
    return page, group_size, groups, dtype_bytes


def in_flight_tokens(max_num_batched_tokens: int, pipeline_parallel_size: int, version: tuple[int, ...],
                     cpu_engine: bool) -> int:
    """Tokens scheduled but not yet settled, which sliding-window and chunked layers keep blocks for.

    vLLM 0.32 (config/vllm.py, max_in_flight_tokens) reserves one max_num_batched_tokens batch per
    concurrent batch: async scheduling, on by default on GPUs, runs pipeline_parallel_size + 1 of
    them (the V2 model runner, the GPU default). The CPU build turns async scheduling off: one
    batch per pipeline stage. Before 0.32 one batch is assumed, as the older sources read.
    """
    if version < IN_FLIGHT_BATCHES_FROM:
        return max_num_batched_tokens
    batches = pipeline_parallel_size if cpu_engine else pipeline_parallel_size + 1
    return max_num_batched_tokens * batches


def hybrid_block_size(shape: ModelShape, tensor_parallel_size: int, kv_dtype_bytes: int, block_size: int,
                      speculative_tokens: int) -> int:
    """The attention block of a gated-DeltaNet hybrid, enlarged until one attention page holds a
    linear layer's state (conv state + recurrent state, model dtype), as vLLM 0.32's
    _align_hybrid_block_size does: Qwen3-Next-80B gets 544-token blocks."""
    if not shape.linear_attention:
        return block_size
    conv_dim, kernel, value_heads, value_dim, key_dim = shape.linear_attention
    state_bytes = 2 if shape.torch_dtype not in ("float32", "float") else 4
    state = ((conv_dim // tensor_parallel_size) * (kernel - 1 + speculative_tokens)
             + (value_heads // tensor_parallel_size) * value_dim * key_dim) * state_bytes
    per_token = shape.kv_bytes_per_token_per_layer(tensor_parallel_size, kv_dtype_bytes)
    aligned = KERNEL_BLOCK_ALIGNMENT * cdiv(state, KERNEL_BLOCK_ALIGNMENT * per_token)
    return max(block_size, aligned)


def blocks_per_request(shape: ModelShape, groups: dict[str, int], max_model_len: int, in_flight: int,
                       block_size: int, state_blocks: int = 1) -> int:
    """Blocks one request of max_model_len holds; window layers keep their window plus the
    tokens in flight (in_flight_tokens), linear-attention layers `state_blocks` each."""
    need = 0
    for kind, count in groups.items():
        if kind == LINEAR:
            per_group = state_blocks
        elif kind == SLIDING:
            per_group = cdiv(min(shape.sliding_window - 1 + in_flight, max_model_len), block_size) + 1
        elif kind == CHUNKED:
            per_group = cdiv(min(shape.chunk_size + in_flight, max_model_len), block_size)
        else:
            per_group = cdiv(max_model_len, block_size)
        need += count * per_group
    return need


def estimate_memory(shape: ModelShape, *, gpu_memory_gib: float, tensor_parallel_size: int = 1,
                    pipeline_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                    max_model_len: int | None = None, max_num_batched_tokens: int | None = None,
                    max_num_seqs: int | None = None, weights_bytes: float | None = None, quantization: str = "",
                    kv_cache_dtype: str = "auto", dtype: str = "auto", vllm_version: str = "0.32.0",
                    block_size: int = 16, enforce_eager: bool = False, cpu_kvcache_space_gib: float | None = None,
                    speculation: Speculation | None = None, prefix_caching: bool = True, gpu_name: str = "",
                    name: str = "model") -> MemoryEstimate:
    """Predict what vLLM will report at start-up on one GPU (or, for the CPU engine, in its KV space).

    A draft or EAGLE model (speculation) adds its weights, a margin for what is not measured, and
    its layers' KV bytes to every block."""
    version = parse_version(vllm_version)
    if tensor_parallel_size < 1 or pipeline_parallel_size < 1:
        raise PlanError("model %s: tensor and pipeline parallel sizes must be 1 or more" % name)
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError("model %s: gpu_memory_utilization must be in (0, 1], not %s" % (name, gpu_memory_utilization))
    if not shape.use_mla and shape.heads % tensor_parallel_size:
        raise PlanError("model %s: tensor_parallel_size %d does not divide its %d attention heads"
                        % (name, tensor_parallel_size, shape.heads))
    max_model_len = int(max_model_len or shape.max_position)
    if max_model_len <= 0:
        raise PlanError("model %s: max_model_len must be positive" % name)
    defaults = vllm_defaults(version, gpu_memory_gib, gpu_name)
    max_num_batched_tokens = int(max_num_batched_tokens or defaults["max_num_batched_tokens"])
    max_num_seqs = int(max_num_seqs or defaults["max_num_seqs"])

    chunked_as_full = CHUNKED_AS_FULL[0] <= version < CHUNKED_AS_FULL[1]
    speculative_tokens = speculation.num_speculative_tokens if speculation else 0
    if shape.linear_attention:
        block_size = hybrid_block_size(shape, tensor_parallel_size, kv_dtype_bytes(shape, kv_cache_dtype, dtype),
                                       block_size, speculative_tokens)
    state_blocks = (2 if prefix_caching and version >= HYBRID_PREFIX_CACHING_FROM else 1) + speculative_tokens
    page, group_size, groups, kv_element_bytes = kv_layout(shape, tensor_parallel_size, pipeline_parallel_size,
                                                         kv_cache_dtype, dtype, block_size, chunked_as_full)
    draft = draft_load(speculation, shape, tensor_parallel_size, kv_element_bytes, name)
    draft_gib = (draft.weights_bytes / GIB + draft.unmeasured_gib) if draft else 0.0
    if cpu_kvcache_space_gib is not None:
        weights = weights_bytes_per_gpu(shape, weights_bytes, tensor_parallel_size, pipeline_parallel_size,
                                        quantization, dtype) / GIB
        activation = non_torch = graphs = 0.0
        requested = available = float(cpu_kvcache_space_gib)
    else:
        weights = weights_bytes_per_gpu(shape, weights_bytes, tensor_parallel_size, pipeline_parallel_size,
                                        quantization, dtype) / GIB
        activation = activation_peak_gib(shape, max_num_seqs, max_num_batched_tokens, pipeline_parallel_size,
                                         version, dtype)
        non_torch = non_torch_gib(tensor_parallel_size, pipeline_parallel_size, version)
        graphs = CUDA_GRAPH_ESTIMATE_GIB if version >= CUDA_GRAPHS_DEDUCTED_FROM and not enforce_eager else 0.0
        requested = gpu_memory_gib * gpu_memory_utilization
        available = requested - weights - draft_gib - activation - non_torch - graphs
    held_back = [(margin, text) for margin, text in ((UNFOLLOWED_RELEASE_MARGIN, release_caveat(version)),
                                                     (UNMODELLED_LAYERS_MARGIN, layers_caveat(shape))) if text]
    caveats = [text for _, text in held_back]
    if cpu_kvcache_space_gib is None and available > 0:
        # Held back, not spent: the margins of what the planner does not follow.
        for margin, _ in held_back:
            available *= 1 - margin

    block_bytes = page * group_size + (draft.kv_bytes_per_token * block_size if draft else 0)
    num_blocks = max(0, int(available * GIB) // block_bytes) if available > 0 else 0
    group_count = sum(groups.values())
    in_flight = in_flight_tokens(max_num_batched_tokens, pipeline_parallel_size, version,
                                 cpu_engine=cpu_kvcache_space_gib is not None)
    need = blocks_per_request(shape, groups, max_model_len, in_flight, block_size, state_blocks)
    concurrency = num_blocks / need if need else 0.0
    # From v0.21 the CPU engine's "CPU KV cache size" line comes from the same function as the GPU's:
    # for hybrid models it counts the sliding groups' smaller reservations too.
    tokens = (int(concurrency * max_model_len) if version >= TOKENS_AS_CONCURRENCY_FROM
              else num_blocks // group_count * block_size)

    fits_len = 0
    low, high = 1, max(max_model_len, shape.max_position)
    while low <= high:
        mid = (low + high) // 2
        if blocks_per_request(shape, groups, mid, in_flight, block_size, state_blocks) <= num_blocks:
            fits_len, low = mid, mid + 1
        else:
            high = mid - 1

    if available <= 0:
        fits, reason = False, ("model %s needs %.2f GiB per GPU for weights, activations and buffers but %.2f GiB "
                               "(%.2f GiB x %.2f) are requested: no memory is left for the KV cache"
                               % (name, weights + draft_gib + activation + non_torch + graphs, requested,
                                  gpu_memory_gib, gpu_memory_utilization))
    elif need > num_blocks:
        fits, reason = False, ("model %s: one request of %d tokens needs %.2f GiB of KV cache per GPU, %.2f GiB is "
                               "available; the longest request that fits is %d tokens"
                               % (name, max_model_len, need * block_bytes / GIB, available, fits_len))
    else:
        fits, reason = True, ("%.2f GiB KV cache per GPU: %d tokens, %.1f requests of %d tokens at once"
                              % (available, tokens, concurrency, max_model_len))
    return MemoryEstimate(
        weights_gib_per_gpu=round(weights, 3), draft_gib=round(draft_gib, 3), caveat="; ".join(caveats),
        activation_peak_gib=round(activation, 3),
        non_torch_gib=round(non_torch, 3), cuda_graph_gib=round(graphs, 3), requested_gib=round(requested, 3),
        available_kv_cache_gib=round(available, 3),
        kv_bytes_per_token=(page // block_size * cdiv(shape.layers, pipeline_parallel_size)
                            + (draft.kv_bytes_per_token if draft else 0)),
        block_size=block_size, num_blocks=num_blocks, kv_cache_groups=group_count, kv_cache_tokens=tokens,
        max_concurrency=round(concurrency, 2), max_model_len=max_model_len, max_model_len_that_fits=fits_len,
        fits=fits, reason=reason)
