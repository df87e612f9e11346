"""scripts/appliance-plan: ask the planner whether a model fits, before touching a server.

    appliance-plan memory --config CONFIG.json --gpu-memory-gib 79.19 --tensor-parallel-size 2
                          --gpu-memory-utilization 0.9 --max-model-len 32768 [--json] ...
    appliance-plan site --site SITE.json [--json]

`site` reads {"models": [catalog entries with config or config_path], "gpus": {...},
"engine": "cuda", "vllm_version": "0.32.0"} and prints the whole plan.
A plan that cannot work exits 1 with the reason and what would fit; unreadable input exits 2.
Neither prints a traceback.
"""
import argparse
import json
import os
import sys

from llm_appliance.plan.config import parse_config
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.errors import PlanError
from llm_appliance.plan.memory import estimate_memory


class UsageError(Exception):
    pass


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise UsageError("cannot read %s %s: %s" % (what, path, exc.strerror)) from None
    except ValueError as exc:
        raise UsageError("%s %s is not valid JSON: %s" % (what, path, exc)) from None


def _weights_from_index(config_path):
    index = os.path.join(os.path.dirname(config_path), "model.safetensors.index.json")
    if os.path.exists(index):
        return _read_json(index, "safetensors index").get("metadata", {}).get("total_size")
    return None


def cmd_memory(args):
    config = _read_json(args.config, "config")
    shape = parse_config(config, os.path.basename(os.path.dirname(os.path.abspath(args.config))) or "model")
    weights = args.weights_bytes
    if weights is None and args.param_count:
        weights = args.param_count * (1 if shape.checkpoint_quantization else 2)
    if weights is None:
        weights = _weights_from_index(args.config)
    estimate = estimate_memory(
        shape, gpu_memory_gib=args.gpu_memory_gib, tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs, weights_bytes=weights, quantization=args.quantization or "",
        kv_cache_dtype=args.kv_cache_dtype, dtype=args.dtype, vllm_version=args.vllm_version,
        block_size=args.block_size, enforce_eager=args.enforce_eager, name=shape.architecture)
    result = estimate.as_dict()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key in ("weights_gib_per_gpu", "activation_peak_gib", "non_torch_gib", "cuda_graph_gib",
                    "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency", "fits", "reason"):
            print("%-24s %s" % (key, result[key]))
    return 0 if estimate.fits else 1


def attach_configs(models, base_dir):
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


def load_site(path):
    site = _read_json(path, "site")
    site["models"] = attach_configs(site.get("models", []), os.path.dirname(os.path.abspath(path)))
    return site


def format_plan(plan):
    lines = []
    for model in plan["models"]:
        memory = model["memory"]
        lines.append("%s (%s): GPUs %s, TP %d, port %d" % (
            model["name"], model["profile"], model["gpus"] or "none (CPU engine)",
            model["tensor_parallel_size"], model["port"]))
        lines.append("  memory per GPU: weights %.2f GiB, activations %.2f, non-torch %.2f, CUDA graphs %.2f, "
                     "KV cache %.2f GiB" % (memory["weights_gib_per_gpu"], memory["activation_peak_gib"],
                                            memory["non_torch_gib"], memory["cuda_graph_gib"],
                                            memory["available_kv_cache_gib"]))
        lines.append("  KV tokens %d, %.1f requests of %d tokens at once, predicted %s tokens/s per stream" % (
            model["kv_cache_tokens"], model["max_concurrency"], model["max_model_len"],
            model["predicted_tokens_per_s"] if model["predicted_tokens_per_s"] is not None else "n/a"))
        for reason in model["reasons"]:
            lines.append("  - " + reason)
    if plan.get("free_gpus"):
        lines.append("free GPUs: %s" % plan["free_gpus"])
    return "\n".join(lines)


def cmd_site(args):
    site = load_site(args.site)
    plan = plan_site(site.get("models", []), site.get("gpus"), engine=site.get("engine", "cuda"),
                     vllm_version=site.get("vllm_version", "0.32.0"), base_port=site.get("base_port", 8001))
    print(json.dumps(plan, indent=2, sort_keys=True) if args.json else format_plan(plan))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="appliance-plan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    memory = sub.add_parser("memory", help="predict vLLM's memory split and KV cache for one model")
    memory.add_argument("--config", required=True, help="the model's config.json")
    memory.add_argument("--weights-bytes", type=int, help="checkpoint size (safetensors total_size)")
    memory.add_argument("--param-count", type=int, help="parameter count, when the checkpoint size is unknown")
    memory.add_argument("--quantization", choices=["fp8"], help="runtime quantization")
    memory.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    memory.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    memory.add_argument("--gpu-memory-gib", type=float, required=True, help="total memory as CUDA reports it")
    memory.add_argument("--tensor-parallel-size", type=int, required=True)
    memory.add_argument("--pipeline-parallel-size", type=int, default=1)
    memory.add_argument("--gpu-memory-utilization", type=float, required=True)
    memory.add_argument("--max-model-len", type=int, required=True)
    memory.add_argument("--max-num-batched-tokens", type=int)
    memory.add_argument("--max-num-seqs", type=int)
    memory.add_argument("--block-size", type=int, default=16)
    memory.add_argument("--enforce-eager", action="store_true")
    memory.add_argument("--vllm-version", default="0.32.0")
    memory.add_argument("--json", action="store_true")
    memory.set_defaults(func=cmd_memory)
    site = sub.add_parser("site", help="plan every model of a site description")
    site.add_argument("--site", required=True, help="JSON: models, gpus, engine, vllm_version")
    site.add_argument("--json", action="store_true")
    site.set_defaults(func=cmd_site)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print("appliance-plan: %s" % exc, file=sys.stderr)
        return 2
    except PlanError as exc:
        print("appliance-plan: %s" % exc, file=sys.stderr)
        return 1
