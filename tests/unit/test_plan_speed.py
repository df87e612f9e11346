"""Decode speed: bytes read per token, fixed costs, all-reduce by interconnect, streams at a target,
checked against published vLLM measurements where one exists (bench/calibration/)."""
import json

import pytest

from llm_appliance.plan import cli, parse_config
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.speed import DECODE_COSTS, decode_step, decode_tokens_per_s, predict_decode, read_bytes
from tests.unit.test_plan import (
    CODER_MEMORY_ARGS,
    GEMMA_3_27B,
    LLAMA_8B,
    LLAMA_8B_BYTES,
    QWEN_CODER_32B,
    REPO,
    h100s,
    memory_json,
)

CODER_BYTES = 65527752704


def test_llama_8b_single_stream_matches_the_published_h100_figure():
    """vLLM 0.21 on one H100 80GB HBM3: TPOT p50 6.48 ms at concurrency 1 (154.3 tokens/s;
    bench/calibration row yobitel-h100-llama31-8b-fp16-c1)."""
    speed = decode_tokens_per_s(parse_config(LLAMA_8B), LLAMA_8B_BYTES, 1, 3350)
    assert speed == pytest.approx(154.3, rel=0.05)


def test_a_token_reads_the_head_and_the_layers_not_the_input_embedding():
    shape = parse_config(LLAMA_8B)
    layers, head = read_bytes(shape, LLAMA_8B_BYTES, "")
    embedding = 128256 * 4096 * 2
    assert head == embedding                                  # the LM head: an untied vocabulary matrix
    assert layers + head == pytest.approx(LLAMA_8B_BYTES - embedding, rel=0.002)
    # Runtime fp8 halves the layers; the head stays 16-bit.
    fp8_layers, fp8_head = read_bytes(shape, LLAMA_8B_BYTES, "fp8")
    assert (fp8_layers, fp8_head) == (layers / 2, head)


def test_a_vision_tower_is_not_read_when_decoding():
    config = json.loads((REPO / "tests/fixtures/model-configs/qwen2.5-vl-7b-instruct.json").read_text())
    shape = parse_config(config)
    layers, head = read_bytes(shape, None, "")
    assert layers + head < shape.weights_bytes_estimate - 0.5e9   # the tower is about 0.67 B parameters


def test_moe_reads_only_the_routed_experts():
    config = json.loads((REPO / "tests/fixtures/model-configs/gpt-oss-20b.json").read_text())
    shape = parse_config(config)
    layers, head = read_bytes(shape, None, "")
    assert layers + head < shape.weights_bytes_estimate / 3      # 4 of 32 experts a token


def test_kv_reads_grow_with_the_context_as_published():
    """The vLLM blog's fit for Llama-3.1-8B on one H100 (v0.19.1): 4.37e-5 ms more per token of
    context with a bf16 KV cache, 2.37e-5 with fp8 (row vllmblog-fp8kv-h100-*)."""
    shape = parse_config(LLAMA_8B)

    def step_ms(context, kv_bytes):
        return decode_step(shape, weights_bytes=LLAMA_8B_BYTES, tensor_parallel_size=1, bandwidth_gbps=3350,
                           context_tokens=context, kv_dtype_bytes=kv_bytes).total_ms
    bf16 = (step_ms(65536, 2) - step_ms(0, 2)) / 65536
    fp8 = (step_ms(65536, 1) - step_ms(0, 1)) / 65536
    assert bf16 == pytest.approx(4.37e-5, rel=0.1)
    assert fp8 == pytest.approx(bf16 / 2)


def test_sliding_window_layers_read_only_their_window():
    shape = parse_config(GEMMA_3_27B)
    short = decode_step(shape, weights_bytes=55244358451, tensor_parallel_size=1, bandwidth_gbps=3350,
                        context_tokens=1024).kv_ms
    long = decode_step(shape, weights_bytes=55244358451, tensor_parallel_size=1, bandwidth_gbps=3350,
                       context_tokens=32768).kv_ms
    # 52 of 62 layers stop at their 1024-token window: only the 10 global layers keep growing.
    assert long / short == pytest.approx((10 * 32768 + 52 * 1024) / (62 * 1024), rel=0.01)


def test_fp8_at_batch_one_is_not_twice_bf16():
    shape = parse_config(QWEN_CODER_32B)
    bf16 = decode_tokens_per_s(shape, CODER_BYTES, 1, 3350)
    fp8 = decode_tokens_per_s(shape, CODER_BYTES, 1, 3350, quantization="fp8")
    # One byte a weight, read at int8's efficiency, and the same fixed costs: about 1.6x, not 2x.
    assert 1.4 < fp8 / bf16 < 1.9


def test_tensor_parallel_costs_more_over_pcie_than_nvlink():
    shape = parse_config(QWEN_CODER_32B)
    one = decode_tokens_per_s(shape, CODER_BYTES, 1, 3350)
    nvlink = decode_step(shape, weights_bytes=CODER_BYTES, tensor_parallel_size=2, bandwidth_gbps=3350)
    pcie = decode_step(shape, weights_bytes=CODER_BYTES, tensor_parallel_size=2, bandwidth_gbps=3350,
                       interconnect="pcie")
    # Two all-reduces per layer, 64 layers: 1.15 ms on NVLink, 5.1 ms over PCIe.
    assert nvlink.allreduce_ms == pytest.approx(2 * 64 * DECODE_COSTS.allreduce_us["nvlink"] / 1000)
    assert pcie.allreduce_ms == pytest.approx(2 * 64 * DECODE_COSTS.allreduce_us["pcie"] / 1000)
    assert 1000 / nvlink.total_ms > 1.6 * one       # NVLink barely shows
    assert pcie.total_ms > nvlink.total_ms + 3.5


