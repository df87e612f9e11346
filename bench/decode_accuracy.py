#!/usr/bin/env python3
"""How close the planner's single-stream decode speed comes to published vLLM measurements.

    bench/decode_accuracy.py [--fit] [--measurements FILE] [--configs FILE]

Rows: bench/calibration/decode-measurements.json (each with its source and the sentence it was
read from); shapes: bench/calibration/decode-model-configs.json. A row is used when it is one
stream (concurrency 1), decode only (no prefill in the figure), with CUDA graphs, from a
confirmed vLLM run of a model whose config.json is listed; the others are printed as skipped
with the reason. Figures, not assertions: mean absolute error and the largest over-prediction
(a promise the hardware does not keep), for the fitted rows (vLLM V0, 0.4-0.6, A100) and the
others (vLLM V1, H100 and A100) apart.

--fit searches the constants (bandwidth efficiency by weight format, per-step and per-layer
cost, all-reduce latency) that minimise the mean absolute error with over-predictions above 5%
penalised, and prints them; speed.DECODE_COSTS holds the figures chosen from it.
"""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from llm_appliance.plan import parse_config
from llm_appliance.plan.speed import DECODE_COSTS, DecodeCosts, decode_step

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "bench" / "calibration"
# Peak memory bandwidth (GB/s) of the GPUs as the sources name them. Qwen's tables say "A100
# 80GB" without the form factor: SXM4 (2039) is assumed; PCIe (1935) would be 5% less.
BANDWIDTH = {"NVIDIA A100 80GB": 2039, "NVIDIA A100 40GB (Lambda)": 1555, "H100-80GB-HBM3": 3350,
             "H100 (single)": 3350, "4 X H100": 3350, "H100": 3350}


def context_of(row):
    """Average context a decoded token sees: input + half the output; 0 for a fitted intercept."""
    if isinstance(row.get("input_tokens"), str) and "fit" in row["input_tokens"]:
        return 0
    inputs = row["input_tokens"] if isinstance(row.get("input_tokens"), (int, float)) else 0
    outputs = row["output_tokens"] if isinstance(row.get("output_tokens"), (int, float)) else 0
    return int(inputs + outputs / 2)


def interconnect_of(row):
    """Multi-GPU rows of SXM-class servers (A100 80GB, H100 HBM3) whose source does not say are
    taken as NVLink: those parts come on NVLink baseboards."""
    return "pcie" if row.get("interconnect") == "pcie" else "nvlink"


def era(row):
    version = str(row.get("vllm_version") or "")
    if version.startswith(("0.4", "0.5", "0.6")) or row["id"].startswith("vllm-issue12101"):
        return "v0"
    return "v1"


def usable(row, configs):
    """None when the row calibrates the model, else why not."""
    if not row.get("tokens_per_s"):
        return "no tokens/s figure"
    if row.get("engine_confirmed") is False:
        return "serving engine not stated"
    if row.get("metric_includes_prefill"):
        return "figure includes prefill"
    if row.get("cuda_graphs") is False:
        return "CUDA graphs off (the planner plans with them)"
    if row["model"] not in configs:
        return "no config.json listed"
    if row["gpu"] not in BANDWIDTH:
        return "GPU bandwidth unknown"
    if str(row.get("vllm_version")).startswith("0.4"):
        return "vLLM 0.4: AWQ before the Marlin kernels (0.5), not the kernels vLLM runs today"
    return None


SHAPES = {}


def predict(row, configs, costs):
    if row["model"] not in SHAPES:
        SHAPES[row["model"]] = parse_config(configs[row["model"]], row["model"])
    shape = SHAPES[row["model"]]
    tp = int(row["tensor_parallel_size"])
    interconnect = interconnect_of(row)
    step_costs = costs[era(row)]
    step = decode_step(shape, weights_bytes=None, tensor_parallel_size=tp, bandwidth_gbps=BANDWIDTH[row["gpu"]],
                       interconnect=interconnect, context_tokens=context_of(row),
                       kv_dtype_bytes=1 if str(row.get("kv_cache_dtype", "")).startswith("fp8") else 2,
                       costs=step_costs)
    return 1000 / step.total_ms


def errors(rows, configs, costs):
    return [(row, predict(row, configs, costs)) for row in rows]


def score(pairs):
    errs = [(p - row["tokens_per_s"]) / row["tokens_per_s"] for row, p in pairs]
    mean = sum(abs(e) for e in errs) / len(errs)
    over = max(errs)
    return mean + 4 * sum(max(0.0, e - 0.05) for e in errs) / len(errs), mean, over


def memory_ms(row, configs, efficiency, moe):
    """The step's memory time alone (weights and KV), with no fixed cost."""
    costs = DecodeCosts(efficiency=efficiency, moe_efficiency=moe, step_ms=0.0, layer_us=0.0,
                        allreduce_us={"nvlink": 0.0, "pcie": 0.0})
    return 1000 / predict(row, configs, {"v0": costs, "v1": costs})


def solve(matrix, vector):
    """Gaussian elimination for the small normal equations below."""
    size = len(vector)
    rows = [list(matrix[i]) + [vector[i]] for i in range(size)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        if abs(rows[col][col]) < 1e-12:
            continue
        for r in range(size):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[i][size] / rows[i][i] if abs(rows[i][i]) > 1e-12 else 0.0 for i in range(size)]


