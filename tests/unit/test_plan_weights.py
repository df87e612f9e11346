"""Checkpoint bytes from config.json alone (config.estimate_weights_bytes), against published totals.

Every case names where its published figure comes from. "search-index id N" is a file in the
public-source index the planner was checked against (see tests/fixtures/model-configs/README.md);
"HF tree" is the model's Hugging Face file listing (shard sizes as shown there, 3 significant
digits, so good to about 0.2%).
"""
import json
from pathlib import Path

import pytest

from llm_appliance.plan import PlanError, estimate_memory, parse_config
from llm_appliance.plan.config import ModelShape, estimate_weights_bytes
from llm_appliance.plan.memory import GIB, mxfp4_padding_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-configs"


def config(name):
    return json.loads((FIXTURES / (name + ".json")).read_text())


PUBLISHED = [
    # --- GPTQ (AutoGPTQ / GPTQModel layout) ---
    # HF tree Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4: 3.95 + 3.98 + 3.95 + 3.98 + 3.48 GB
    # (Qwen2.5-Coder-32B-Instruct-GPTQ-Int4 lists the same five shards).
    ("qwen2.5-32b-instruct-gptq-int4", 19_340_000_000),
    # search-index id 63241653895: model.safetensors 1,149,862,960 B (HF API ?blobs=true).
    ("qwen2.5-coder-1.5b-instruct-gptq-int4", 1_149_862_960),
    # search-index id 63241653895: 3,999,234,216 + 1,576,146,928 B.
    ("qwen2.5-coder-7b-instruct-gptq-int4", 5_575_381_144),
    # HF tree neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w4a16 (GPTQ, desc_act): 5.74 GB.
    ("meta-llama-3.1-8b-instruct-quantized.w4a16", 5_740_000_000),
    # --- AWQ (AutoAWQ GEMM) ---
    # HF tree Qwen/Qwen2.5-32B-Instruct-AWQ: 3.94 + 3.98 + 3.95 + 3.98 + 3.48 GB.
    ("qwen2.5-32b-instruct-awq", 19_330_000_000),
    # --- compressed-tensors ---
    # HF tree neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8: 5 + 4.08 GB (transformers' docs load the
    # same recipe, nm-testing/Meta-Llama-3.1-8B-Instruct-FP8-hf, at 8.4575 GiB = 9.081e9 B).
    ("meta-llama-3.1-8b-instruct-fp8", 9_080_000_000),
    # HF tree neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8: 5 + 4.08 GB.
    ("meta-llama-3.1-8b-instruct-quantized.w8a8", 9_080_000_000),
    # --- FP8 with 128x128 blocks ---
    # HF tree Qwen/Qwen3-4B-FP8: 4.41 GB + 778 MB; the 778 MB shard is one more vocabulary matrix
    # (151936 x 2560 bf16), a copy of the tied head that vLLM skips; 4.41 GB is what it loads.
    ("qwen3-4b-fp8", 4_410_000_000),
    # --- MXFP4 ---
    # search-index id 31112482743: gpt-oss-20b model.safetensors.index.json total_size.
    ("gpt-oss-20b", 13_761_264_768),
    # search-index ids 59724567210 (tensor_bytes) and 57403603525 (total_size of openai/gpt-oss-120b).
    ("gpt-oss-120b", 65_248_815_744),
    # --- multimodal (bf16) ---
    # search-index id 54876698882: google/gemma-3-27b-it metadata.total_size.
    ("gemma-3-27b-it", 54_864_813_280),
    # search-index ids 60935461719 (MODEL_7B_INDEX_SIZE) and 62225960460: Qwen2.5-VL-7B-Instruct.
    ("qwen2.5-vl-7b-instruct", 16_584_333_312),
    # search-index ids 71422969007, 71142266638: 108,641,793,536 parameters (HF safetensors count), bf16.
    ("llama-4-scout-17b-16e-instruct", 2 * 108_641_793_536),
    # search-index id 61107991196: mistral_small_3.1_24b 24,011,361,280 parameters, bf16.
    ("mistral-small-3.1-24b-instruct-2503", 2 * 24_011_361_280),
    # --- MoE (bf16) ---
    # search-index id 9876739501: Mixtral-8x7B index total_size.
    ("mixtral-8x7b", 93_405_585_408),
    # search-index ids 55662526280 (index total_size), 68286320816: Qwen3-30B-A3B.
    ("qwen3-30b-a3b", 61_064_245_248),
    # search-index id 69506398894: "The index file reports total_size: 31412968448" (DeepSeek-V2-Lite).
    ("deepseek-v2-lite", 31_412_968_448),
    # --- dense bf16: safetensors_total_size in ../shared/reference/vllm-calibration-model-configs.json ---
    ("qwen2.5-7b-instruct", 15_231_233_024),
    ("qwen3-14b", 29_536_614_400),
    ("codellama-7b-hf", 13_477_093_376),
    ("gemma-2-2b-it", 5_228_683_776),
    ("gemma-2-9b-it", 18_483_411_968),
    ("gemma-7b", 17_075_361_792),
    ("granite-3.1-2b-instruct", 5_067_063_296),
    ("llama-3.1-8b-instruct", 16_060_522_496),
]