def test_streams_at_the_target_speed():
    shape = parse_config(QWEN_CODER_32B)

    def streams(most, target=80.0):
        return predict_decode(shape, weights_bytes=CODER_BYTES, tensor_parallel_size=2, bandwidth_gbps=3350,
                              quantization="fp8", context_tokens=1024, peak_tflops=989, target=target,
                              most_streams=most).streams_at_target
    many = streams(1024)
    # The weights are read once a step for every stream: batching costs little until each
    # stream's KV reads and compute add up.
    assert 10 < many < 1024
    assert streams(8) == 8                      # capped by what the engine admits
    assert streams(1024, target=500) == 0       # not even one stream is that fast


def test_the_plan_shows_the_streams_and_the_model_it_used():
    entry = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": CODER_BYTES,
             "quantization": "fp8", "tensor_parallel_size": 2}
    planned = plan_site([entry], h100s(4))["models"][0]
    decode = planned["decode"]
    assert (decode["interconnect"], decode["weight_format"], decode["context_tokens"]) == ("nvlink", "fp8", 1024)
    assert planned["streams_at_target_speed"] == decode["streams_at_target"] > 0
    # The completion profile admits 64 sequences and the KV cache holds more of 2048 tokens.
    assert decode["streams_at_target"] <= 64
    line = [r for r in planned["reasons"] if r.startswith("predicted")][0]
    assert "meets 80" in line and "streams at once keep 80 each" in line
    # Without an NVLink group the same GPUs all-reduce over PCIe, and the figure says so.
    pcie = plan_site([entry], h100s(4, nvlink=False))["models"][0]["decode"]
    assert pcie["interconnect"] == "pcie" and pcie["tokens_per_s"] < decode["tokens_per_s"]


def test_cli_memory_prints_the_decode_speed_the_plan_uses(capsys):
    """`memory` and the plan predict with one function: the same model and settings, the same figure."""
    entry = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": CODER_BYTES,
             "quantization": "fp8", "tensor_parallel_size": 2}
    planned = plan_site([entry], h100s(4))["models"][0]
    assert cli.main(CODER_MEMORY_ARGS) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[9] == ("decode_tokens_per_s      %s per stream at a 1024-token context"
                        % planned["predicted_tokens_per_s"])
    assert lines[10].startswith("streams_at_target        ") and "at 80 tokens/s or more each" in lines[10]
    assert lines[11].startswith("decode_step_ms           ") and "all-reduce 1.152" in lines[11]
    assert lines[12:] == ["memory_bandwidth_gbps    3350 (NVIDIA H100 80GB HBM3)",
                          "decode_efficiency        0.84 of that bandwidth for fp8 weights (fp8)",
                          "tensor_parallel_size     2 over nvlink, 9 us per all-reduce, 40 us per layer"]


def test_cli_memory_decode_follows_the_gpu_and_the_interconnect(capsys):
    h100 = memory_json(capsys)["decode"]
    l4 = memory_json(capsys, "--gpu-name", "NVIDIA L4")["decode"]
    assert (l4["memory_bandwidth_gbps"], l4["memory_bandwidth_source"]) == (300, "NVIDIA L4")
    given = memory_json(capsys, "--memory-bandwidth-gbps", "6700")["decode"]
    assert given["memory_bandwidth_source"] == "--memory-bandwidth-gbps"
    assert h100["tokens_per_s"] < given["tokens_per_s"] < 2 * h100["tokens_per_s"]   # fixed costs stay
    assert memory_json(capsys, "--interconnect", "pcie")["decode"]["tokens_per_s"] < h100["tokens_per_s"]
    assert memory_json(capsys, "--gpu-name", "Mystery GPU")["decode"]["tokens_per_s"] is None
    assert cli.main(CODER_MEMORY_ARGS + ["--gpu-name", "Mystery GPU"]) == 0   # the memory verdict decides
    assert "decode_tokens_per_s      n/a: the memory bandwidth of 'Mystery GPU' is not known" in capsys.readouterr().out
    assert cli.main(CODER_MEMORY_ARGS + ["--memory-bandwidth-gbps", "0"]) == 2
    assert "--memory-bandwidth-gbps must be positive" in capsys.readouterr().err
    assert cli.main(CODER_MEMORY_ARGS + ["--context-tokens", "-1"]) == 2
    assert "--context-tokens must be 0 or more" in capsys.readouterr().err


def test_cli_memory_decode_of_a_quantized_moe_checkpoint(capsys):
    """gpt-oss-20b: MXFP4 experts named as the checkpoint's quantization; pipeline stages in turn
    read the same bytes as one stage with every layer."""
    config = str(REPO / "tests/fixtures/model-configs/gpt-oss-20b.json")
    args = ["memory", "--config", config, "--gpu-memory-gib", "79.19", "--tensor-parallel-size", "1",
            "--gpu-memory-utilization", "0.9", "--max-model-len", "8192"]
    assert cli.main(args + ["--json"]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert (decode["quantization"], decode["weight_format"]) == ("mxfp4", "mxfp4")
    assert cli.main(args + ["--pipeline-parallel-size", "2", "--json"]) == 0
    staged = json.loads(capsys.readouterr().out)["decode"]
    assert staged["tokens_per_s"] == decode["tokens_per_s"] and staged["pipeline_parallel_size"] == 2
