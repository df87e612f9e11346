"""Decode speed: one stream's tokens/s, how many streams keep a target speed, and what would
reach it.

A decode step reads the weights once (the LM head and every decoder layer's linears, the routed
experts at their active share; not the input embedding, not a vision tower) and each stream's KV
cache, at a share of the GPU's memory bandwidth that depends on the weights' format, plus a
fixed cost per layer and, at TP > 1, two all-reduces per layer whose latency depends on NVLink
versus PCIe. A batch computes 2 FLOPs per active weight per stream against the GPU's tensor
throughput. The plan (decide.py) and `appliance-plan memory` (cli.py) both predict with
predict_decode, so the figure an operator checks by hand is the one the plan is made with.
"""
from dataclasses import asdict, dataclass
from typing import Any

from llm_appliance.plan.config import CHUNKED, FULL, SLIDING, ModelShape
from llm_appliance.plan.memory import GIB
from llm_appliance.plan.placement import valid_tp_sizes

# Memory bandwidth (GB/s) of known GPUs, for the decode roofline; the inventory may override it.
GPU_BANDWIDTH_GBPS = {
    "H100 80GB HBM3": 3350, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
    "H200": 4800, "GH200": 4000, "B200": 8000, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935,
    "A100-SXM4-40GB": 1555, "A100": 1555, "L40S": 864, "L40": 864, "L4": 300, "A10": 600,
}
# Dense 16-bit tensor throughput (TFLOP/s, without sparsity) from NVIDIA's data sheets: what a
# batch of streams computes against once the weights are read.
GPU_PEAK_TFLOPS = {
    "H100 80GB HBM3": 989, "H100 SXM": 989, "H100 NVL": 835, "H100 PCIe": 756, "H100": 989, "H200": 989,
    "GH200": 989, "B200": 2250, "A100": 312, "L40S": 362, "L40": 181, "L4": 121, "A10": 125,
}


def _by_name(table: dict[str, int], gpu: dict[str, Any]) -> float | None:
    name = gpu.get("name", "")
    for known in sorted(table, key=len, reverse=True):
        if known in name:
            return float(table[known])
    return None


def gpu_bandwidth_gbps(gpu: dict[str, Any]) -> float | None:
    """The inventory's memory_bandwidth_gbps, else the table's figure for the GPU's name (longest match)."""
    if gpu.get("memory_bandwidth_gbps"):
        return float(gpu["memory_bandwidth_gbps"])
    return _by_name(GPU_BANDWIDTH_GBPS, gpu)


def gpu_peak_tflops(gpu: dict[str, Any]) -> float | None:
    """The inventory's peak_tflops, else the table's figure for the GPU's name (longest match)."""
    if gpu.get("peak_tflops"):
        return float(gpu["peak_tflops"])
    return _by_name(GPU_PEAK_TFLOPS, gpu)


# What one decode step costs besides reading memory, and how well each weight format's kernels
# read it: fitted by bench/decode_accuracy.py --fit on published single-stream measurements
# (bench/calibration/decode-measurements.json, each row with its source; docs/planner.md has the
# errors). 16-bit 0.85, int8 0.84 and int4 0.68 from Qwen's A100 tables (vLLM 0.6.3); fp8 is
# taken as int8 (one byte a weight; no single-stream fp8 row was found), mxfp4 as int4. The
# per-layer cost is V1's (Llama-3.1-8B on H100 and A100, vLLM 0.19-0.23), with no per-step
# constant: the V1 rows all have 32 layers, so deeper models are charged more, never less.
# MoE: the one single-stream row (Qwen2-57B-A14B, vLLM 0.4.2, not in the fit) matches when its
# routed experts are read at 0.3 of that; kept, conservatively, until a newer measurement.
@dataclass(frozen=True)
class DecodeCosts:
    # Share of peak memory bandwidth a batch-1 matrix-vector product reaches, by the format the
    # linear layers are stored in (KV-cache reads and the 16-bit LM head use "16-bit").
    efficiency: dict[str, float]
    moe_efficiency: float     # routed experts' share of that (a fused-MoE kernel reads a few experts' rows)
    step_ms: float            # per step: scheduler, sampler, the CUDA graph's launch
    layer_us: float           # per decoder layer per step: kernels that read little (norms, rotary, attention setup)
    allreduce_us: dict[str, float]   # per all-reduce (two per layer at TP > 1), by interconnect


