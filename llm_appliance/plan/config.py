"""A model's shape, read from its Hugging Face config.json: what vLLM's memory arithmetic needs."""
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_appliance.plan.errors import PlanError

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}

FULL, SLIDING, CHUNKED, LINEAR = "full", "sliding", "chunked", "linear"


@dataclass
class ModelShape:
    architecture: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    torch_dtype: str
    layer_kinds: list[str] = field(default_factory=list)
    sliding_window: int = 0
    chunk_size: int = 0
    use_mla: bool = False
    mla_head_size: int = 0
    checkpoint_quantization: str = ""
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    tied_embeddings: bool = False
    weights_bytes_estimate: int = 0
    weights_unknown: str = ""
    # Bytes a decoded token reads (estimate_decode_read_bytes): decoder layers and LM head.
    decode_layer_bytes: int = 0
    decode_head_bytes: int = 0
    weight_format: str = "16-bit"     # how the linear layers are stored: 16-bit, fp8, int8, int4, mxfp4
    # Layers whose cache the planner does not model (state-space, linear attention, sparse-attention
    # indexers): why, or empty. The memory estimate then holds part of the pool back.
    kv_unmodelled: str = ""
    # Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5): its state per layer, as
    # (conv_dim, conv_kernel, value_heads, value_head_dim, key_head_dim); empty otherwise.
    linear_attention: tuple[int, ...] = ()
    # Loaded with the weights on every GPU, not in the checkpoint: the rotary cos/sin caches
    # (_rope_cache_bytes), and the MXFP4 experts' bytes with the sizes the MoE kernel pads
    # (expert bytes, hidden, intermediate).
    rope_cache_bytes: int = 0
    model_type: str = ""
    mxfp4_experts: tuple[int, ...] = ()

    def kv_bytes_per_token_per_layer(self, tensor_parallel_size: int, dtype_bytes: int) -> int:
        """One token's KV cache in one attention layer on one GPU: K and V of its heads there
        (max(1, heads // TP): replicated when TP exceeds them), or for MLA one latent of
        kv_lora_rank + rope dims, replicated on every rank."""
        if self.use_mla:
            return self.mla_head_size * dtype_bytes
        return 2 * max(1, self.kv_heads // tensor_parallel_size) * self.head_dim * dtype_bytes

    def checkpoint_bytes(self) -> int:
        """Checkpoint bytes from config.json alone (estimate_weights_bytes), for when the catalog has no
        weights_bytes and there is no safetensors index; PlanError when the format is not understood."""
        if self.weights_unknown:
            raise PlanError(self.weights_unknown)
        if self.weights_bytes_estimate:
            return self.weights_bytes_estimate
        return self.params_estimate * (1 if self.checkpoint_quantization in ("fp8", "compressed-tensors") else 2)

    @property
    def params_estimate(self) -> int:
        """Parameter count from the shape, for when no checkpoint size is known."""
        attention = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        if self.experts:
            mlp = self.experts * 3 * self.hidden * (self.expert_intermediate or self.intermediate)
        else:
            mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp + 2 * self.hidden) + embeddings

    def active_params_estimate(self) -> int:
        """Parameters read per decoded token (MoE reads only the routed experts)."""
        if not self.experts:
            return self.params_estimate
        attention = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        mlp = (self.experts_per_token or 1) * 3 * self.hidden * (self.expert_intermediate or self.intermediate)
        return self.layers * (attention + mlp) + self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


def _weight_format(quant: dict[str, Any], method: str) -> str:
    """The storage of the linear layers, as decode kernels read it: 16-bit, fp8, int8, int4, mxfp4."""
    if not method:
        return "16-bit"
    if method in ("gptq", "awq"):
        return "int8" if int(quant.get("bits", quant.get("w_bit", 4)) or 4) >= 8 else "int4"
    if method == "bitsandbytes":
        return "int8" if quant.get("load_in_8bit") else "int4"
    if method == "compressed-tensors":
        for group in (quant.get("config_groups") or {}).values():
            weights = group.get("weights") or {}
            if weights:
                bits = int(weights.get("num_bits", 8))
                return ("fp8" if weights.get("type") == "float" else "int8") if bits >= 8 else "int4"
        return "16-bit"
    return method if method in ("fp8", "mxfp4") else "16-bit"


def _rope_cache_bytes(config: dict[str, Any], text: dict[str, Any], shape: "ModelShape", model_type: str) -> int:
    """vLLM's rotary cos/sin cache, one per rope, on every GPU and counted in "Model loading took"
    (model_executor/layers/rotary_embedding/base.py: [positions, rotary_dim] in the model dtype).
    Positions: max_position_embeddings, times the factor for linear and dynamic scaling
    (LinearScalingRotaryEmbedding), original x factor for YaRN. Gemma 3 keeps a second, unscaled
    rope for its sliding layers. 2.5 GiB for Llama 4 Scout's 10M positions; megabytes for most."""
    if shape.use_mla:
        rotary = int(_get(config, text, "qk_rope_head_dim", default=0) or 0)
    else:
        rotary = int(shape.head_dim * float(_get(config, text, "partial_rotary_factor", "rotary_pct", default=1) or 1))
    base = int(_get(config, text, "max_position_embeddings", "n_positions", "seq_length", default=2048))
    rope = _get(config, text, "rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    positions = shape.max_position
    if kind in ("linear", "dynamic") and rope.get("factor"):
        positions = int(base * float(rope["factor"]))
    width = 4 if shape.torch_dtype in ("float32", "float") else 2
    caches = positions + (base if model_type in ("gemma3", "gemma3_text") else 0)
    return caches * rotary * width


ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "chunked_local_attention",
                         "attention", "sliding")


