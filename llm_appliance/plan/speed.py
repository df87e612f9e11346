"""Single-stream decode speed, a memory-bandwidth roofline, and what would reach a target speed.

The plan (decide.py) and `appliance-plan memory` (cli.py) both predict with predict_decode, so
the figure an operator checks by hand is the one the plan is made with.
"""
from dataclasses import asdict, dataclass
from typing import Any

from llm_appliance.plan.config import ModelShape
from llm_appliance.plan.memory import GIB, weights_bytes_per_gpu
from llm_appliance.plan.placement import valid_tp_sizes

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


def gpu_bandwidth_gbps(gpu: dict[str, Any]) -> float | None:
    """The inventory's memory_bandwidth_gbps, else the table's figure for the GPU's name (longest match)."""
    if gpu.get("memory_bandwidth_gbps"):
        return float(gpu["memory_bandwidth_gbps"])
    name = gpu.get("name", "")
    for known in sorted(GPU_BANDWIDTH_GBPS, key=len, reverse=True):
        if known in name:
            return GPU_BANDWIDTH_GBPS[known]
    return None


def decode_tokens_per_s(shape: ModelShape, weights_gib_per_gpu: float, tensor_parallel_size: int,
                        bandwidth_gbps: float | None) -> float | None:
    """Single-stream decode speed from memory bandwidth: each token reads every active weight once."""
    if not bandwidth_gbps:
        return None
    active_share = shape.active_params_estimate() / max(shape.params_estimate, 1)
    bytes_per_token_per_gpu = weights_gib_per_gpu * GIB * active_share
    seconds = bytes_per_token_per_gpu / (bandwidth_gbps * 1e9 * DECODE_EFFICIENCY)
    seconds *= 1 + TP_STEP_OVERHEAD * (tensor_parallel_size - 1)
    return round(1 / seconds, 1)


@dataclass
class DecodePrediction:
    """A decode speed with the assumptions behind it, so that an operator can check the figure."""
    tokens_per_s: float | None
    memory_bandwidth_gbps: float | None
    efficiency: float
    tensor_parallel_size: int
    tp_step_overhead: float
    quantization: str
    weights_gib_per_gpu: float
    active_weight_share: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_decode(shape: ModelShape, weights_gib_per_gpu: float, tensor_parallel_size: int,
                   bandwidth_gbps: float | None, quantization: str = "") -> DecodePrediction:
    """decode_tokens_per_s and what it assumed; quantization (runtime, else the checkpoint's) is
    only named here: it is already in weights_gib_per_gpu."""
    return DecodePrediction(
        tokens_per_s=decode_tokens_per_s(shape, weights_gib_per_gpu, tensor_parallel_size, bandwidth_gbps),
        memory_bandwidth_gbps=bandwidth_gbps, efficiency=DECODE_EFFICIENCY,
        tensor_parallel_size=tensor_parallel_size, tp_step_overhead=TP_STEP_OVERHEAD,
        quantization=quantization or shape.checkpoint_quantization or "none",
        weights_gib_per_gpu=weights_gib_per_gpu,
        active_weight_share=round(shape.active_params_estimate() / max(shape.params_estimate, 1), 4))


def _speed_option(shape: ModelShape, entry: dict[str, Any], tp: int, size: int, quantization: str,
                  bandwidth: float) -> tuple[float, str]:
    """The speed of one alternative (a TP size, a quantization) and how the advice names it."""
    weights = weights_bytes_per_gpu(shape, entry.get("weights_bytes"), size, 1, quantization,
                                    entry.get("dtype", "auto")) / GIB
    speed = decode_tokens_per_s(shape, weights, size, bandwidth)
    assert speed is not None   # the bandwidth is known: the plan's own prediction was made with it
    label = " and ".join(part for part in (
        "fp8 weights" if quantization == "fp8" and not entry.get("quantization") else "",
        "tensor_parallel_size %d" % size if size != tp else "") if part)
    return speed, label


def speed_options(shape: ModelShape, entry: dict[str, Any], tp: int, gpu_count: int, bandwidth: float,
                  target: float) -> str:
    """What would reach the decode-speed target: fp8 weights and/or more GPUs, each figure from the
    same roofline; the fewest GPUs first. Says so when nothing on this host would."""
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
            speed, label = _speed_option(shape, entry, tp, size, quantization, bandwidth)
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
    """The plan's line on decode speed: whether it meets the target, and if not, what would."""
    speed, bandwidth = prediction.tokens_per_s, prediction.memory_bandwidth_gbps
    if speed is None:
        return None
    assert bandwidth is not None   # predict_decode gives a speed only when the bandwidth is known
    if speed >= target:
        return "predicted %.0f tokens/s per stream (roofline, %d%% of %d GB/s): meets %d" % (
            speed, prediction.efficiency * 100, bandwidth, target)
    return ("predicted %.0f tokens/s per stream (roofline, %d%% of %d GB/s): below %d; %s"
            % (speed, prediction.efficiency * 100, bandwidth, target,
               speed_options(shape, entry, prediction.tensor_parallel_size, gpu_count, bandwidth, target)))