# All-reduce latencies are measured, not fitted (a decode step's message is hidden x 2 bytes,
# 8-16 KiB): vLLM's custom all-reduce on NVLinked H100s, 8.5-9.2 us at TP 2/4 for 4-32 KiB
# (github.com/sgl-project/sglang/pull/2904, "vllm" table); NCCL over PCIe on 8 GPUs, 40-42 us
# for small messages (github.com/NVIDIA/nccl/issues/1530).
DECODE_COSTS = DecodeCosts(
    efficiency={"16-bit": 0.85, "int8": 0.84, "int4": 0.68, "fp8": 0.84, "mxfp4": 0.68}, moe_efficiency=0.3,
    step_ms=0.0, layer_us=40.0, allreduce_us={"nvlink": 9.0, "pcie": 40.0})


def weight_format(shape: ModelShape, quantization: str = "") -> str:
    """The format the linear layers are read in; runtime fp8 (--quantization fp8) stores them in one
    byte (the LM head stays 16-bit)."""
    if quantization == "fp8" and not shape.checkpoint_quantization:
        return "fp8"
    return shape.weight_format


@dataclass
class DecodeStep:
    """One decode step of a batch, by where its time goes (milliseconds)."""
    weights_ms: float
    kv_ms: float
    compute_ms: float
    fixed_ms: float
    allreduce_ms: float

    @property
    def total_ms(self) -> float:
        return max(self.weights_ms + self.kv_ms, self.compute_ms) + self.fixed_ms + self.allreduce_ms


def read_bytes(shape: ModelShape, weights_bytes: float | None, quantization: str) -> tuple[float, float]:
    """Bytes a decoded token reads from the weights, (decoder layers, LM head), whole model.

    From config.json when the planner understands the checkpoint; else from the checkpoint size
    (the input embedding taken out, the routed experts at their active share)."""
    layers, head = float(shape.decode_layer_bytes), float(shape.decode_head_bytes)
    if not layers:
        embedding = shape.vocab * shape.hidden * 2.0
        total = float(weights_bytes or shape.params_estimate * 2)
        active = shape.active_params_estimate() / max(shape.params_estimate, 1)
        head = embedding
        layers = max(total - embedding * (1 if shape.tied_embeddings else 2), 0.0) * active
    if quantization == "fp8" and not shape.checkpoint_quantization:
        layers /= 2
    return layers, head


def kv_read_bytes_per_token(shape: ModelShape, context_tokens: int, tensor_parallel_size: int,
                            kv_dtype_bytes: int) -> float:
    """KV-cache bytes one decoded token reads on one GPU at a context: every layer's K and V of
    each earlier token, a sliding or chunked layer only its window."""
    per_layer = shape.kv_bytes_per_token_per_layer(tensor_parallel_size, kv_dtype_bytes)
    kinds = shape.layer_kinds or [FULL] * shape.layers
    total = 0
    for kind in kinds:
        if kind == SLIDING:
            total += min(context_tokens, shape.sliding_window or context_tokens)
        elif kind == CHUNKED:
            total += min(context_tokens, shape.chunk_size or context_tokens)
        else:
            total += context_tokens
    return float(per_layer * total)


def decode_step(shape: ModelShape, *, weights_bytes: float | None, tensor_parallel_size: int,
                bandwidth_gbps: float, quantization: str = "", interconnect: str = "nvlink",
                context_tokens: int = 0, batch: int = 1, kv_dtype_bytes: int = 2,
                peak_tflops: float | None = None, pipeline_parallel_size: int = 1,
                costs: DecodeCosts = DECODE_COSTS) -> DecodeStep:
    """The time of one decode step for `batch` streams at a context, on one tensor-parallel group.

    Pipeline stages run one after another for a stream, so a token reads every stage's layers in
    turn: the same bytes as one stage with all of them (inter-host hops are not counted).
    """
    layers_bytes, head_bytes = read_bytes(shape, weights_bytes, quantization)
    bandwidth = bandwidth_gbps * 1e6          # bytes per millisecond
    fmt = weight_format(shape, quantization)
    efficiency = costs.efficiency[fmt] * (costs.moe_efficiency if shape.experts else 1.0)
    weights_ms = (layers_bytes / bandwidth / efficiency
                  + head_bytes / bandwidth / costs.efficiency["16-bit"]) / tensor_parallel_size
    kv_ms = batch * kv_read_bytes_per_token(shape, context_tokens, tensor_parallel_size, kv_dtype_bytes) / (
        bandwidth * costs.efficiency["16-bit"])
    compute_ms = 0.0
    if peak_tflops:
        # Two FLOPs per active weight per token, at half the dense peak (decode's small matrices).
        compute_ms = 2.0 * shape.active_params_estimate() * batch / tensor_parallel_size / (peak_tflops * 1e9 * 0.5)
    fixed_ms = costs.step_ms + shape.layers * costs.layer_us / 1000
    allreduce_ms = 0.0
    if tensor_parallel_size > 1:
        allreduce_ms = 2 * shape.layers * costs.allreduce_us[interconnect] / 1000
    del pipeline_parallel_size   # the same bytes and layers either way (see above)
    return DecodeStep(weights_ms, kv_ms, compute_ms, fixed_ms, allreduce_ms)


