#!/usr/bin/env python3
"""Prints how close the planner's memory prediction comes to vLLM's own start-up figures.

    bench/planner_accuracy.py [--observations FILE] [--configs FILE]

Defaults: ../shared/reference/vllm-calibration-*.json beside the repository. Figures, not
assertions: mean absolute error of weights and KV pool, and the largest over-prediction
of the KV pool (an over-prediction is an out-of-memory start).
"""
import argparse
import json
import sys
from pathlib import Path

from llm_appliance.plan import estimate_memory, parse_config

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", default=str(REFERENCE / "vllm-calibration-observations.json"))
    parser.add_argument("--configs", default=str(REFERENCE / "vllm-calibration-model-configs.json"))
    args = parser.parse_args(argv)
    observations = json.loads(Path(args.observations).read_text())
    configs = json.loads(Path(args.configs).read_text())

    header = "%-4s %-30s %-7s %-5s %8s %8s %6s %8s %8s %6s %10s %10s" % (
        "id", "model", "vllm", "tp/pp", "w real", "w pred", "w err", "kv real", "kv pred", "kv err",
        "tok real", "tok pred")
    print(header)
    print("-" * len(header))
    weight_errors, kv_errors, over = [], [], []
    for row in observations:
        entry = configs[row["model"]]
        shape = parse_config(entry["config"], row["model"])
        estimate = estimate_memory(
            shape, gpu_memory_gib=row["gpu_total_gib"], tensor_parallel_size=row["tensor_parallel_size"],
            pipeline_parallel_size=row["pipeline_parallel_size"], gpu_memory_utilization=row["gpu_memory_utilization"],
            max_model_len=row["max_model_len"], max_num_batched_tokens=row["max_num_batched_tokens"],
            max_num_seqs=row["max_num_seqs"], weights_bytes=entry.get("safetensors_total_size"),
            quantization=row["quantization"] or "", kv_cache_dtype=row["kv_cache_dtype"] or "auto",
            dtype=row["weights_dtype"] if row["weights_dtype"] == "float32" else "auto",
            vllm_version=row["vllm_version"], block_size=row.get("block_size", 16), name=row["model"])
        w_err = (estimate.weights_gib_per_gpu - row["weights_gib"]) / row["weights_gib"]
        kv_err = (estimate.available_kv_cache_gib - row["available_kv_cache_gib"]) / row["available_kv_cache_gib"]
        weight_errors.append(abs(w_err))
        kv_errors.append(abs(kv_err))
        over.append(kv_err)
        print("%-4s %-30s %-7s %-5s %8.2f %8.2f %5.1f%% %8.2f %8.2f %5.1f%% %10d %10d" % (
            row["id"], row["model"][:30], row["vllm_version"],
            "%d/%d" % (row["tensor_parallel_size"], row["pipeline_parallel_size"]),
            row["weights_gib"], estimate.weights_gib_per_gpu, 100 * w_err,
            row["available_kv_cache_gib"], estimate.available_kv_cache_gib, 100 * kv_err,
            row["kv_cache_tokens"], estimate.kv_cache_tokens))
    print()
    print("rows: %d" % len(observations))
    print("weights: mean absolute error %.2f%% (target <= 2%%)" % (100 * sum(weight_errors) / len(weight_errors)))
    print("KV pool: mean absolute error %.2f%% (target <= 3%%)" % (100 * sum(kv_errors) / len(kv_errors)))
    print("KV pool: largest over-prediction %.2f%% (target <= 5%%)" % (100 * max(over)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
