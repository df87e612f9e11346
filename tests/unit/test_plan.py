"""The planner: vLLM's memory arithmetic and the placement decisions, on exact figures."""
import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_appliance.plan import PlanError, cli, estimate_memory, parse_config
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.memory import kv_layout
from llm_appliance.plan.placement import gpu_total_gib

REPO = Path(__file__).resolve().parents[2]

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 131072, "vocab_size": 128256,
            "torch_dtype": "bfloat16", "tie_word_embeddings": False}
LLAMA_8B_BYTES = 16060522496
QWEN_CODER_32B = json.loads((REPO / "inventory/example/model-configs/qwen-coder/config.json").read_text())
GEMMA_3_27B = json.loads((REPO / "inventory/example/model-configs/gemma-chat/config.json").read_text())
LLAMA_4_SCOUT = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
                 "text_config": {"model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
                                 "intermediate_size_mlp": 16384, "num_hidden_layers": 48,
                                 "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
                                 "attention_chunk_size": 8192, "num_local_experts": 16,
                                 "num_experts_per_tok": 1, "max_position_embeddings": 10485760,
                                 "vocab_size": 202048}}
DEEPSEEK_V2_LITE = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
                    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
                    "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
                    "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
                    "n_routed_experts": 64, "num_experts_per_tok": 6, "max_position_embeddings": 163840,
                    "vocab_size": 102400, "torch_dtype": "bfloat16"}
H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_reserved_mib": 470}


def h100s(count, nvlink=True):
    gpus = [dict(H100, index=i) for i in range(count)]
    return {"gpus": gpus, "nvlink_groups": [list(range(count))] if nvlink else []}


@pytest.mark.parametrize("config, tp, kv_dtype, page_bytes", [
    (LLAMA_8B, 1, "auto", 2 * 16 * 8 * 128 * 2),      # GQA: 8 KV heads
    (LLAMA_8B, 4, "auto", 2 * 16 * 2 * 128 * 2),      # split over 4 ranks
    (LLAMA_8B, 16, "auto", 2 * 16 * 1 * 128 * 2),     # TP > KV heads: one head replicated per rank
    (LLAMA_8B, 1, "fp8", 2 * 16 * 8 * 128 * 1),       # fp8 KV halves the page
    (DEEPSEEK_V2_LITE, 1, "auto", 16 * 576 * 2),      # MLA latent: kv_lora_rank + rope dims, no K/V pair
    (DEEPSEEK_V2_LITE, 4, "auto", 16 * 576 * 2),      # ... replicated on every rank
])
def test_page_size(config, tp, kv_dtype, page_bytes):
    page, _, _, _ = kv_layout(parse_config(config), tp, 1, kv_dtype, "auto", 16)
    assert page == page_bytes


@pytest.mark.parametrize("config, group_size, groups", [
    (LLAMA_8B, 32, {"full": 1}),
    (GEMMA_3_27B, 10, {"sliding": 6, "full": 1}),     # 52 sliding + 10 full: 8 padding layers, 7 groups
    (LLAMA_4_SCOUT, 12, {"chunked": 3, "full": 1}),   # 36 chunked-local + 12 global
])
def test_hybrid_grouping(config, group_size, groups):
    _, size, found, _ = kv_layout(parse_config(config), 1, 1, "auto", "auto", 16)
    assert (size, found) == (group_size, groups)


def test_llama_8b_on_h100_matches_vllm_0_19():
    """vLLM 0.19 logged 14.99 GiB weights, 58.11 GiB KV cache and 476,016 tokens."""
    est = estimate_memory(parse_config(LLAMA_8B), gpu_memory_gib=79.19, gpu_memory_utilization=0.95,
                          max_model_len=8192, max_num_batched_tokens=8192, max_num_seqs=1024,
                          weights_bytes=LLAMA_8B_BYTES, vllm_version="0.19.0")
    assert est.weights_gib_per_gpu == pytest.approx(14.99, rel=0.01)
    assert est.available_kv_cache_gib == pytest.approx(58.11, rel=0.01)
    assert est.kv_cache_tokens == pytest.approx(476016, rel=0.005)
    assert est.available_kv_cache_gib <= 58.11 * 1.05
    assert est.fits