def decode_tokens_per_s(shape: ModelShape, weights_bytes: float | None, tensor_parallel_size: int,
                        bandwidth_gbps: float | None, quantization: str = "", interconnect: str = "nvlink",
                        context_tokens: int = 0, costs: DecodeCosts = DECODE_COSTS) -> float | None:
    """Single-stream decode speed: 1000 / one step's milliseconds."""
    if not bandwidth_gbps:
        return None
    step = decode_step(shape, weights_bytes=weights_bytes, tensor_parallel_size=tensor_parallel_size,
                       bandwidth_gbps=bandwidth_gbps, quantization=quantization, interconnect=interconnect,
                       context_tokens=context_tokens, costs=costs)
    return round(1000 / step.total_ms, 1)


def streams_at_speed(shape: ModelShape, *, weights_bytes: float | None, tensor_parallel_size: int,
                     bandwidth_gbps: float, quantization: str, interconnect: str, context_tokens: int,
                     kv_dtype_bytes: int, peak_tflops: float | None, target: float, most: int) -> int:
    """How many streams decode together at `target` tokens/s each or faster (0: not even one), up
    to `most` (the engine's max_num_seqs, or what its KV cache holds at that context). A step
    reads the weights once for all of them, each stream's KV cache, and computes for each."""
    def fast_enough(batch: int) -> bool:
        step = decode_step(shape, weights_bytes=weights_bytes, tensor_parallel_size=tensor_parallel_size,
                           bandwidth_gbps=bandwidth_gbps, quantization=quantization, interconnect=interconnect,
                           context_tokens=context_tokens, batch=batch, kv_dtype_bytes=kv_dtype_bytes,
                           peak_tflops=peak_tflops)
        return 1000 / step.total_ms >= target
    low, high = 0, max(most, 0)
    while low < high:
        middle = (low + high + 1) // 2
        if fast_enough(middle):
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class DecodePrediction:
    """A decode speed with what it assumed and where a step's time goes, so that an operator can
    check the figure."""
    tokens_per_s: float | None
    memory_bandwidth_gbps: float | None
    tensor_parallel_size: int
    interconnect: str
    weight_format: str
    quantization: str
    context_tokens: int
    read_gib_per_gpu: float           # weights a token reads on one GPU (all pipeline stages)
    step_ms: dict[str, float]         # weights, kv, fixed, allreduce, total
    efficiency: float                 # of the linear layers' format
    costs: dict[str, Any]
    streams_at_target: int | None = None
    target_tokens_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_decode(shape: ModelShape, *, weights_bytes: float | None, tensor_parallel_size: int,
                   bandwidth_gbps: float | None, quantization: str = "", interconnect: str = "nvlink",
                   context_tokens: int = 0, kv_dtype_bytes: int = 2, peak_tflops: float | None = None,
                   target: float | None = None, most_streams: int = 0) -> DecodePrediction:
    """The single-stream speed at a context and, with a target, how many streams hold it."""
    layers, head = read_bytes(shape, weights_bytes, quantization)
    fmt = weight_format(shape, quantization)
    prediction = DecodePrediction(
        tokens_per_s=None, memory_bandwidth_gbps=bandwidth_gbps, tensor_parallel_size=tensor_parallel_size,
        interconnect=interconnect, weight_format=fmt,
        quantization=quantization or shape.checkpoint_quantization or "none", context_tokens=context_tokens,
        read_gib_per_gpu=round((layers + head) / tensor_parallel_size / GIB, 3), step_ms={},
        efficiency=DECODE_COSTS.efficiency[fmt],
        costs={"step_ms": DECODE_COSTS.step_ms, "layer_us": DECODE_COSTS.layer_us,
               "allreduce_us": DECODE_COSTS.allreduce_us[interconnect] if tensor_parallel_size > 1 else 0.0},
        target_tokens_per_s=target)
    if not bandwidth_gbps:
        return prediction
    step = decode_step(shape, weights_bytes=weights_bytes, tensor_parallel_size=tensor_parallel_size,
                       bandwidth_gbps=bandwidth_gbps, quantization=quantization, interconnect=interconnect,
                       context_tokens=context_tokens, kv_dtype_bytes=kv_dtype_bytes)
    prediction.tokens_per_s = round(1000 / step.total_ms, 1)
    prediction.step_ms = {key: round(value, 3) for key, value in (
        ("weights", step.weights_ms), ("kv", step.kv_ms), ("fixed", step.fixed_ms),
        ("allreduce", step.allreduce_ms), ("total", step.total_ms))}
    if target:
        prediction.streams_at_target = streams_at_speed(
            shape, weights_bytes=weights_bytes, tensor_parallel_size=tensor_parallel_size,
            bandwidth_gbps=bandwidth_gbps, quantization=quantization, interconnect=interconnect,
            context_tokens=context_tokens, kv_dtype_bytes=kv_dtype_bytes, peak_tflops=peak_tflops, target=target,
            most=most_streams)
    return prediction