def _kv_unmodelled(config: dict[str, Any], text: dict[str, Any], name: str) -> str:
    """Why the model's cache is not one the planner models (state-space layers: Mamba; a
    sparse-attention indexer: DeepSeek V3.2), or ''. Gated DeltaNet (linear_* keys) is modelled."""
    deltanet = _get(config, text, "linear_num_value_heads") is not None
    other = sorted({str(kind) for kind in _get(config, text, "layer_types", default=[]) or []
                    if kind not in ATTENTION_LAYER_TYPES and not (deltanet and kind == "linear_attention")})
    keys = [key for key in NOT_ATTENTION_KEYS + ("index_topk", "index_n_heads")
            if _get(config, text, key) is not None and not (deltanet and key == "linear_num_key_heads")]
    if not other and not keys:
        return ""
    return "model %s has layers whose cache the planner does not model (%s)" % (
        name, ", ".join(other + keys))


def _get(config: dict[str, Any], text: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        for source in (text, config):
            if isinstance(source, dict) and source.get(name) is not None:
                return source[name]
    return default


def _layer_kinds(config: dict[str, Any], text: dict[str, Any], layers: int, model_type: str) -> list[str]:
    layer_types = _get(config, text, "layer_types")
    if layer_types:
        kinds = []
        for kind in layer_types:
            if kind in ("sliding_attention", "sliding"):
                kinds.append(SLIDING)
            elif kind == "linear_attention" and _get(config, text, "linear_num_value_heads"):
                kinds.append(LINEAR)
            elif kind in ("chunked_attention", "chunked_local_attention"):
                kinds.append(CHUNKED)
            else:
                kinds.append(FULL)
        return kinds
    interval = _get(config, text, "full_attention_interval")
    if interval and _get(config, text, "linear_num_value_heads"):
        # Qwen3-Next: every interval-th layer is full attention, the others gated DeltaNet.
        return [FULL if (i + 1) % int(interval) == 0 else LINEAR for i in range(layers)]
    window = _get(config, text, "sliding_window")
    chunk = _get(config, text, "attention_chunk_size")
    if chunk:
        # Llama 4: every `interleave` th layer is a global NoPE layer, the others chunked-local.
        no_rope = _get(config, text, "no_rope_layers")
        if no_rope and len(no_rope) == layers:
            return [CHUNKED if use_rope else FULL for use_rope in no_rope]
        # Llama 4's default: every fourth layer is global (no RoPE).
        return [FULL if (i + 1) % 4 == 0 else CHUNKED for i in range(layers)]
    if window and _get(config, text, "use_sliding_window", default=True) is not False:
        pattern = _get(config, text, "sliding_window_pattern")
        if pattern:
            return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers)]
        if model_type in ("gemma2", "gemma3_text", "gemma3", "cohere2"):
            return [SLIDING if i % 2 == 0 else FULL for i in range(layers)]
        if model_type in ("mistral",) or _get(config, text, "max_window_layers") is None:
            return [SLIDING] * layers
    return [FULL] * layers