def test_runtime_fp8_keeps_embeddings_16_bit():
    est = estimate_memory(parse_config(LLAMA_8B), gpu_memory_gib=79.19, gpu_memory_utilization=0.95,
                          max_model_len=8192, weights_bytes=LLAMA_8B_BYTES, quantization="fp8",
                          vllm_version="0.19.0")
    assert est.weights_gib_per_gpu == pytest.approx(8.49, rel=0.01)   # not 14.99 / 2


def test_tp2_costs_nccl_buffers_and_cuda_graphs_count_from_0_21():
    shape = parse_config(LLAMA_8B)
    old = estimate_memory(shape, gpu_memory_gib=79.19, tensor_parallel_size=2, gpu_memory_utilization=0.95,
                          max_model_len=8192, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.19.0")
    new = estimate_memory(shape, gpu_memory_gib=79.19, tensor_parallel_size=2, gpu_memory_utilization=0.95,
                          max_model_len=8192, weights_bytes=LLAMA_8B_BYTES, vllm_version="0.21.0")
    assert old.non_torch_gib > 2.0 and old.cuda_graph_gib == 0
    assert new.cuda_graph_gib > 0
    assert new.available_kv_cache_gib < old.available_kv_cache_gib


def test_cpu_engine_kv_tokens_equal_vllm_cpu_log():
    """vLLM's CPU build logs 'CPU KV cache size: 1,048,576 tokens' for the tiny model and 1 GiB."""
    from tests.fixtures.make_tiny_model import config as tiny_config
    tiny = tiny_config()
    est = estimate_memory(parse_config(tiny), gpu_memory_gib=0, max_model_len=1024, block_size=128,
                          cpu_kvcache_space_gib=1)
    assert est.kv_cache_tokens == 1048576
    assert est.max_concurrency == 1024.0


@pytest.mark.parametrize("max_model_len, max_num_batched_tokens, tokens, concurrency", [
    # vLLM's defaults on a CPU (2048 tokens per batch): each sliding layer may hold the whole request.
    (1024, None, 645277, 630.15),
    # --max-num-batched-tokens 256: a sliding layer holds cdiv(127 + 256, 128) + 1 = 4 blocks, not 16.
    (2048, 256, 1398101, 682.67),
])
def test_cpu_engine_kv_tokens_of_hybrid_model_equal_vllm_cpu_log(max_model_len, max_num_batched_tokens, tokens,
                                                                  concurrency):
    """vLLM's CPU build 0.32.0 serving the tiny hybrid model with VLLM_CPU_KVCACHE_SPACE=1 logs
    'CPU KV cache size: 645,277 tokens, Maximum concurrency for 1,024 tokens per request: 630.15x'
    (--max-model-len 1024) and '1,398,101 tokens ... for 2,048 tokens per request: 682.67x'
    (--max-model-len 2048 --max-num-batched-tokens 256): int(concurrency x max_model_len), not
    blocks // groups x block."""
    from tests.fixtures.make_tiny_model import config as tiny_config
    est = estimate_memory(parse_config(tiny_config("hybrid")), gpu_memory_gib=0, max_model_len=max_model_len,
                          max_num_batched_tokens=max_num_batched_tokens, block_size=128, cpu_kvcache_space_gib=1)
    # 2 sliding + 1 global layer: three groups of one layer, 1 GiB / 64 KiB pages = 16384 blocks.
    assert (est.kv_cache_groups, est.num_blocks) == (3, 16384)
    assert est.kv_cache_tokens == tokens
    assert est.max_concurrency == concurrency


def test_one_full_length_request_must_fit():
    est = estimate_memory(parse_config(QWEN_CODER_32B), gpu_memory_gib=79.19, gpu_memory_utilization=0.90,
                          max_model_len=32768, weights_bytes=65527752704, vllm_version="0.32.0")
    assert not est.fits
    assert "the longest request that fits is %d tokens" % est.max_model_len_that_fits in est.reason
    assert 0 < est.max_model_len_that_fits < 32768


def test_cuda_total_from_nvidia_smi():
    assert gpu_total_gib(H100) == 79.19


def test_sliding_window_reservation_counts_every_in_flight_batch_from_0_26():
    """From vLLM 0.26 (config/vllm.py max_in_flight_tokens) a sliding group reserves (pipeline
    stages + 1) batches on GPUs (async scheduling); before, one batch. gemma-3-27b at 32k: 6
    sliding groups of cdiv(1023 + in-flight, 16) + 1 blocks."""
    shape = parse_config(GEMMA_3_27B)
    settings = dict(gpu_memory_gib=79.19, gpu_memory_utilization=0.9, max_model_len=32768,
                    max_num_batched_tokens=8192, weights_bytes=55244358451)
    old = estimate_memory(shape, vllm_version="0.25.0", **settings)
    new = estimate_memory(shape, vllm_version="0.26.0", **settings)
    assert estimate_memory(shape, vllm_version="0.32.0", **settings).max_concurrency == new.max_concurrency
    blocks_old = 2048 + 6 * ((1023 + 8192 + 15) // 16 + 1)
    blocks_new = 2048 + 6 * ((1023 + 16384 + 15) // 16 + 1)
    assert old.max_concurrency == round(old.num_blocks / blocks_old, 2)
    assert new.max_concurrency == round(new.num_blocks / blocks_new, 2)
    # The CPU build runs no async scheduling: one batch in flight there.
    cpu = estimate_memory(shape, gpu_memory_gib=0, max_model_len=32768, max_num_batched_tokens=8192, block_size=128,
                          cpu_kvcache_space_gib=40, vllm_version="0.32.0")
    groups = cpu.kv_cache_groups
    assert groups == 7
    assert cpu.max_concurrency == round(cpu.num_blocks / (256 + 6 * ((1023 + 8192 + 127) // 128 + 1)), 2)


def test_reference_deployment_plan():
    # As inventory/example has it: the chat model's 4096-token batches keep its sliding-window
    # reservation small enough for one GPU, which leaves one for evaluation models.
    models = [{"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": 65527752704},
              {"name": "gemma-chat", "profile": "chat", "config": GEMMA_3_27B, "weights_bytes": 55244358451,
               "max_num_batched_tokens": 4096}]
    plan = plan_site(models, h100s(4), vllm_version="0.32.0")
    by_name = {m["name"]: m for m in plan["models"]}
    assert by_name["qwen-coder"]["gpus"] == [0, 1] and by_name["qwen-coder"]["tensor_parallel_size"] == 2
    assert by_name["gemma-chat"]["gpus"] == [2] and by_name["gemma-chat"]["tensor_parallel_size"] == 1
    assert plan["free_gpus"] == [3]
    assert [m["port"] for m in plan["models"]] == [8001, 8002]
    coder = by_name["qwen-coder"]
    assert coder["environment"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert coder["gpu_devices"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3"},
                                    {"index": 1, "name": "NVIDIA H100 80GB HBM3"}]
    assert "--enable-prefix-caching" in coder["vllm_args"]
    assert coder["vllm_args"][coder["vllm_args"].index("--tensor-parallel-size") + 1] == "2"
    assert any("below 80" in r and "fp8 weights" in r for r in coder["reasons"])


def test_ports_stay_put_when_models_come_and_go():
    """A port is part of a unit: moving one would restart a model nobody touched."""
    coder = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": 65527752704}
    chat = {"name": "gemma-chat", "profile": "chat", "config": GEMMA_3_27B, "weights_bytes": 55244358451}
    small = {"name": "tiny-eval", "profile": "eval", "config": GEMMA_3_27B, "weights_bytes": 55244358451,
             "state": "present"}

    def ports(models):
        return {m["name"]: m["port"] for m in plan_site(models, h100s(4), vllm_version="0.32.0")["models"]}

    before = ports([small, chat])
    # The larger model is placed first, but a new entry takes the next port of the catalog.
    after_adding = ports([small, chat, coder])
    assert after_adding["tiny-eval"] == before["tiny-eval"] and after_adding["gemma-chat"] == before["gemma-chat"]
    assert after_adding["qwen-coder"] == 8003
    after_retiring = ports([dict(small, state="absent"), chat, coder])
    assert after_retiring == {"gemma-chat": 8002, "qwen-coder": 8003}


def test_speed_advice_names_only_settings_that_reach_the_target():
    models = [{"name": "gemma-chat", "profile": "chat", "config": GEMMA_3_27B, "weights_bytes": 55244358451,
               "max_num_batched_tokens": 4096}]
    plan = plan_site(models, h100s(4), vllm_version="0.32.0")
    advice = [r for r in plan["models"][0]["reasons"] if "below 80" in r][0]
    # One H100 decodes ~36 tokens/s; fp8 alone (~73) and TP 2 alone (~67) fall short, so neither is offered.
    offered = re.findall(r"(?:would reach it: |or )([^(]+) \(~(\d+) tokens/s\)", advice)
    assert offered and all(int(speed) >= 80 for _, speed in offered), advice
    assert "fp8 weights and tensor_parallel_size 2" in advice
    one_gpu = plan_site(models, h100s(1), vllm_version="0.32.0")["models"][0]["reasons"]
    assert any("nothing with up to 1 of these GPUs reaches it; the fastest is fp8 weights" in r for r in one_gpu)


def test_catalog_typos_are_refused_by_name():
    entry = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "max_modle_len": 8192}
    with pytest.raises(PlanError, match=r"model qwen-coder: unknown field max_modle_len \(known: "):
        plan_site([entry], h100s(4), vllm_version="0.32.0")
    with pytest.raises(PlanError, match="state must be present or absent, not 'retired'"):
        plan_site([dict(entry, state="retired")], h100s(4))


def test_tool_call_parser_becomes_engine_arguments():
    entry = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B,
             "weights_bytes": 65527752704, "tool_call_parser": "hermes"}
    args = plan_site([entry], h100s(4), vllm_version="0.32.0")["models"][0]["vllm_args"]
    assert args[args.index("--enable-auto-tool-choice"):][:3] == ["--enable-auto-tool-choice", "--tool-call-parser",
                                                                  "hermes"]


def test_one_port_for_two_models_is_refused():
    first = {"name": "a", "profile": "eval", "config": GEMMA_3_27B, "weights_bytes": 55244358451, "port": 8100}
    second = dict(first, name="b")
    with pytest.raises(PlanError, match="port 8100 to more than one model"):
        plan_site([first, second], h100s(4), vllm_version="0.32.0")


def test_model_that_cannot_fit_is_refused_with_fixes():
    models = [{"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": 65527752704,
               "max_model_len": 32768, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.80}]
    with pytest.raises(PlanError) as raised:
        plan_site(models, h100s(1), vllm_version="0.32.0")
    message = str(raised.value)
    assert "qwen-coder" in message and "GiB" in message
    assert "Settings that would fit:" in message
    assert "max_model_len:" in message or "kv_cache_dtype: fp8" in message or "quantization: fp8" in message


def test_no_gpu_left_names_the_models_in_the_way():
    models = [{"name": "a", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES},
              {"name": "b", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES}]
    with pytest.raises(PlanError, match=r"model b: no GPU is left .*taken by a.*Retire a model"):
        plan_site(models, h100s(1))


def test_shared_gpus_fractions_capped():
    models = [{"name": "a", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES,
               "gpu_memory_utilization": 0.5},
              {"name": "b", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES,
               "share_gpus_with": "a", "gpu_memory_utilization": 0.5}]
    with pytest.raises(PlanError, match=r"share GPUs \[0\] with gpu_memory_utilization 0.50 \+ 0.50 > 0.95"):
        plan_site(models, h100s(1))
    models[1]["gpu_memory_utilization"] = 0.45
    plan = plan_site(models, h100s(1))
    assert [m["gpus"] for m in plan["models"]] == [[0], [0]]


def test_tp_must_divide_heads_and_vocab():
    with pytest.raises(PlanError, match="does not divide its 40 attention heads"):
        estimate_memory(parse_config(QWEN_CODER_32B), gpu_memory_gib=79.19, tensor_parallel_size=3,
                        gpu_memory_utilization=0.9, max_model_len=4096)


def run_cli(*args):
    return subprocess.run([str(Path(sys.executable).with_name("appliance-plan")), *args],
                          capture_output=True, text=True, check=False)


def test_cli_memory_contract(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_8B))
    result = run_cli("memory", "--config", str(config), "--weights-bytes", str(LLAMA_8B_BYTES),
                     "--gpu-memory-gib", "79.19", "--tensor-parallel-size", "1", "--gpu-memory-utilization", "0.95",
                     "--max-model-len", "8192", "--vllm-version", "0.19.0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("weights_gib_per_gpu", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency", "fits",
                "reason"):
        assert key in out
    assert out["fits"] is True and out["kv_cache_tokens"] == pytest.approx(476016, rel=0.005)


@pytest.mark.parametrize("content, message", [
    ("{ not json", "is not valid JSON"),
    (json.dumps({"model_type": "mystery"}), "lacks num_hidden_layers"),
])
def test_cli_bad_input_has_no_traceback(tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(content)
    result = run_cli("memory", "--config", str(config), "--gpu-memory-gib", "79.19", "--tensor-parallel-size", "1",
                     "--gpu-memory-utilization", "0.9", "--max-model-len", "4096", "--json")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def load_filter_plugin(name):
    """A filter plugin module, loaded from its file as Ansible does."""
    spec = importlib.util.spec_from_file_location(f"filter_plugin_{name}", REPO / "filter_plugins" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_filter_plugin_exposes_the_planner():
    planner = load_filter_plugin("planner")
    filters = planner.FilterModule().filters()
    assert {"appliance_plan", "appliance_vllm_units", "appliance_litellm_backends"} <= set(filters)


def test_runtime_fp8_uses_the_name_of_the_pinned_vllm():
    """vLLM 0.32 calls runtime fp8 `fp8_per_tensor` (`fp8` is a deprecated alias there)."""
    from llm_appliance.plan.decide import _quantization_argument

    assert _quantization_argument("fp8", "0.32.0") == "fp8_per_tensor"
    assert _quantization_argument("fp8", "0.31.1") == "fp8"
    assert _quantization_argument("awq", "0.32.0") == "awq"


EXAMPLE_CODER_CONFIG = REPO / "inventory/example/model-configs/qwen-coder/config.json"
# inventory/example's qwen-coder as its catalog plans it: fp8 weights, TP 2, the completion profile.
CODER_MEMORY_ARGS = ["memory", "--config", str(EXAMPLE_CODER_CONFIG), "--weights-bytes", "65527752704",
                     "--gpu-memory-gib", "79.19", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9",
                     "--max-model-len", "16384", "--quantization", "fp8"]


def memory_json(capsys, *extra):
    assert cli.main(CODER_MEMORY_ARGS + list(extra) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_memory_help_explains_every_option(capsys):
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, subparser in subcommands.items():
        for action in subparser._actions:
            assert action.help, "appliance-plan %s %s has no help" % (name, "/".join(action.option_strings))
    with pytest.raises(SystemExit):
        cli.main(["memory", "--help"])
    text = capsys.readouterr().out
    assert "decode speed" in text and "--gpu-name" in text and "--memory-bandwidth-gbps" in text
