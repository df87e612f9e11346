"""vLLM's memory arithmetic as it changed between releases, and what the planner does with a release
or a model it does not follow: it says so and holds part of the pool back."""
import json

import pytest

from llm_appliance.plan import cli, estimate_memory, parse_config
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.memory import UNFOLLOWED_RELEASE_MARGIN, UNMODELLED_LAYERS_MARGIN, parse_version, vllm_defaults
from tests.unit.test_plan import LLAMA_4_SCOUT, LLAMA_8B, LLAMA_8B_BYTES, REPO, h100s

# Qwen3-Next-80B-A3B's config.json fields that matter here: gated-DeltaNet linear attention in
# three of every four layers (linear_* keys, full_attention_interval).
QWEN3_NEXT = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": 2048,
              "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
              "intermediate_size": 5120, "moe_intermediate_size": 512, "num_experts": 512, "num_experts_per_tok": 10,
              "shared_expert_intermediate_size": 512, "vocab_size": 151936, "max_position_embeddings": 262144,
              "full_attention_interval": 4, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
              "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
              "torch_dtype": "bfloat16"}
H100_RUN = dict(gpu_memory_gib=79.19, gpu_memory_utilization=0.9, max_model_len=8192, max_num_batched_tokens=8192,
                max_num_seqs=256)


@pytest.mark.parametrize("version, gib, name, expected", [
    ("0.19.0", 79.19, "NVIDIA H100 80GB HBM3", (0.9, 8192, 1024, 16)),
    ("0.20.0", 79.19, "NVIDIA H100 80GB HBM3", (0.92, 8192, 1024, 16)),      # PR #38284
    ("0.32.0", 79.25, "NVIDIA A100-SXM4-80GB", (0.92, 2048, 256, 16)),       # A100s on the small tier
    ("0.27.0", 178.0, "NVIDIA B200", (0.92, 8192, 1024, 16)),
    ("0.28.0", 178.0, "NVIDIA B200", (0.92, 16384, 1024, 16)),               # the >= 160 GiB tier
    ("0.32.0", 139.8, "NVIDIA H200", (0.92, 8192, 1024, 16)),
    ("0.32.0", 44.52, "NVIDIA L40S", (0.92, 2048, 256, 16)),
    ("0.34.0", 79.19, "NVIDIA H100 80GB HBM3", (1.0, 8192, 1024, 64)),      # extensible KV cache
])
def test_vllm_defaults_by_release_and_gpu(version, gib, name, expected):
    defaults = vllm_defaults(parse_version(version), gib, name)
    assert (defaults["gpu_memory_utilization"], defaults["max_num_batched_tokens"], defaults["max_num_seqs"],
            defaults["block_size"]) == expected