def _speed_option(shape: ModelShape, entry: dict[str, Any], tp: int, size: int, quantization: str,
                  prediction: DecodePrediction) -> tuple[float, str]:
    """The speed of one alternative (a TP size, a quantization) and how the advice names it."""
    assert prediction.memory_bandwidth_gbps is not None   # the plan's own prediction was made with it
    speed = decode_tokens_per_s(shape, entry.get("weights_bytes"), size, prediction.memory_bandwidth_gbps,
                                quantization, prediction.interconnect, prediction.context_tokens)
    assert speed is not None
    label = " and ".join(part for part in (
        "fp8 weights" if quantization == "fp8" and not entry.get("quantization") else "",
        "tensor_parallel_size %d" % size if size != tp else "") if part)
    return speed, label


def speed_options(shape: ModelShape, entry: dict[str, Any], prediction: DecodePrediction, gpu_count: int,
                  target: float) -> str:
    """What would reach the decode-speed target: fp8 weights and/or more GPUs, each figure from the
    same model; the fewest GPUs first. Says so when nothing on this host would."""
    tp = prediction.tensor_parallel_size
    quantizations = [entry.get("quantization", "")]
    if not entry.get("quantization") and not shape.checkpoint_quantization:
        quantizations.append("fp8")
    options: list[tuple[bool, int, bool, float, str]] = []   # (reaches it, TP size, quantized, speed, label)
    for size in valid_tp_sizes(shape, gpu_count):
        if size < tp:
            continue
        for quantization in quantizations:
            if size == tp and quantization == quantizations[0]:
                continue  # the plan as it stands
            speed, label = _speed_option(shape, entry, tp, size, quantization, prediction)
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


def speed_reason(prediction: DecodePrediction, shape: ModelShape, entry: dict[str, Any], gpu_count: int,
                 target: float) -> str | None:
    """The plan's line on decode speed: whether it meets the target, how many streams hold it, and
    if not, what would."""
    speed, bandwidth = prediction.tokens_per_s, prediction.memory_bandwidth_gbps
    if speed is None or bandwidth is None:
        return None
    how = ("reads %.1f GiB per GPU per token at %d%% of %d GB/s, %.1f ms fixed per step%s, at a %d-token context"
           % (prediction.read_gib_per_gpu, prediction.efficiency * 100, bandwidth, prediction.step_ms["fixed"],
              ", %.1f ms of %s all-reduce" % (prediction.step_ms["allreduce"], prediction.interconnect)
              if prediction.step_ms["allreduce"] else "", prediction.context_tokens))
    if speed >= target:
        return "predicted %.0f tokens/s per stream (%s): meets %d; about %d streams at once keep %d each" % (
            speed, how, target, prediction.streams_at_target or 0, target)
    return ("predicted %.0f tokens/s per stream (%s): below %d; %s"
            % (speed, how, target, speed_options(shape, entry, prediction, gpu_count, target)))
