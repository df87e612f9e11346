#!/usr/bin/env python3
"""Prints how close the planner's memory prediction comes to vLLM's own start-up figures.

    bench/planner_accuracy.py [--observations FILE] [--configs FILE]
                              [--unfitted-observations FILE] [--unfitted-configs FILE]

Fitted rows: ../shared/reference/vllm-calibration-*.json beside the repository; rows not fitted
on: bench/calibration/startups/ (each with the log it was read from). Figures, not assertions:
mean absolute error of weights and KV pool, and the largest over-prediction of the KV pool (an
over-prediction is an out-of-memory start), for each set apart.
"""
import argparse
import json
import sys
from pathlib import Path

from llm_appliance.plan import estimate_memory, parse_config

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
# Start-up logs of models the constants were never fitted on (llm-d-planner's v0.19.0 sweep).
STARTUPS = REPO / "bench" / "calibration" / "startups"


def compare(observations, configs):
    """Rows of (row, estimate) for the observations whose model config is known; the others skipped."""
    pairs = []
    for row in observations:
        entry = configs.get(row["model"])
        if entry is None:
            print("skipped %-4s %-40s no config.json listed for it" % (row["id"], row["model"][:40]))
            continue
        shape = parse_config(entry["config"], row["model"])
        estimate = estimate_memory(
            shape, gpu_memory_gib=row["gpu_total_gib"], tensor_parallel_size=row["tensor_parallel_size"],
            pipeline_parallel_size=row["pipeline_parallel_size"], gpu_memory_utilization=row["gpu_memory_utilization"],
            max_model_len=row["max_model_len"], max_num_batched_tokens=row["max_num_batched_tokens"],
            max_num_seqs=row["max_num_seqs"], weights_bytes=entry.get("safetensors_total_size"),
            # Only runtime fp8 is a setting; a checkpoint's own quantization is read from its config.
            quantization="fp8" if row["quantization"] == "fp8" else "",
            kv_cache_dtype=row["kv_cache_dtype"] or "auto",
            dtype=row["weights_dtype"] if row["weights_dtype"] == "float32" else "auto",
            vllm_version=row["vllm_version"], block_size=row.get("block_size", 16), gpu_name=row.get("gpu", ""),
            name=row["model"])
        pairs.append((row, estimate))
    return pairs


def report(title, pairs):
    header = "%-4s %-30s %-7s %-5s %8s %8s %6s %8s %8s %6s %10s %10s" % (
        "id", "model", "vllm", "tp/pp", "w real", "w pred", "w err", "kv real", "kv pred", "kv err",
        "tok real", "tok pred")
    print(title)
    print(header)
    print("-" * len(header))
    weight_errors, kv_errors = [], []
    for row, estimate in pairs:
        w_err = (estimate.weights_gib_per_gpu - row["weights_gib"]) / row["weights_gib"]
        kv_err = (estimate.available_kv_cache_gib - row["available_kv_cache_gib"]) / row["available_kv_cache_gib"]
        weight_errors.append(w_err)
        kv_errors.append(kv_err)
        print("%-4s %-30s %-7s %-5s %8.2f %8.2f %5.1f%% %8.2f %8.2f %5.1f%% %10d %10d" % (
            row["id"], row["model"][:30], row["vllm_version"],
            "%d/%d" % (row["tensor_parallel_size"], row["pipeline_parallel_size"]),
            row["weights_gib"], estimate.weights_gib_per_gpu, 100 * w_err,
            row["available_kv_cache_gib"], estimate.available_kv_cache_gib, 100 * kv_err,
            row["kv_cache_tokens"], estimate.kv_cache_tokens))
    print("rows: %d" % len(pairs))
    print("weights: mean absolute error %.2f%% (target <= 3%%)"
          % (100 * sum(abs(e) for e in weight_errors) / len(weight_errors)))
    print("KV pool: mean absolute error %.2f%% (target <= 3%%)"
          % (100 * sum(abs(e) for e in kv_errors) / len(kv_errors)))
    print("KV pool: largest over-prediction %.2f%% (target <= 5%%)" % (100 * max(kv_errors)))
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", default=str(REFERENCE / "vllm-calibration-observations.json"),
                        help="the rows the planner's constants were fitted on")
    parser.add_argument("--configs", default=str(REFERENCE / "vllm-calibration-model-configs.json"))
    parser.add_argument("--unfitted-observations", default=str(STARTUPS / "observations.json"),
                        help="start-up rows of models the constants were not fitted on")
    parser.add_argument("--unfitted-configs", default=str(STARTUPS / "model-configs.json"))
    args = parser.parse_args(argv)
    fitted = compare(json.loads(Path(args.observations).read_text()), json.loads(Path(args.configs).read_text()))
    report("Fitted rows (%s)" % Path(args.observations).name, fitted)
    if Path(args.unfitted_observations).exists():
        unfitted = compare(json.loads(Path(args.unfitted_observations).read_text()),
                           json.loads(Path(args.unfitted_configs).read_text()))
        report("Rows not fitted on (%s)" % args.unfitted_observations, unfitted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
