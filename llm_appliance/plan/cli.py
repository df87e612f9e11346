"""scripts/appliance-plan: ask the planner whether a model fits, before touching a server.

    appliance-plan memory --config CONFIG.json --gpu-memory-gib 79.19 --tensor-parallel-size 2
                          --gpu-memory-utilization 0.9 --max-model-len 32768 [--json] ...
    appliance-plan site --site SITE.json [--json]

`memory` prints vLLM's memory split and KV cache for one model, and its single-stream decode
speed with the assumptions behind it (the plan's own roofline, for --gpu-name's bandwidth).

`site` reads {"models": [catalog entries with config or config_path], "gpus": {...},
"engine": "cuda", "vllm_version": "0.32.0"} and prints the whole plan; several servers are
"hosts": {"gpu01": {...gpus...}, ...} instead of "gpus" (catalog entries may ask for `replicas`).
A plan that cannot work exits 1 with the reason and what would fit; unreadable input exits 2.
Neither prints a traceback.
"""
import argparse
import json
import os
import sys
from typing import Any

from llm_appliance.plan.config import ModelShape, parse_config
from llm_appliance.plan.decide import plan_cluster, plan_site
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import MemoryEstimate, estimate_memory, kv_dtype_bytes, parse_version, vllm_defaults
from llm_appliance.plan.speed import GPU_BANDWIDTH_GBPS, gpu_bandwidth_gbps, gpu_peak_tflops, predict_decode

# The appliance's reference GPU (79.19 GiB as CUDA reports it), for the decode prediction.
DEFAULT_GPU_NAME = "NVIDIA H100 80GB HBM3"
MEMORY_LINES = ("weights_gib_per_gpu", "activation_peak_gib", "non_torch_gib", "cuda_graph_gib",
                "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency", "fits", "reason")


class UsageError(Exception):
    pass


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise UsageError("cannot read %s %s: %s" % (what, path, exc.strerror)) from None
    except ValueError as exc:
        raise UsageError("%s %s is not valid JSON: %s" % (what, path, exc)) from None


def _weights_from_index(config_path: str) -> int | None:
    index = os.path.join(os.path.dirname(config_path), "model.safetensors.index.json")
    if os.path.exists(index):
        total_size: int | None = _read_json(index, "safetensors index").get("metadata", {}).get("total_size")
        return total_size
    return None


def cmd_memory(args: argparse.Namespace) -> int:
    if args.memory_bandwidth_gbps is not None and args.memory_bandwidth_gbps <= 0:
        raise UsageError("--memory-bandwidth-gbps must be positive, not %s" % args.memory_bandwidth_gbps)
    if args.context_tokens < 0 or args.target_tokens_per_s <= 0:
        raise UsageError("--context-tokens must be 0 or more and --target-tokens-per-s positive, not %s and %s"
                         % (args.context_tokens, args.target_tokens_per_s))
    config = _read_json(args.config, "config")
    shape = parse_config(config, os.path.basename(os.path.dirname(os.path.abspath(args.config))) or "model")
    weights = args.weights_bytes
    if weights is None and args.param_count:
        weights = args.param_count * (1 if shape.checkpoint_quantization else 2)
    if weights is None:
        weights = _weights_from_index(args.config)
    if args.gpu_memory_utilization is None:
        args.gpu_memory_utilization = vllm_defaults(parse_version(args.vllm_version), args.gpu_memory_gib,
                                                    args.gpu_name)["gpu_memory_utilization"]
    estimate = estimate_memory(
        shape, gpu_memory_gib=args.gpu_memory_gib, tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs, weights_bytes=weights, quantization=args.quantization or "",
        kv_cache_dtype=args.kv_cache_dtype, dtype=args.dtype, vllm_version=args.vllm_version,
        block_size=args.block_size, enforce_eager=args.enforce_eager, gpu_name=args.gpu_name,
        name=shape.architecture)
    decode = _decode_prediction(args, shape, weights, estimate)
    result = estimate.as_dict()
    if args.json:
        print(json.dumps(dict(result, decode=decode), indent=2, sort_keys=True))
    else:
        for key in MEMORY_LINES + (("caveat",) if result["caveat"] else ()):
            print("%-24s %s" % (key, result[key]))
        print("\n".join(_decode_lines(decode)))
    return 0 if estimate.fits else 1


