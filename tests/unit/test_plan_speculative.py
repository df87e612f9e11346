"""Speculative decoding in the catalog: vLLM's --speculative-config, the draft's memory, its storage."""
import json

import pytest
from ansible.errors import AnsibleFilterError

from llm_appliance.plan import PlanError, estimate_memory, parse_config
from llm_appliance.plan.decide import plan_site
from llm_appliance.plan.memory import GIB
from llm_appliance.plan.speculative import DRAFT_UNMEASURED_GIB, read_speculation
from tests.unit.test_plan import GEMMA_3_27B, LLAMA_8B, LLAMA_8B_BYTES, QWEN_CODER_32B, h100s, load_filter_plugin

# Qwen2.5-0.5B's shape (its config.json): 24 layers, 2 KV heads of 64.
QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "max_position_embeddings": 32768, "vocab_size": 151936,
            "torch_dtype": "bfloat16", "tie_word_embeddings": True}
DRAFT_BYTES = 1_000_000_000
CODER = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": 65527752704,
         "quantization": "fp8", "tensor_parallel_size": 2}
DRAFT = {"name": "qwen-draft", "profile": "draft", "config": QWEN_05B, "weights_bytes": DRAFT_BYTES}


def speculative_config(record):
    args = record["vllm_args"]
    return json.loads(args[args.index("--speculative-config") + 1])


def test_ngram_lookup_is_rendered_and_costs_no_gpu_memory():
    plain = plan_site([CODER], h100s(4))["models"][0]
    ngram = plan_site([dict(CODER, speculative={"method": "ngram"})], h100s(4))["models"][0]
    assert speculative_config(ngram) == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4,
                                         "prompt_lookup_min": 2}
    assert ngram["memory"] == plain["memory"]
    assert ngram["speculative"]["draft"] is None
    line = [r for r in ngram["reasons"] if r.startswith("speculative decoding ngram")][0]
    assert "no GPU memory" in line and "https://" in line and "not counted in the speed" in line
    # The speed the plan promises does not count the gain.
    assert ngram["predicted_tokens_per_s"] == plain["predicted_tokens_per_s"]


def test_draft_model_memory_is_its_weights_a_margin_and_its_kv_layers():
    shape = parse_config(LLAMA_8B)
    common = dict(gpu_memory_gib=79.19, gpu_memory_utilization=0.9, max_model_len=8192, weights_bytes=LLAMA_8B_BYTES,
                  tensor_parallel_size=2, vllm_version="0.32.0")
    draft = read_speculation({"name": "llama", "speculative": {"method": "draft_model", "model": "qwen-draft"}},
                             {"qwen-draft": DRAFT})
    plain = estimate_memory(shape, **common)
    with_draft = estimate_memory(shape, speculation=draft, **common)
    assert with_draft.draft_gib == pytest.approx(DRAFT_BYTES / 2 / GIB + DRAFT_UNMEASURED_GIB, abs=1e-3)
    assert with_draft.available_kv_cache_gib == pytest.approx(plain.available_kv_cache_gib - with_draft.draft_gib,
                                                              abs=1e-3)
    # Per GPU at TP 2: the target's 4 KV heads x 128 x 32 layers, the draft's 1 head x 64 x 24 layers.
    target_per_token, draft_per_token = 2 * 4 * 128 * 2 * 32, 2 * 1 * 64 * 2 * 24
    assert with_draft.kv_bytes_per_token == target_per_token + draft_per_token
    assert with_draft.num_blocks == int(with_draft.available_kv_cache_gib * GIB) // (
        16 * (target_per_token + draft_per_token))


def test_draft_is_stored_not_served_and_takes_no_port():
    eval_model = {"name": "llama-eval", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES}
    catalog = [DRAFT, dict(CODER, speculative={"method": "draft_model", "model": "qwen-draft"}), eval_model]
    plan = plan_site(catalog, h100s(4))
    assert [m["name"] for m in plan["models"]] == ["qwen-coder", "llama-eval"]
    assert [m["port"] for m in plan["models"]] == [8001, 8002]
    coder = plan["models"][0]
    assert coder["speculative"]["draft"] == "qwen-draft"
    assert speculative_config(coder) == {"method": "draft_model", "model": "qwen-draft", "num_speculative_tokens": 3}
    assert coder["memory"]["draft_gib"] > DRAFT_UNMEASURED_GIB

    planner = load_filter_plugin("planner")
    stored = planner.appliance_host_catalog(catalog, plan)
    assert [m["name"] for m in stored] == ["qwen-draft", "qwen-coder", "llama-eval"]
    paths = {"qwen-coder": "/srv/models/qwen-coder", "llama-eval": "/srv/models/llama-eval",
             "qwen-draft": "/srv/models/qwen-draft"}
    unit = planner.appliance_vllm_units(plan, paths)[0]
    assert speculative_config({"vllm_args": unit["args"]})["model"] == "/srv/models/qwen-draft"
    with pytest.raises(AnsibleFilterError, match="qwen-coder: draft model qwen-draft is planned but not stored"):
        planner.appliance_vllm_units(plan, {k: v for k, v in paths.items() if k != "qwen-draft"})


@pytest.mark.parametrize("speculative, message", [
    ("ngram", "speculative must be a mapping such as {method: ngram}"),
    ({"method": "medusa"}, "speculative.method must be one of ngram, draft_model, eagle, eagle3, not 'medusa'"),
    ({"method": "ngram", "model": "qwen-draft"}, "ngram looks tokens up in the prompt and takes no model"),
    ({"method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 3},
     "prompt_lookup_min (5) must not exceed prompt_lookup_max (3)"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be a whole number of 1 or more"),
    ({"method": "eagle3"}, "needs `model`: the name of a catalog entry with profile draft and state present "
                           "(drafts in the catalog: qwen-draft)"),
    ({"method": "eagle3", "model": "llama-eval"}, "needs `model`"),
    ({"method": "eagle", "model": "qwen-draft", "prompt_lookup_max": 3}, "prompt_lookup_max is for method ngram"),
    ({"method": "ngram", "tokens": 3}, "speculative has unknown field tokens"),
])
def test_bad_speculative_settings_are_refused_by_name(speculative, message):
    eval_model = {"name": "llama-eval", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES}
    with pytest.raises(PlanError, match="model qwen-coder: ") as refused:
        plan_site([DRAFT, dict(CODER, speculative=speculative), eval_model], h100s(4))
    assert message in str(refused.value)


def test_draft_for_a_sliding_window_model_is_refused_with_the_alternative():
    chat = {"name": "gemma-chat", "profile": "chat", "config": GEMMA_3_27B, "weights_bytes": 55244358451,
            "speculative": {"method": "draft_model", "model": "qwen-draft"}}
    with pytest.raises(PlanError, match="full-attention models only.*use speculative method ngram"):
        plan_site([DRAFT, chat], h100s(4))


def test_a_draft_cannot_speculate_itself():
    with pytest.raises(PlanError, match="qwen-draft: a draft .* cannot have speculative decoding"):
        plan_site([dict(DRAFT, speculative={"method": "ngram"}), CODER], h100s(4))