@pytest.mark.parametrize("name, published", PUBLISHED)
def test_estimate_is_within_3_percent_of_the_published_size(name, published):
    estimate = estimate_weights_bytes(config(name), name)
    assert abs(estimate - published) / published < 0.03, "%s: %d vs %d" % (name, estimate, published)


@pytest.mark.parametrize("name, weights_gib", [
    # vLLM 0.19 "Model loading took X GiB" (weights_gib), ../shared/reference/vllm-calibration-observations.json
    ("llama-3.1-8b-instruct", 14.99),   # rows 17-30
    ("qwen2.5-7b-instruct", 14.25),     # rows 44-49
    ("qwen3-14b", 27.52),               # rows 60-63
    ("gemma-2-9b-it", 17.22),           # row 8
    ("gemma-2-2b-it", 4.90),            # row 7
])
def test_estimate_matches_what_vllm_loaded(name, weights_gib):
    estimate = estimate_memory(parse_config(config(name), name), gpu_memory_gib=79.19, max_model_len=4096)
    assert abs(estimate.weights_gib_per_gpu - weights_gib) / weights_gib < 0.03


def test_a_4_bit_checkpoint_is_not_sized_as_16_bit():
    """The old path charged params x 2 bytes: a GPTQ-Int4 32B came out at 65 GB instead of 19."""
    shape = parse_config(config("qwen2.5-32b-instruct-gptq-int4"), "qwen-gptq")
    estimate = estimate_memory(shape, gpu_memory_gib=79.19, max_model_len=8192)
    assert 17.5 < estimate.weights_gib_per_gpu < 18.5


def test_the_vision_tower_is_counted():
    gemma = config("gemma-3-27b-it")
    text_only = dict(gemma)
    del text_only["vision_config"]
    text_only["model_type"] = "gemma3_text"
    tower = estimate_weights_bytes(gemma) - estimate_weights_bytes(text_only)
    assert 0.8e9 < tower < 0.9e9           # SigLIP 400M + projector, bf16