def _decode_prediction(args: argparse.Namespace, shape: ModelShape, weights_bytes: int | None,
                       estimate: MemoryEstimate) -> dict[str, Any]:
    """The decode speed by the plan's own model (speed.predict_decode), whose bandwidth it used,
    and how many streams keep --target-tokens-per-s (capped by max_num_seqs and by the requests
    of --context-tokens the KV cache holds)."""
    source = "--memory-bandwidth-gbps" if args.memory_bandwidth_gbps else args.gpu_name
    gpu = {"name": args.gpu_name, "memory_bandwidth_gbps": args.memory_bandwidth_gbps}
    max_num_seqs = args.max_num_seqs or vllm_defaults(parse_version(args.vllm_version), args.gpu_memory_gib,
                                                      args.gpu_name)["max_num_seqs"]
    most = min(max_num_seqs, estimate.kv_cache_tokens // max(args.context_tokens, 1))
    prediction = predict_decode(
        shape, weights_bytes=weights_bytes, tensor_parallel_size=args.tensor_parallel_size,
        bandwidth_gbps=gpu_bandwidth_gbps(gpu), quantization=args.quantization or "", interconnect=args.interconnect,
        context_tokens=args.context_tokens, kv_dtype_bytes=kv_dtype_bytes(shape, args.kv_cache_dtype, args.dtype),
        peak_tflops=gpu_peak_tflops(gpu), target=args.target_tokens_per_s, most_streams=most)
    return dict(prediction.as_dict(), memory_bandwidth_source=source,
                pipeline_parallel_size=args.pipeline_parallel_size)


def _decode_lines(decode: dict[str, Any]) -> list[str]:
    """The prediction, where a step's time goes and each assumption, in the memory lines' format."""
    if decode["tokens_per_s"] is None:
        return ["%-24s n/a: the memory bandwidth of %r is not known; give --memory-bandwidth-gbps"
                % ("decode_tokens_per_s", decode["memory_bandwidth_source"])]
    step = decode["step_ms"]
    stages = (", its %d pipeline stages in turn" % decode["pipeline_parallel_size"]
              if decode["pipeline_parallel_size"] > 1 else "")
    return ["%-24s %s per stream at a %d-token context" % ("decode_tokens_per_s", decode["tokens_per_s"],
                                                          decode["context_tokens"]),
            "%-24s %s at %s tokens/s or more each (max_num_seqs and the KV cache allowing)"
            % ("streams_at_target", decode["streams_at_target"], "%g" % decode["target_tokens_per_s"]),
            "%-24s %.3f ms: weights %.3f (%.3f GiB per GPU%s), KV cache %.3f, fixed %.3f, all-reduce %.3f"
            % ("decode_step_ms", step["total"], step["weights"], decode["read_gib_per_gpu"], stages, step["kv"],
               step["fixed"], step["allreduce"]),
            "%-24s %s (%s)" % ("memory_bandwidth_gbps", "%g" % decode["memory_bandwidth_gbps"],
                               decode["memory_bandwidth_source"]),
            "%-24s %s of that bandwidth for %s weights (%s)" % ("decode_efficiency", decode["efficiency"],
                                                               decode["weight_format"], decode["quantization"]),
            "%-24s %d over %s, %g us per all-reduce, %g us per layer"
            % ("tensor_parallel_size", decode["tensor_parallel_size"], decode["interconnect"],
               decode["costs"]["allreduce_us"], decode["costs"]["layer_us"])]


def attach_configs(models: list[dict[str, Any]], base_dir: str) -> list[dict[str, Any]]:
    """Catalog entries with their config.json (and checkpoint size) read from the controller.

    The config comes from `config_path`, else `controller_path`/config.json; relative paths are
    taken from base_dir. Entries that already carry a config, or are absent, are left as they are.
    """
    result = []
    for model in models:
        model = dict(model)
        if "config" not in model and model.get("state", "present") == "present":
            config_path = model.get("config_path") or (
                os.path.join(model["controller_path"], "config.json") if model.get("controller_path") else None)
            if config_path:
                config_path = os.path.join(base_dir, config_path)
                model["config"] = _read_json(config_path, "config of model %s" % model.get("name"))
                if model.get("weights_bytes") is None:
                    model["weights_bytes"] = _weights_from_index(config_path)
        result.append(model)
    return result


def load_site(path: str) -> dict[str, Any]:
    site: dict[str, Any] = _read_json(path, "site")
    site["models"] = attach_configs(site.get("models", []), os.path.dirname(os.path.abspath(path)))
    return site


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as an operator reads it; a site's plan host by host."""
    if "hosts" in plan:
        lines = []
        for host, share in plan["hosts"].items():
            lines.append("%s%s:" % (host, " (engines at %s)" % share["address"] if share.get("address") else ""))
            lines += ["  " + line for line in format_plan(share).splitlines()] or ["  no model"]
        return "\n".join(lines)
    lines = []
    for model in plan["models"]:
        memory = model["memory"]
        lines.append("%s (%s): GPUs %s, TP %d, port %d" % (
            model["name"], model["profile"], model["gpus"] or "none (CPU engine)",
            model["tensor_parallel_size"], model["port"]))
        if model.get("nodes"):
            lines.append("  pipeline: %d stages on %s (Ray), GPUs %s" % (
                model["pipeline_parallel_size"], ", ".join(model["nodes"]),
                "; ".join("%s %s" % (host, gpus) for host, gpus in model["node_gpus"].items())))
        draft = ", draft %.2f" % memory["draft_gib"] if memory.get("draft_gib") else ""
        lines.append("  memory per GPU: weights %.2f GiB%s, activations %.2f, non-torch %.2f, CUDA graphs %.2f, "
                     "KV cache %.2f GiB" % (memory["weights_gib_per_gpu"], draft, memory["activation_peak_gib"],
                                            memory["non_torch_gib"], memory["cuda_graph_gib"],
                                            memory["available_kv_cache_gib"]))
        speed = "predicted %s tokens/s per stream" % (
            model["predicted_tokens_per_s"] if model["predicted_tokens_per_s"] is not None else "n/a")
        if model.get("streams_at_target_speed") is not None:
            speed += ", %d streams at %g or more each" % (model["streams_at_target_speed"],
                                                          model["decode"]["target_tokens_per_s"])
        lines.append("  KV tokens %d, %.1f requests of %d tokens at once, %s" % (
            model["kv_cache_tokens"], model["max_concurrency"], model["max_model_len"], speed))
        for reason in model["reasons"]:
            lines.append("  - " + reason)
    for stage in plan.get("pipeline_stages", []):
        if stage["rank"]:
            lines.append("stage %d of %s (a Ray worker of %s's cluster): GPUs %s" % (
                stage["rank"] + 1, stage["model"], stage["head"], stage["gpus"]))
    if plan.get("free_gpus"):
        lines.append("free GPUs: %s" % plan["free_gpus"])
    return "\n".join(lines)


def cmd_site(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    options = {"engine": site.get("engine", "cuda"), "vllm_version": site.get("vllm_version", "0.32.0"),
               "base_port": site.get("base_port", 8001)}
    if "hosts" in site:
        plan = plan_cluster(site.get("models", []), site["hosts"], **options)
    else:
        plan = plan_site(site.get("models", []), site.get("gpus"), **options)
    print(json.dumps(plan, indent=2, sort_keys=True) if args.json else format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance-plan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_memory_command(sub)
    site = sub.add_parser("site", help="plan every model of a site description")
    site.add_argument("--site", required=True,
                      help="JSON: models, gpus (one server) or hosts (name -> gpus, several), engine, vllm_version")
    site.add_argument("--json", action="store_true", help="print the plan as JSON")
    site.set_defaults(func=cmd_site)
    return parser


def _add_memory_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`memory`: one model's settings in, vLLM's memory figures and the decode speed out."""
    memory = sub.add_parser("memory", help="predict vLLM's memory split, KV cache and decode speed for one model",
                            description="Predict what vLLM reports at start-up for one model on one GPU "
                                        "(memory split, KV cache tokens, concurrency) and its single-stream "
                                        "decode speed. Exits 1 when one max-model-len request does not fit.")
    memory.add_argument("--config", required=True,
                        help="the model's config.json (a model.safetensors.index.json beside it gives the "
                             "checkpoint size)")
    memory.add_argument("--weights-bytes", type=int,
                        help="checkpoint size (safetensors total_size); default: the index beside --config, "
                             "else sized from config.json")
    memory.add_argument("--param-count", type=int, help="parameter count, when the checkpoint size is unknown")
    memory.add_argument("--quantization", choices=["fp8"],
                        help="runtime quantization: fp8 linear layers, embedding and LM head kept 16-bit")
    memory.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
                        help="KV cache data type: fp8 halves the KV page (default: auto, the model's dtype)")
    memory.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights and activations data type: float32 doubles a 16-bit checkpoint "
                             "(default: auto, the config's)")
    memory.add_argument("--gpu-memory-gib", type=float, required=True,
                        help="total memory of one GPU as CUDA reports it (nvidia-smi memory.total less "
                             "memory.reserved: 79.19 on an H100 80GB)")
    memory.add_argument("--tensor-parallel-size", type=int, required=True,
                        help="GPUs each layer is split across (must divide the attention heads)")
    memory.add_argument("--pipeline-parallel-size", type=int, default=1,
                        help="pipeline stages, each holding a share of the layers (default: 1)")
    memory.add_argument("--gpu-memory-utilization", type=float,
                        help="share of the GPU's memory vLLM may use, in (0, 1] (default: the release's, 0.9 "
                             "before vLLM 0.20, 0.92 from 0.20)")
    memory.add_argument("--max-model-len", type=int, required=True,
                        help="longest request (prompt + output) in tokens; one must fit in the KV cache")
    memory.add_argument("--max-num-batched-tokens", type=int,
                        help="tokens per scheduler step (default: vLLM's, 8192 on GPUs of 70 GiB or more but "
                             "A100s, 16384 on 160 GiB or more from 0.28, else 2048)")
    memory.add_argument("--max-num-seqs", type=int,
                        help="requests in one batch (default: vLLM's, 1024 where the batch default is 8192 or "
                             "more, else 256)")
    memory.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block (default: 16)")
    memory.add_argument("--enforce-eager", action="store_true",
                        help="no CUDA graphs: their memory is not deducted from the KV cache")
    memory.add_argument("--vllm-version", default="0.32.0",
                        help="the vLLM release whose arithmetic to follow (default: 0.32.0)")
    memory.add_argument("--json", action="store_true",
                        help="print JSON: the memory fields and `decode` (tokens_per_s and its assumptions)")
    _add_decode_options(memory)
    memory.set_defaults(func=cmd_memory)


def _add_decode_options(memory: argparse.ArgumentParser) -> None:
    """The decode model's inputs, with a group of their own in --help."""
    decode = memory.add_argument_group("decode speed", "the plan's model: a step reads the weights and each "
                                                       "stream's KV cache at a share of the GPU's memory "
                                                       "bandwidth, plus a fixed cost per layer and the "
                                                       "all-reduces of tensor parallelism")
    decode.add_argument("--gpu-name", default=DEFAULT_GPU_NAME,
                        help="the GPU whose memory bandwidth and tensor throughput the prediction uses (default: "
                             "%%(default)s; known: names containing %s)" % ", ".join(sorted(GPU_BANDWIDTH_GBPS)))
    decode.add_argument("--memory-bandwidth-gbps", type=float,
                        help="the GPU's memory bandwidth in GB/s, instead of --gpu-name's")
    decode.add_argument("--interconnect", choices=["nvlink", "pcie"], default="nvlink",
                        help="how the tensor-parallel GPUs reach each other (default: nvlink)")
    decode.add_argument("--context-tokens", type=int, default=1024,
                        help="tokens already in a stream's context, whose KV cache each step reads (default: 1024)")
    decode.add_argument("--target-tokens-per-s", type=float, default=80,
                        help="per-stream speed to count streams at (default: 80)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except UsageError as exc:
        print("appliance-plan: %s" % exc, file=sys.stderr)
        return 2
    except PlanError as exc:
        print("appliance-plan: %s" % exc, file=sys.stderr)
        return 1