def test_cuda_graphs_count_against_the_pool_from_0_20():
    shape = parse_config(LLAMA_8B)
    before = estimate_memory(shape, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.19.0", **H100_RUN)
    after = estimate_memory(shape, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.20.0", **H100_RUN)
    assert (before.cuda_graph_gib, after.cuda_graph_gib) == (0, 0.9)
    # The reported tokens change formula at 0.21, not the pool: for a uniform model both agree.
    assert after.kv_cache_tokens == pytest.approx(
        estimate_memory(shape, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.21.0", **H100_RUN).kv_cache_tokens,
        abs=16)


def test_llama_4_chunked_layers_hold_full_requests_where_the_hybrid_manager_is_off():
    """0.10.1-0.13 default VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE to 0: chunked layers
    are charged like global ones, so far fewer requests fit than with 0.14's hybrid manager."""
    shape = parse_config(LLAMA_4_SCOUT)
    run = dict(H100_RUN, max_model_len=65536, tensor_parallel_size=4, weights_bytes=217_000_000_000)
    off = estimate_memory(shape, vllm_version="0.13.0", **run)
    on = estimate_memory(shape, vllm_version="0.14.0", **run)
    assert off.kv_cache_groups == 1 and on.kv_cache_groups == 4
    assert off.max_concurrency < on.max_concurrency / 2
    assert estimate_memory(shape, vllm_version="0.10.0", **run).kv_cache_groups == 4


@pytest.mark.parametrize("version", ["0.9.2", "0.34.0"])
def test_a_release_not_followed_is_said_and_held_back(version):
    shape = parse_config(LLAMA_8B)
    followed = estimate_memory(shape, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.33.0", **H100_RUN)
    other = estimate_memory(shape, weights_bytes=LLAMA_8B_BYTES, vllm_version=version, **H100_RUN)
    assert "than the releases the planner follows (0.10-0.33" in other.caveat
    assert "under-predicted by 10%" in other.caveat and followed.caveat == ""
    if version == "0.34.0":
        assert other.available_kv_cache_gib == pytest.approx(
            followed.available_kv_cache_gib * (1 - UNFOLLOWED_RELEASE_MARGIN), abs=0.002)


def test_qwen3_next_blocks_as_vllm_sizes_them():
    """vLLM 0.32 (platforms/interface.py _align_hybrid_block_size): a gated-DeltaNet layer's state
    (8192 x 3 conv + 32 x 128 x 128 recurrent, bf16: 1,097,728 bytes) fits one attention page of
    544 tokens x 2,048 bytes; 12 full + 36 linear layers make 1 + 3 groups of 12 sharing one pool.
    A request holds cdiv(L, 544) attention blocks and, per linear group, 2 state blocks with prefix
    caching (the default for hybrids from 0.26), 1 without or before."""
    shape = parse_config(QWEN3_NEXT, "qwen3-next")
    assert shape.kv_unmodelled == "" and shape.linear_attention == (8192, 4, 32, 128, 128)
    # Two H200s: TP 2 halves the state and the KV heads alike, so the block stays 544.
    run = dict(H100_RUN, gpu_memory_gib=139.8, max_model_len=262144, tensor_parallel_size=2,
               weights_bytes=162_000_000_000)
    estimate = estimate_memory(shape, vllm_version="0.32.0", **run)
    assert (estimate.block_size, estimate.kv_cache_groups) == (544, 4)
    page = 544 * 2 * 1 * 256 * 2
    assert abs(estimate.num_blocks - int(estimate.available_kv_cache_gib * 2 ** 30) // (12 * page)) <= 1
    # At TP 4 the two KV heads cannot split further but the state does: 272-token blocks.
    assert estimate_memory(shape, vllm_version="0.32.0", **dict(run, tensor_parallel_size=4)).block_size == 272
    attention_blocks = -(-262144 // 544)
    assert estimate.max_concurrency == round(estimate.num_blocks / (attention_blocks + 3 * 2), 2)
    no_prefix = estimate_memory(shape, vllm_version="0.32.0", prefix_caching=False, **run)
    assert no_prefix.max_concurrency == round(no_prefix.num_blocks / (attention_blocks + 3), 2)
    older = estimate_memory(shape, vllm_version="0.25.0", **run)
    assert older.max_concurrency == round(older.num_blocks / (attention_blocks + 3), 2)


def test_hybrid_layers_are_said_and_held_back():
    shape = parse_config(QWEN3_NEXT, "qwen3-next")
    plain = parse_config(dict(QWEN3_NEXT, full_attention_interval=None, linear_num_key_heads=None,
                              linear_num_value_heads=None), "qwen3-next")
    run = dict(H100_RUN, tensor_parallel_size=4, weights_bytes=162_000_000_000)
    held = estimate_memory(shape, **run)
    assert held.available_kv_cache_gib == pytest.approx(
        estimate_memory(plain, **run).available_kv_cache_gib * (1 - UNMODELLED_LAYERS_MARGIN), abs=0.002)
    assert "not yet checked against a start-up log" in held.caveat and "under-predicted by 25%" in held.caveat
    # Mamba layers are not modelled at all: said, held back, counted as full attention.
    mamba = parse_config(dict(LLAMA_8B, mamba_d_state=128), "hybrid-mamba")
    assert "hybrid-mamba has layers whose cache the planner does not model (mamba_d_state)" in mamba.kv_unmodelled
    assert "counted as full attention" in estimate_memory(mamba, weights_bytes=LLAMA_8B_BYTES, **H100_RUN).caveat
    # The plan carries the caveat among its reasons.
    entry = {"name": "qwen3-next", "profile": "chat", "config": QWEN3_NEXT, "weights_bytes": 162_000_000_000,
             "tensor_parallel_size": 4}
    reasons = plan_site([entry], h100s(4))["models"][0]["reasons"]
    assert any("gated-DeltaNet layers are sized" in reason for reason in reasons)


def test_gpt_oss_sliding_layers_and_sinks_take_only_their_window():
    config = json.loads((REPO / "tests/fixtures/model-configs/gpt-oss-20b.json").read_text())
    shape = parse_config(config)
    assert shape.kv_unmodelled == ""
    estimate = estimate_memory(shape, **H100_RUN)
    assert estimate.kv_cache_groups == 2        # 12 sliding (window 128) + 12 full layers


def test_cli_memory_takes_the_release_defaults_and_prints_the_caveat(capsys):
    config = str(REPO / "tests/fixtures/model-configs/llama-3.1-8b-instruct.json")
    args = ["memory", "--config", config, "--weights-bytes", str(LLAMA_8B_BYTES), "--gpu-memory-gib", "79.19",
            "--tensor-parallel-size", "1", "--max-model-len", "8192"]
    assert cli.main(args + ["--vllm-version", "0.19.0", "--json"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["requested_gib"] == pytest.approx(79.19 * 0.9, abs=0.001)
    assert cli.main(args + ["--vllm-version", "0.32.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requested_gib"] == pytest.approx(79.19 * 0.92, abs=0.001)
    assert cli.main(args + ["--vllm-version", "0.34.0"]) == 0
    assert "caveat                   vLLM 0.34.0 is newer than the releases" in capsys.readouterr().out


def test_mla_models_get_the_block_their_backend_takes():
    from llm_appliance.plan.placement import default_block_size
    from tests.unit.test_plan import DEEPSEEK_V2_LITE

    assert default_block_size(parse_config(DEEPSEEK_V2_LITE), "cuda") == 64
    assert default_block_size(parse_config(LLAMA_8B), "cuda") == 16
    assert default_block_size(parse_config(LLAMA_8B), "cpu") == 128