def parse_config(config: object, name: str = "model") -> ModelShape:
    """Return the ModelShape of a config.json dict; PlanError naming the missing field otherwise."""
    if not isinstance(config, dict):
        raise PlanError("model %s: config.json is not a JSON object" % name)
    text_config = config.get("text_config")
    text: dict[str, Any] = text_config if isinstance(text_config, dict) else config
    model_type = text.get("model_type") or config.get("model_type") or "unknown"
    try:
        layers = int(_get(config, text, "num_hidden_layers", "n_layer", "num_layers"))
        hidden = int(_get(config, text, "hidden_size", "d_model", "n_embd"))
        heads = int(_get(config, text, "num_attention_heads", "n_head"))
    except (TypeError, ValueError):
        raise PlanError("model %s: config.json lacks num_hidden_layers, hidden_size or num_attention_heads "
                        "(architecture %s is not one the planner knows)" % (name, model_type)) from None
    kv_heads = int(_get(config, text, "num_key_value_heads", "num_kv_heads", default=heads))
    head_dim = int(_get(config, text, "head_dim", default=0) or hidden // heads)
    vocab = _get(config, text, "vocab_size")
    if not vocab:
        raise PlanError("model %s: config.json has no vocab_size" % name)
    max_position = int(_get(config, text, "max_position_embeddings", "n_positions", "seq_length", default=2048))
    rope = _get(config, text, "rope_scaling") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "yarn" and rope.get("factor"):
        original = rope.get("original_max_position_embeddings") or max_position
        max_position = int(original * rope["factor"])
    quant = config.get("quantization_config") or text.get("quantization_config") or {}
    quant_method = ""
    if isinstance(quant, dict) and quant:
        quant_method = str(quant.get("quant_method") or quant.get("format") or "quantized").lower()
    kv_lora_rank = _get(config, text, "kv_lora_rank")
    shape = ModelShape(
        architecture=(config.get("architectures") or [model_type])[0],
        layers=layers, hidden=hidden,
        intermediate=int(_get(config, text, "intermediate_size", "ffn_dim", default=4 * hidden)),
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=int(vocab), max_position=max_position,
        torch_dtype=str(_get(config, text, "torch_dtype", "dtype", default="bfloat16")),
        sliding_window=int(_get(config, text, "sliding_window", default=0) or 0),
        chunk_size=int(_get(config, text, "attention_chunk_size", default=0) or 0),
        use_mla=bool(kv_lora_rank),
        mla_head_size=int(kv_lora_rank or 0) + int(_get(config, text, "qk_rope_head_dim", default=0) or 0),
        checkpoint_quantization=quant_method,
        experts=int(_get(config, text, "num_local_experts", "n_routed_experts", "num_experts", default=0) or 0),
        experts_per_token=int(_get(config, text, "num_experts_per_tok", default=0) or 0),
        expert_intermediate=int(_get(config, text, "moe_intermediate_size", "intermediate_size_mlp", default=0) or 0),
        tied_embeddings=bool(_get(config, text, "tie_word_embeddings", default=model_type in TIED_BY_DEFAULT)),
    )
    shape.layer_kinds = _layer_kinds(config, text, layers, model_type)
    shape.weight_format = _weight_format(quant if isinstance(quant, dict) else {}, quant_method)
    shape.kv_unmodelled = _kv_unmodelled(config, text, name)
    shape.rope_cache_bytes = _rope_cache_bytes(config, text, shape, model_type)
    shape.model_type = str(config.get("model_type") or model_type)
    if LINEAR in shape.layer_kinds:
        key_heads = int(_get(config, text, "linear_num_key_heads"))
        key_dim = int(_get(config, text, "linear_key_head_dim"))
        value_heads, value_dim = (int(_get(config, text, "linear_num_value_heads")),
                                  int(_get(config, text, "linear_value_head_dim")))
        shape.linear_attention = (2 * key_heads * key_dim + value_heads * value_dim,
                                  int(_get(config, text, "linear_conv_kernel_dim", default=4)), value_heads, value_dim,
                                  key_dim)
    if quant_method == "mxfp4" and shape.experts:
        # The experts' bytes as _mxfp4 stores them: half a byte a value and a scale per 32.
        hidden_, inter_ = shape.hidden, shape.expert_intermediate or shape.intermediate
        expert_bytes = shape.experts * shape.layers * 3 * hidden_ * inter_ * (0.5 + 1 / 32)
        shape.mxfp4_experts = (int(expert_bytes), hidden_, inter_)
    try:
        shape.weights_bytes_estimate = estimate_weights_bytes(config, name)
        shape.decode_layer_bytes, shape.decode_head_bytes = estimate_decode_read_bytes(config, name)
    except PlanError as exc:
        shape.weights_unknown = str(exc)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        shape.weights_unknown = str(_unknown(name, "config.json field %s is missing or malformed" % exc))
    return shape


# --- Checkpoint bytes from config.json alone ------------------------------------------------------
#
# For when the catalog gives no weights_bytes and there is no model.safetensors.index.json. Every
# nn.Linear of the model is listed under its Hugging Face module name ({i}: the layer index), so that
# a quantizer's ignore list can be matched the way the quantizer matches it; the quantization method
# says which linears it stores quantized and in how many bytes. Everything else (embeddings, norms,
# biases, convolutions, position tables, routers unless the method quantizes them) is 16-bit, the
# width vLLM loads an unquantized checkpoint at under --dtype auto.

UNKNOWN_HINT = "set weights_bytes in the catalog (the total_size of the model's model.safetensors.index.json)"
# Config classes whose tie_word_embeddings defaults to True when config.json leaves it out.
TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3", "gemma3_text")
# Qwen2-family attention has q/k/v biases without saying so in config.json (modeling_qwen2.py).
QKV_BIAS = ("qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text")
QK_NORM = ("qwen3", "qwen3_moe", "gemma3", "gemma3_text")
NOT_GATED = ("gpt2", "gpt_neox", "gptj", "phi", "starcoder2", "falcon", "gpt_bigcode", "opt", "bloom")
# Keys of state-space / linear-attention layers, whose weights this count does not model.
NOT_ATTENTION_KEYS = ("ssm_state_size", "mamba_d_state", "mamba_expand", "linear_num_key_heads",
                      "hybrid_override_pattern", "attn_layer_period", "block_types")
MULTIMODAL = ("gemma3", "paligemma", "llava", "llava_next", "llava_onevision", "mistral3", "llama4",
              "qwen2_vl", "qwen2_5_vl", "qwen2_audio")

Codec = Callable[[int, int], float]          # (rows, cols) -> bytes of one stored weight, scales included


class Get(Protocol):
    """A config.json lookup: the first of the keys that is set (text_config before the top level), else default."""

    def __call__(self, *keys: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Linear:
    """nn.Linear(cols -> rows) at module `name` ({i}: the layer) in each of `layers`, `copies` times."""
    name: str
    rows: int
    cols: int
    layers: tuple[int, ...] = (0,)
    copies: int = 1
    bias: bool = False
    section: str = "text"      # text, vision, audio, or head (the LM head)
    router: bool = False
    expert: bool = False


def _unknown(name: str, what: str) -> PlanError:
    return PlanError("model %s: cannot size its checkpoint from config.json: %s; %s" % (name, what, UNKNOWN_HINT))


def _mlp(name: str, hidden: int, inter: int, layers: tuple[int, ...], gated: bool = True, copies: int = 1,
         bias: bool = False, expert: bool = False) -> list[Linear]:
    ups = ("gate_proj", "up_proj") if gated else ("up_proj",)
    return [Linear(name + up, inter, hidden, layers, copies, bias, expert=expert) for up in ups] + [
        Linear(name + "down_proj", hidden, inter, layers, copies, bias, expert=expert)]


def _mla_attention(get: Get, prefix: str, hidden: int, heads: int,
                   layers: tuple[int, ...]) -> tuple[list[Linear], int]:
    """DeepSeek-V2/V3 multi-head latent attention (modeling_deepseek.py DeepseekV3Attention)."""
    nope, rope = int(get("qk_nope_head_dim")), int(get("qk_rope_head_dim"))
    v_dim, kv_rank, q_rank = int(get("v_head_dim")), int(get("kv_lora_rank")), int(get("q_lora_rank", default=0) or 0)
    a = prefix + "self_attn."
    if q_rank:
        query = [Linear(a + "q_a_proj", q_rank, hidden, layers),
                 Linear(a + "q_b_proj", heads * (nope + rope), q_rank, layers)]
    else:
        query = [Linear(a + "q_proj", heads * (nope + rope), hidden, layers)]
    return query + [Linear(a + "kv_a_proj_with_mqa", kv_rank + rope, hidden, layers),
                    Linear(a + "kv_b_proj", heads * (nope + v_dim), kv_rank, layers),
                    Linear(a + "o_proj", hidden, heads * v_dim, layers)], (q_rank + kv_rank) * len(layers)


def _attention(get: Get, prefix: str, hidden: int, layers: tuple[int, ...],
               model_type: str) -> tuple[list[Linear], int]:
    heads = int(get("num_attention_heads", "n_head"))
    if get("kv_lora_rank"):
        return _mla_attention(get, prefix, hidden, heads, layers)
    kv_heads = int(get("num_key_value_heads", "num_kv_heads", default=heads))
    head_dim = int(get("head_dim", default=0) or hidden // heads)
    o_bias = bool(get("attention_bias", default=False))
    qkv_bias = o_bias or model_type in QKV_BIAS
    a = prefix + "self_attn."
    linears = [Linear(a + "q_proj", heads * head_dim, hidden, layers, bias=qkv_bias),
               Linear(a + "k_proj", kv_heads * head_dim, hidden, layers, bias=qkv_bias),
               Linear(a + "v_proj", kv_heads * head_dim, hidden, layers, bias=qkv_bias),
               Linear(a + "o_proj", hidden, heads * head_dim, layers, bias=o_bias)]
    other = 2 * head_dim if model_type in QK_NORM else 0
    other += heads if model_type == "gpt_oss" else 0          # attention sinks
    return linears, other * len(layers)


def _moe_layers(get: Get, layers: int) -> tuple[int, ...]:
    """Which layers carry experts: DeepSeek's first_k_dense_replace/moe_layer_freq, Llama 4's
    interleave_moe_layer_step, Qwen-MoE's decoder_sparse_step/mlp_only_layers; else all."""
    if get("first_k_dense_replace") is not None or get("moe_layer_freq") is not None:
        first, freq = int(get("first_k_dense_replace", default=0) or 0), int(get("moe_layer_freq", default=1) or 1)
        return tuple(i for i in range(layers) if i >= first and i % freq == 0)
    if get("moe_layers"):
        return tuple(int(i) for i in get("moe_layers"))
    if get("interleave_moe_layer_step"):
        return tuple(range(int(get("interleave_moe_layer_step")) - 1, layers, int(get("interleave_moe_layer_step"))))
    only, step = set(get("mlp_only_layers", default=[]) or []), int(get("decoder_sparse_step", default=1) or 1)
    return tuple(i for i in range(layers) if i not in only and (i + 1) % step == 0)


def _shared_expert_size(get: Get, expert_inter: int, model_type: str) -> int:
    if get("n_shared_experts"):                              # DeepSeek: n copies fused into one MLP
        return int(get("n_shared_experts")) * expert_inter
    if get("shared_expert_intermediate_size"):               # Qwen2-MoE
        return int(get("shared_expert_intermediate_size"))
    return expert_inter if model_type.startswith("llama4") else 0   # Llama 4: one shared expert


def _feed_forward(get: Get, prefix: str, hidden: int, layers: int, model_type: str) -> list[Linear]:
    gated = model_type not in NOT_GATED
    inter = int(get("intermediate_size", "ffn_dim", "n_inner", default=0) or 4 * hidden)
    experts = int(get("num_local_experts", "n_routed_experts", "num_experts", default=0) or 0)
    if not experts:
        return _mlp(prefix + "mlp.", hidden, inter, tuple(range(layers)), gated)
    moe = _moe_layers(get, layers)
    dense = tuple(i for i in range(layers) if i not in moe)
    expert_inter = int(get("moe_intermediate_size", default=0) or inter)
    bias = model_type == "gpt_oss"
    m = prefix + "mlp."
    linears = _mlp(m, hidden, int(get("intermediate_size_mlp", default=0) or inter), dense, gated) if dense else []
    linears += _mlp(m + "experts.0.", hidden, expert_inter, moe, gated, experts, bias, expert=True)
    linears.append(Linear(m + "gate", experts, hidden, moe, bias=bias, router=True))
    shared = _shared_expert_size(get, expert_inter, model_type)
    if shared:
        linears += _mlp(m + "shared_expert.", hidden, shared, moe, gated)
    if get("shared_expert_intermediate_size"):
        linears.append(Linear(m + "shared_expert_gate", 1, hidden, moe, router=True))
    return linears


def _text_model(config: dict[str, Any], text: dict[str, Any], name: str) -> tuple[list[Linear], int]:
    """The language model's linears and its other parameters (embedding, norms, sinks)."""
    def get(*keys: str, default: Any = None) -> Any:
        return _get(config, text, *keys, default=default)
    if any(get(key) is not None for key in NOT_ATTENTION_KEYS) or any(
            kind not in ATTENTION_LAYER_TYPES for kind in get("layer_types", default=[]) or []):
        raise _unknown(name, "it has state-space or linear-attention layers the planner does not size")
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    multimodal = text is not config
    prefix = "language_model.model.layers.{i}." if multimodal else "model.layers.{i}."
    layers = int(get("num_hidden_layers", "n_layer", "num_layers"))
    hidden = int(get("hidden_size", "d_model", "n_embd"))
    vocab = int(get("vocab_size"))
    linears, other = _attention(get, prefix, hidden, tuple(range(layers)), model_type)
    linears += _feed_forward(get, prefix, hidden, layers, model_type)
    norms = 4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2
    other += vocab * hidden + (norms * layers + 1) * hidden
    if not get("tie_word_embeddings", default=model_type in TIED_BY_DEFAULT):
        linears.append(Linear("language_model.lm_head" if multimodal else "lm_head", vocab, hidden, section="head"))
    return linears, other


def _tower(vision: dict[str, Any]) -> tuple[int, int, int]:
    return int(vision["hidden_size"]), int(vision["num_hidden_layers"]), int(vision["intermediate_size"])


def _vit_vision(vision: dict[str, Any], model_type: str, text_hidden: int) -> tuple[list[Linear], int]:
    """SigLIP / CLIP towers (modeling_siglip.py, modeling_clip.py) and their projector: Gemma 3's
    mm_input_projection_weight + soft-embedding norm, PaliGemma's linear, LLaVA's two-layer MLP."""
    hidden, layers, inter = _tower(vision)
    patch, image, channels = int(vision["patch_size"]), int(vision["image_size"]), int(vision.get("num_channels", 3))
    clip = vision.get("model_type") == "clip_vision_model"
    ids, v = tuple(range(layers)), "vision_tower.vision_model.encoder.layers.{i}."
    linears = [Linear(v + "self_attn." + proj, hidden, hidden, ids, bias=True, section="vision")
               for proj in ("q_proj", "k_proj", "v_proj", "out_proj")]
    linears += [Linear(v + "mlp.fc1", inter, hidden, ids, bias=True, section="vision"),
                Linear(v + "mlp.fc2", hidden, inter, ids, bias=True, section="vision")]
    positions = (image // patch) ** 2 + (1 if clip else 0)
    other = hidden * (channels * patch * patch + 1) + positions * hidden + 4 * hidden * layers + 2 * hidden
    other += 3 * hidden if clip else 0                              # class embedding, pre-layernorm
    if vision.get("vision_use_head", vision.get("model_type") == "siglip_vision_model"):
        other += 4 * hidden * hidden + 2 * hidden * inter + 9 * hidden + inter   # attention-pooling head
    if model_type == "gemma3":
        return linears, other + hidden * text_hidden + hidden
    if model_type == "paligemma":
        projector = Linear("multi_modal_projector.linear", text_hidden, hidden, bias=True, section="vision")
        return linears + [projector], other
    return linears + _llava_projector(hidden, text_hidden, True), other


def _llava_projector(vision_hidden: int, text_hidden: int, bias: bool) -> list[Linear]:
    return [Linear("multi_modal_projector.linear_1", text_hidden, vision_hidden, bias=bias, section="vision"),
            Linear("multi_modal_projector.linear_2", text_hidden, text_hidden, bias=bias, section="vision")]


def _pixtral_vision(vision: dict[str, Any], config: dict[str, Any], text_hidden: int) -> tuple[list[Linear], int]:
    """Pixtral tower (modeling_pixtral.py: RMSNorms, SwiGLU, no biases) with Mistral 3's patch-merger
    projector (modeling_mistral3.py) or LLaVA's."""
    hidden, layers, inter = _tower(vision)
    patch, channels = int(vision["patch_size"]), int(vision.get("num_channels", 3))
    ids, v = tuple(range(layers)), "vision_tower.transformer.layers.{i}."
    linears = [Linear(v + "attention." + proj, hidden, hidden, ids, section="vision")
               for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [Linear(v + "feed_forward." + up, inter, hidden, ids, section="vision")
                for up in ("gate_proj", "up_proj")]
    linears.append(Linear(v + "feed_forward.down_proj", hidden, inter, ids, section="vision"))
    other = hidden * channels * patch * patch + hidden + 2 * hidden * layers
    if config.get("model_type") != "mistral3":
        return linears + _llava_projector(hidden, text_hidden, True), other
    merge = int(config.get("spatial_merge_size", 2))
    linears.append(Linear("multi_modal_projector.patch_merger.merging_layer", hidden, hidden * merge * merge,
                          section="vision"))
    projector = _llava_projector(hidden, text_hidden, bool(config.get("multimodal_projector_bias")))
    return linears + projector, other + hidden


def _qwen_vision(vision: dict[str, Any], text_hidden: int) -> tuple[list[Linear], int]:
    """Qwen2-VL (LayerNorm, fc1/fc2 of embed_dim x mlp_ratio) and Qwen2.5-VL (RMSNorm, SwiGLU of
    intermediate_size) towers and their patch merger (modeling_qwen2_vl.py, modeling_qwen2_5_vl.py)."""
    qwen2 = "embed_dim" in vision
    hidden = int(vision["embed_dim"] if qwen2 else vision["hidden_size"])
    out = int(vision.get("hidden_size", text_hidden) if qwen2 else vision.get("out_hidden_size", text_hidden))
    inter = int(hidden * vision.get("mlp_ratio", 4)) if qwen2 else int(vision["intermediate_size"])
    patch, merge = int(vision.get("patch_size", 14)), int(vision.get("spatial_merge_size", 2))
    channels = int(vision.get("in_chans", vision.get("in_channels", 3)))
    temporal = int(vision.get("temporal_patch_size", 2))
    ids, b = tuple(range(int(vision["depth"]))), "visual.blocks.{i}."
    linears = [Linear(b + "attn.qkv", 3 * hidden, hidden, ids, bias=True, section="vision"),
               Linear(b + "attn.proj", hidden, hidden, ids, bias=True, section="vision")]
    if qwen2:
        linears += [Linear(b + "mlp.fc1", inter, hidden, ids, bias=True, section="vision"),
                    Linear(b + "mlp.fc2", hidden, inter, ids, bias=True, section="vision")]
    else:
        linears += [Linear(b + "mlp." + up, inter, hidden, ids, bias=True, section="vision")
                    for up in ("gate_proj", "up_proj")]
        linears.append(Linear(b + "mlp.down_proj", hidden, inter, ids, bias=True, section="vision"))
    merged = hidden * merge * merge
    linears += [Linear("visual.merger.mlp.0", merged, merged, bias=True, section="vision"),
                Linear("visual.merger.mlp.2", out, merged, bias=True, section="vision")]
    norm = 2 * hidden if qwen2 else hidden
    return linears, hidden * channels * temporal * patch * patch + norm * (2 * len(ids) + 1)


def _llama4_vision(vision: dict[str, Any], text_hidden: int) -> tuple[list[Linear], int]:
    """Llama 4's tower, pixel-shuffle adapter and projector (modeling_llama4.py)."""
    hidden, layers, inter = _tower(vision)
    patch, image, channels = int(vision["patch_size"]), int(vision["image_size"]), int(vision.get("num_channels", 3))
    ids, v = tuple(range(layers)), "vision_model.model.layers.{i}."
    linears = [Linear(v + "self_attn." + proj, hidden, hidden, ids, bias=True, section="vision")
               for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [Linear(v + "mlp.fc1", inter, hidden, ids, bias=True, section="vision"),
                Linear(v + "mlp.fc2", hidden, inter, ids, bias=True, section="vision"),
                Linear("vision_model.patch_embedding.linear", hidden, channels * patch * patch, section="vision"),
                Linear("vision_model.vision_adapter.mlp.fc1", int(vision["projector_input_dim"]), inter,
                       section="vision"),
                Linear("vision_model.vision_adapter.mlp.fc2", int(vision["projector_output_dim"]),
                       int(vision["projector_output_dim"]), section="vision"),
                Linear("multi_modal_projector.linear_1", text_hidden, int(vision["vision_output_dim"]),
                       section="vision")]
    positions = (image // patch) ** 2 + 1
    return linears, hidden + positions * hidden + 4 * hidden + 4 * hidden * layers


def _vision_model(config: dict[str, Any], text_hidden: int, name: str) -> tuple[list[Linear], int]:
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        return [], 0
    model_type = str(config.get("model_type") or "")
    try:
        if model_type not in MULTIMODAL:
            raise KeyError(model_type)
        if "depth" in vision:
            return _qwen_vision(vision, text_hidden)
        if vision.get("model_type") == "pixtral":
            return _pixtral_vision(vision, config, text_hidden)
        if model_type == "llama4":
            return _llama4_vision(vision, text_hidden)
        return _vit_vision(vision, model_type, text_hidden)
    except KeyError:
        raise _unknown(name, "its vision encoder (%s, vision_config model_type %s) is not one the planner knows"
                       % (model_type or "?", vision.get("model_type", "?"))) from None


def _audio_model(config: dict[str, Any], text_hidden: int, name: str) -> tuple[list[Linear], int]:
    """Whisper-style audio encoders (Qwen2-Audio: modeling_qwen2_audio.py) and their linear projector."""
    audio = config.get("audio_config")
    if not isinstance(audio, dict):
        return [], 0
    if config.get("model_type") != "qwen2_audio" or not {"d_model", "encoder_layers", "encoder_ffn_dim"} <= set(audio):
        raise _unknown(name, "its audio encoder (%s) is not one the planner knows" % audio.get("model_type", "?"))
    width, ffn, ids = int(audio["d_model"]), int(audio["encoder_ffn_dim"]), tuple(range(int(audio["encoder_layers"])))
    a = "audio_tower.layers.{i}."
    linears = [Linear(a + "self_attn." + proj, width, width, ids, bias=proj != "k_proj", section="audio")
               for proj in ("q_proj", "k_proj", "v_proj", "out_proj")]
    linears += [Linear(a + "fc1", ffn, width, ids, bias=True, section="audio"),
                Linear(a + "fc2", width, ffn, ids, bias=True, section="audio"),
                Linear("multi_modal_projector.linear", text_hidden, width, bias=True, section="audio")]
    convs = width * int(audio.get("num_mel_bins", 128)) * 3 + width * width * 3 + 2 * width
    return linears, convs + int(audio.get("max_source_positions", 1500)) * width + 4 * width * len(ids) + 2 * width


# --- How each quantizer stores a linear layer -------------------------------------------------------

Pick = Callable[[Linear, str], Codec | None]       # (linear, module name) -> its codec, None: 16-bit


def _aliases(module: str) -> tuple[str, str, str]:
    """The module's name in both Hugging Face layouts (before and after transformers 4.52)."""
    return module, "model." + module, module.replace("language_model.model.", "model.language_model.")


def _matcher(patterns: Iterable[object] | None) -> Callable[[str], bool]:
    """One compiled test for a list of module patterns: compressed-tensors' `re:` patterns (re.match),
    transformers' modules_to_not_convert (a run of dotted name parts, `*` standing for one part), or
    an exact module name."""
    texts = [str(pattern) for pattern in patterns or () if pattern]
    regexes = [text[3:] for text in texts if text.startswith("re:")]
    names = [re.escape(text).replace(r"\*", r"[^.]+") for text in texts if not text.startswith("re:")]
    anchored = re.compile("|".join("(?:%s)" % regex for regex in regexes)) if regexes else None
    dotted = re.compile(r"(?:^|\.)(?:%s)(?:\.|$)" % "|".join(names)) if names else None

    def test(module: str) -> bool:
        return any((anchored and anchored.match(alias)) or (dotted and dotted.search(alias))
                   for alias in _aliases(module))
    return test


def _groups(cols: int, group: int) -> int:
    return -(-cols // group) if group and group > 0 else 1


def _gptq_codec(bits: int, group: int) -> Codec:
    # AutoGPTQ / GPTQModel QuantLinear, as vLLM's gptq.py loads it: qweight int32 [cols*bits/32, rows],
    # qzeros int32 [groups, rows*bits/32], scales fp16 [groups, rows], g_idx int32 [cols]; g_idx is
    # written whether desc_act is set or not (desc_act only reorders it).
    return lambda rows, cols: rows * cols * bits / 8 + _groups(cols, group) * rows * (bits / 8 + 2) + 4 * cols


def _awq_codec(bits: int, group: int, zero_point: bool) -> Codec:
    # AutoAWQ WQLinear_GEMM, as vLLM's awq.py loads it: qweight int32 [cols, rows*bits/32],
    # scales fp16 [groups, rows], qzeros int32 [groups, rows*bits/32] when zero_point.
    per_group = 2 + (bits / 8 if zero_point else 0)
    return lambda rows, cols: rows * cols * bits / 8 + _groups(cols, group) * rows * per_group


def _gptq(quant: dict[str, Any], name: str) -> Pick:
    codec = _gptq_codec(int(quant.get("bits", 4)), int(quant.get("group_size", 128) or -1))
    inside = [module for block in quant.get("modules_in_block_to_quantize") or [] for module in block]
    skipped = _matcher(quant.get("modules_to_not_convert"))

    def pick(linear: Linear, module: str) -> Codec | None:
        if linear.section == "head":              # GPTQModel's lm_head=True quantizes the head too
            return codec if quant.get("lm_head") else None
        if linear.section != "text" or linear.router or skipped(module):
            return None
        return codec if not inside or any(module.endswith("." + m) for m in inside) else None
    return pick


def _awq(quant: dict[str, Any], name: str) -> Pick:
    bits = int(quant.get("bits", quant.get("w_bit", 4)))
    group = int(quant.get("group_size", quant.get("q_group_size", 128)))
    codec = _awq_codec(bits, group, bool(quant.get("zero_point", True)))
    skipped = _matcher(quant.get("modules_to_not_convert"))
    # AutoAWQ quantizes the decoder layers' linears only: not the head, the routers or an encoder.
    return lambda linear, module: None if (linear.section != "text" or linear.router or skipped(module)) else codec


def _fp8(quant: dict[str, Any], name: str) -> Pick:
    # vLLM Fp8Config / transformers FineGrainedFP8: weight float8_e4m3 [rows, cols] with, for
    # weight_block_size [bn, bk], weight_scale_inv fp32 [rows/bn, cols/bk]; else one fp32 weight_scale
    # (and an input_scale when activation_scheme is static). The head and routers stay 16-bit.
    block = quant.get("weight_block_size")
    if block:
        def codec(rows: int, cols: int) -> float:
            return rows * cols + 4 * -(-rows // int(block[0])) * -(-cols // int(block[1]))
    else:
        def codec(rows: int, cols: int) -> float:
            return rows * cols + (8 if quant.get("activation_scheme") == "static" else 4)
    skipped = _matcher((quant.get("modules_to_not_convert") or []) + (quant.get("ignored_layers") or []))
    return lambda linear, module: None if (linear.section == "head" or linear.router or skipped(module)) else codec


def _mxfp4(quant: dict[str, Any], name: str) -> Pick:
    # gpt-oss (transformers integrations/mxfp4.py, vLLM mxfp4.py): only the MoE experts; *_blocks
    # uint8 [.., cols/32, 16] holding two E2M1 values a byte, *_scales uint8 [.., cols/32], one
    # E8M0 exponent per 32 values. Attention, router, embedding and head stay bf16.
    def codec(rows: int, cols: int) -> float:
        return rows * cols / 2 + rows * -(-cols // 32)
    return lambda linear, module: codec if linear.expert else None


def _bitsandbytes(quant: dict[str, Any], name: str) -> Pick:
    # transformers' bnb serialization. 4-bit (nf4/fp4): weight uint8 [rows*cols/2, 1] with an absmax
    # per 64 values, fp32, or with double quant uint8 plus an fp32 absmax per 256 of those and a
    # 256-entry fp32 code book, a 16-entry fp32 quant_map and a packed quant_state (~100 bytes).
    # 8-bit: weight int8 [rows, cols] and SCB fp32 [rows].
    if quant.get("load_in_4bit"):
        double = bool(quant.get("bnb_4bit_use_double_quant"))

        def codec(rows: int, cols: int) -> float:
            blocks = -(-rows * cols // 64)
            absmax = blocks + 4 * -(-blocks // 256) + 1024 if double else 4 * blocks
            return rows * cols / 2 + absmax + 64 + 100
    elif quant.get("load_in_8bit"):
        def codec(rows: int, cols: int) -> float:
            return rows * cols + 4 * rows
    else:
        raise _unknown(name, "bitsandbytes quantization with neither load_in_4bit nor load_in_8bit")
    # Every nn.Linear is replaced but llm_int8_skip_modules; without that list, all but the LM head.
    if quant.get("llm_int8_skip_modules") is None:
        return lambda linear, module: None if linear.section == "head" else codec
    skipped = _matcher(quant.get("llm_int8_skip_modules"))
    return lambda linear, module: None if skipped(module) else codec


def _ct_scales(weights: dict[str, Any], rows: int, cols: int) -> int:
    strategy = weights.get("strategy") or "tensor"
    if strategy == "channel":
        return rows
    if strategy in ("group", "tensor_group"):
        return rows * _groups(cols, int(weights.get("group_size") or 0))
    if strategy == "block":
        block = weights.get("block_structure") or [128, 128]
        return -(-rows // int(block[0])) * -(-cols // int(block[1]))
    return 1


def _ct_codec(weights: dict[str, Any], fmt: str | None, name: str) -> Codec:
    # compressed-tensors (vLLM compressed_tensors/, llm-compressor output). pack-quantized: int32-packed
    # weight_packed [rows, cols*bits/32], 16-bit weight_scale per channel/group, weight_shape int64[2],
    # packed zero points when asymmetric. float-/int-/naive-quantized: one byte a value (fp8 or int8),
    # 16-bit scales per channel/group/block, fp32 per tensor. nvfp4-pack-quantized: two values a byte,
    # one fp8 scale per 16 values, an fp32 global scale.
    bits, symmetric = int(weights.get("num_bits", 8)), weights.get("symmetric", True) is not False
    scale = 4 if (weights.get("strategy") or "tensor") == "tensor" else 2
    if fmt == "pack-quantized":
        return lambda rows, cols: (rows * -(-cols * bits // 32) * 4 + 16
                                   + _ct_scales(weights, rows, cols) * (2 + (0 if symmetric else bits / 8)))
    if fmt in ("float-quantized", "int-quantized", "naive-quantized") and bits <= 8:
        return lambda rows, cols: rows * cols + _ct_scales(weights, rows, cols) * (scale + (0 if symmetric else 1))
    if fmt == "nvfp4-pack-quantized":
        return lambda rows, cols: rows * cols / 2 + _ct_scales(weights, rows, cols) + 4
    raise _unknown(name, "compressed-tensors format %r (%d-bit %s weights) is not one the planner understands"
                   % (fmt, bits, weights.get("type", "?")))


def _compressed_tensors(quant: dict[str, Any], name: str) -> Pick:
    sparsity = quant.get("sparsity_config") or {}
    if sparsity.get("format", "dense") not in ("dense", None):
        raise _unknown(name, "compressed-tensors sparsity format %r is not one the planner understands"
                       % sparsity.get("format"))
    schemes: list[tuple[bool, Callable[[str], bool], Codec]] = []   # (targets every linear, target test, codec)
    for group in (quant.get("config_groups") or {}).values():
        if group.get("weights"):
            targets = group.get("targets") or ["Linear"]   # "Linear" targets every nn.Linear, else by name
            schemes.append(("Linear" in targets, _matcher(targets),
                            _ct_codec(group["weights"], group.get("format") or quant.get("format"), name)))
    if not schemes:
        raise _unknown(name, "compressed-tensors config without quantized weights in config_groups")
    ignored = _matcher(quant.get("ignore"))

    def pick(linear: Linear, module: str) -> Codec | None:
        if ignored(module):
            return None
        return next((codec for every, targeted, codec in schemes if every or targeted(module)), None)
    return pick


QUANTIZERS: dict[str, Callable[[dict[str, Any], str], Pick]] = {
    "gptq": _gptq, "awq": _awq, "fp8": _fp8, "mxfp4": _mxfp4, "bitsandbytes": _bitsandbytes,
    "compressed-tensors": _compressed_tensors}


def _quantizer(config: dict[str, Any], text: dict[str, Any], name: str) -> Pick:
    quant = config.get("quantization_config") or text.get("quantization_config") or {}
    if not quant and isinstance(config.get("quantization") or text.get("quantization"), dict):
        raise _unknown(name, "its `quantization` block (MLX-style, no quantization_config) is not one vLLM loads")
    if not isinstance(quant, dict) or not quant:
        return lambda linear, module: None
    method = str(quant.get("quant_method") or "").lower()
    if not method and (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        method = "bitsandbytes"
    if method not in QUANTIZERS:
        raise _unknown(name, "quantization %r is not one the planner understands (it knows %s)"
                       % (method or quant.get("format", "?"), ", ".join(sorted(QUANTIZERS))))
    return QUANTIZERS[method](quant, name)


def _linear_bytes(linear: Linear, pick: Pick, copies: float | None = None) -> float:
    """One listed linear in every layer it is in, as its quantizer stores it (bias 16-bit)."""
    copies = linear.copies if copies is None else copies
    total = 2.0 * linear.rows * copies * len(linear.layers) if linear.bias else 0.0
    for layer in linear.layers:
        codec = pick(linear, linear.name.format(i=layer))
        total += copies * (codec(linear.rows, linear.cols) if codec else 2 * linear.rows * linear.cols)
    return total


def estimate_weights_bytes(config: dict[str, Any], name: str = "model") -> int:
    """Checkpoint bytes from config.json: the language model, its vision/audio encoders and
    projectors, each linear layer as its quantizer stores it. PlanError when not understood."""
    text_config = config.get("text_config")
    text: dict[str, Any] = text_config if isinstance(text_config, dict) else config
    pick = _quantizer(config, text, name)
    linears, other = _text_model(config, text, name)
    hidden = int(_get(config, text, "hidden_size", "d_model", "n_embd"))
    for encoder in (_vision_model(config, hidden, name), _audio_model(config, hidden, name)):
        linears, other = linears + encoder[0], other + encoder[1]
    return int(2.0 * other + sum(_linear_bytes(linear, pick) for linear in linears))


def estimate_decode_read_bytes(config: dict[str, Any], name: str = "model") -> tuple[int, int]:
    """Bytes one decoded token reads, as (decoder layers, LM head), before tensor parallelism:
    every linear of the language model as stored, the routed experts at their active share
    (num_experts_per_tok of num_experts), and the head (the tied embedding matrix when tied).
    Not read: the input embedding (one row per token) and the vision/audio encoders (run at
    prefill only). PlanError when the checkpoint is not understood."""
    text_config = config.get("text_config")
    text: dict[str, Any] = text_config if isinstance(text_config, dict) else config
    pick = _quantizer(config, text, name)
    linears, _ = _text_model(config, text, name)
    active = int(_get(config, text, "num_experts_per_tok", "moe_topk", default=0) or 0)
    layers = head = 0.0
    for linear in linears:
        copies = min(active, linear.copies) if linear.expert and active else linear.copies
        if linear.section == "head":
            head += _linear_bytes(linear, pick, copies)
        else:
            layers += _linear_bytes(linear, pick, copies)
    if not any(linear.section == "head" for linear in linears):
        head = 2.0 * int(_get(config, text, "vocab_size")) * int(_get(config, text, "hidden_size", "d_model", "n_embd"))
    return int(layers), int(head)