def fixed_costs(rows, configs, efficiency, moe):
    """Given the efficiencies, the fixed costs by weighted least squares on what memory and the
    all-reduces (speed.DECODE_COSTS's measured latencies, not fitted) leave: V0 per step and per
    layer, V1 per layer; weights 1/time squared (relative error)."""
    normal = [[0.0] * 3 for _ in range(3)]
    right = [0.0] * 3
    allreduce_us = DECODE_COSTS.allreduce_us
    for row in rows:
        measured = 1000 / row["tokens_per_s"]
        layers = SHAPES[row["model"]].layers
        allreduce_ms = (2 * layers * allreduce_us[interconnect_of(row)] / 1000
                        if int(row["tensor_parallel_size"]) > 1 else 0.0)
        left = measured - memory_ms(row, configs, efficiency, moe) - allreduce_ms
        features = [1.0, layers, 0.0] if era(row) == "v0" else [0.0, 0.0, layers]
        weight = 1 / measured ** 2
        for i in range(3):
            right[i] += weight * features[i] * left
            for j in range(3):
                normal[i][j] += weight * features[i] * features[j]
    step_v0, layer_v0, layer_v1 = (max(v, 0.0) for v in solve(normal, right))
    v1 = DecodeCosts(efficiency=efficiency, moe_efficiency=moe, step_ms=0.0, layer_us=layer_v1 * 1000,
                     allreduce_us=allreduce_us)
    return {"v0": replace(v1, step_ms=step_v0, layer_us=layer_v0 * 1000), "v1": v1}


def fit(rows, configs):
    """Coordinate search over the efficiencies (0.50-1.00) and the MoE share; the fixed costs
    solved for each; the objective is score()'s (over-predictions above 5% cost 4x)."""
    for row in rows:
        predict(row, configs, {"v0": DECODE_COSTS, "v1": DECODE_COSTS})   # fills SHAPES
    efficiency = {"16-bit": 0.85, "int8": 0.85, "int4": 0.85, "fp8": 0.85, "mxfp4": 0.85}
    moe = 1.0
    grid = [v / 100 for v in range(50, 101)]

    def evaluate(eff, moe_share):
        costs = fixed_costs(rows, configs, eff, moe_share)
        return score(errors(rows, configs, costs))[0], costs
    for _ in range(3):
        for fmt in ("16-bit", "int8", "int4"):
            best = min(grid, key=lambda v: evaluate(dict(efficiency, **{fmt: v}), moe)[0])
            efficiency[fmt] = best
        efficiency["fp8"], efficiency["mxfp4"] = efficiency["int8"], efficiency["int4"]
        moe = min([v / 100 for v in range(20, 101, 2)], key=lambda v: evaluate(efficiency, v)[0])
    value, costs = evaluate(efficiency, moe)
    print("efficiency %s, MoE experts' share %.2f" % (efficiency, moe))
    print("V0: %.3f ms per step + %.1f us per layer; V1: %.1f us per layer"
          % (costs["v0"].step_ms, costs["v0"].layer_us, costs["v1"].layer_us))
    print("objective %.4f" % value)
    return costs


def report(title, pairs):
    if not pairs:
        return
    print(title)
    for row, p in pairs:
        print("  %-52s %-9s %4s %7.1f %7.1f %+6.1f%%" % (row["id"][:52], row.get("weights", "")[:9],
                                                    row["tensor_parallel_size"], row["tokens_per_s"], p,
                                                    100 * (p - row["tokens_per_s"]) / row["tokens_per_s"]))
    _, mean, over = score(pairs)
    print("  rows %d: mean absolute error %.1f%% (target < 8%%), largest over-prediction %+.1f%% (target <= +10%%)"
          % (len(pairs), 100 * mean, 100 * over))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", default=str(CALIBRATION / "decode-measurements.json"))
    parser.add_argument("--configs", default=str(CALIBRATION / "decode-model-configs.json"))
    parser.add_argument("--fit", action="store_true", help="search the constants and print them")
    args = parser.parse_args(argv)
    rows = json.loads(Path(args.measurements).read_text())["decode"]
    configs = json.loads(Path(args.configs).read_text())["configs"]
    used = [row for row in rows if usable(row, configs) is None]
    for row in rows:
        reason = usable(row, configs)
        if reason:
            print("skipped %-48s %s" % (row["id"][:48], reason))
    costs = fit(used, configs) if args.fit else {
        "v0": replace(DECODE_COSTS, step_ms=V0_STEP_MS, layer_us=V0_LAYER_US), "v1": DECODE_COSTS}
    print("%-54s %-9s %4s %7s %7s %7s" % ("", "weights", "TP", "real", "pred", "error"))
    report("vLLM V0 (0.6), A100: Qwen's speed benchmark", errors([r for r in used if era(r) == "v0"],
                                                                    configs, costs))
    report("vLLM V1 (0.19-0.23), H100 and A100", errors([r for r in used if era(r) == "v1"], configs, costs))
    report("all fitted rows", errors(used, configs, costs))
    # Rows the fit left out that the model can still be run on: older kernels, graphs off, prefill.
    others = [row for row in rows if usable(row, configs) is not None and row.get("tokens_per_s")
              and row["model"] in configs and row["gpu"] in BANDWIDTH]
    report("not fitted (the reasons above), for reference", errors(others, configs, costs))
    return 0


# V0's scheduler and sampler (Python, per step) cost more than V1's; fitted with the rest.
V0_STEP_MS = 1.47
V0_LAYER_US = 78.0

if __name__ == "__main__":
    sys.exit(main())