def test_the_audio_tower_is_counted():
    """Structure only (no published total was found): a Qwen2-Audio-shaped config; its Whisper-large
    encoder (32 layers of 1280) and projector add about 0.64 B parameters to the 7.7 B language model."""
    text = {"model_type": "qwen2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 156032, "tie_word_embeddings": False}
    audio = {"model_type": "qwen2_audio_encoder", "d_model": 1280, "encoder_layers": 32, "encoder_ffn_dim": 5120,
             "num_mel_bins": 128, "max_source_positions": 1500}
    with_audio = estimate_weights_bytes({"model_type": "qwen2_audio", "text_config": text, "audio_config": audio})
    assert 0.63e9 < (with_audio - estimate_weights_bytes(dict(text))) / 2 < 0.66e9


def test_catalog_weights_bytes_still_win():
    shape = parse_config(config("gpt-oss-20b"), "oss")
    given = estimate_memory(shape, gpu_memory_gib=79.19, max_model_len=8192, weights_bytes=20 * GIB)
    # The checkpoint as given, plus what vLLM loads beside it on every GPU: the rotary cache and
    # the MXFP4 kernel's padding of the experts (hidden 2880 to 3072, intermediate 2880 to 2944).
    loaded = (shape.rope_cache_bytes + mxfp4_padding_bytes(shape, 1)) / GIB
    assert 0.5 < loaded < 1.0
    assert given.weights_gib_per_gpu == round(20.0 + loaded, 3)


def test_ct_pack_quantized_w4a16_agrees_with_gptq_on_the_same_model():
    """Consistency, not a published figure: the same 4-bit group-128 weights in compressed-tensors'
    pack-quantized layout drop GPTQ's zero points and g_idx, so they come out a little smaller."""
    llama = config("llama-3.1-8b-instruct")
    llama["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True}}}}
    gptq = estimate_weights_bytes(config("meta-llama-3.1-8b-instruct-quantized.w4a16"))
    ct = estimate_weights_bytes(llama)
    assert 0.98 * gptq < ct < gptq


def test_ignore_lists_naming_single_layers_skip_only_those_layers():
    llama = config("meta-llama-3.1-8b-instruct-fp8")
    every = estimate_weights_bytes(llama)
    llama["quantization_config"]["ignore"] = ["lm_head", "model.layers.0.mlp.down_proj"]
    one_more = estimate_weights_bytes(llama)
    assert one_more - every == pytest.approx(4096 * 14336, rel=0.01)   # one down_proj kept bf16


def test_bitsandbytes_4_bit_keeps_the_head_16_bit():
    llama = config("llama-3.1-8b-instruct")
    llama["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                    "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    size = estimate_weights_bytes(llama)
    head_and_embedding = 2 * 2 * 128256 * 4096
    linears = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)
    assert size == pytest.approx(head_and_embedding + linears * (0.5 + 1 / 64), rel=0.002)


@pytest.mark.parametrize("quantization, message", [
    ({"quant_method": "exl2", "bits": 4.0}, "quantization 'exl2' is not one the planner understands"),
    ({"quant_method": "compressed-tensors", "format": "marlin-24", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int"}}}}, "format 'marlin-24'"),
    ({"quant_method": "bitsandbytes"}, "neither load_in_4bit nor load_in_8bit"),
])
def test_an_unknown_format_is_refused_with_the_fix(quantization, message):
    llama = dict(config("llama-3.1-8b-instruct"), quantization_config=quantization)
    with pytest.raises(PlanError, match=message) as raised:
        estimate_weights_bytes(llama, "mystery")
    assert "set weights_bytes in the catalog" in str(raised.value)
    shape = parse_config(llama, "mystery")            # the shape itself still parses ...
    with pytest.raises(PlanError, match="set weights_bytes in the catalog"):
        estimate_memory(shape, gpu_memory_gib=79.19, max_model_len=4096)   # ... sizing it does not
    sized = estimate_memory(shape, gpu_memory_gib=79.19, max_model_len=4096, weights_bytes=6 * GIB)
    assert sized.weights_gib_per_gpu == round(6.0 + shape.rope_cache_bytes / GIB, 3)   # 131072 x 128 x 2 bytes


@pytest.mark.parametrize("change, message", [
    ({"quantization": {"group_size": 64, "bits": 4}}, "MLX-style"),
    ({"layer_types": ["linear_attention", "full_attention"] * 16}, "state-space or linear-attention"),
    ({"model_type": "idefics3", "vision_config": {"hidden_size": 1152}}, "vision encoder"),
])
def test_unknown_architectures_are_refused(change, message):
    with pytest.raises(PlanError, match=message):
        estimate_weights_bytes(dict(config("llama-3.1-8b-instruct"), **change), "mystery")


def test_a_hand_built_shape_falls_back_to_the_parameter_count():
    shape = ModelShape(architecture="LlamaForCausalLM", layers=2, hidden=64, intermediate=128, heads=4, kv_heads=4,
                       head_dim=16, vocab=100, max_position=256, torch_dtype="bfloat16")
    assert shape.checkpoint_bytes() == shape.params_estimate * 2


@pytest.mark.parametrize("name, tp, gib", [
    # vLLM 0.19 on H100 ("Model loading took"), llm-d-planner's sweep logs (bench/calibration/startups):
    ("gemma-3-27b-it", 1, 51.45),     # + the rotary caches: 1M positions (linear x8) and 128k, x 128 x 2 bytes
    ("gpt-oss-20b", 2, 7.01),         # + the MXFP4 experts padded by the MoE kernel
])
def test_weights_as_vllm_loads_them(name, tp, gib):
    shape = parse_config(config(name), name)
    estimate = estimate_memory(shape, gpu_memory_gib=79.19, max_model_len=8192, tensor_parallel_size=tp)
    assert estimate.weights_gib_per_gpu == pytest.approx(gib, rel=0.01)
