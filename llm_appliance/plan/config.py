"""A model's shape, read from its Hugging Face config.json: what vLLM's memory arithmetic needs."""
from dataclasses import dataclass, field

from llm_appliance.plan.errors import PlanError

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}

FULL, SLIDING, CHUNKED = "full", "sliding", "chunked"


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
    layer_kinds: list = field(default_factory=list)
    sliding_window: int = 0
    chunk_size: int = 0
    use_mla: bool = False
    mla_head_size: int = 0
    checkpoint_quantization: str = ""
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    tied_embeddings: bool = False

    @property
    def params_estimate(self):
        """Parameter count from the shape, for when no checkpoint size is known."""
        attention = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        if self.experts:
            mlp = self.experts * 3 * self.hidden * (self.expert_intermediate or self.intermediate)
        else:
            mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp + 2 * self.hidden) + embeddings

    def active_params_estimate(self):
        """Parameters read per decoded token (MoE reads only the routed experts)."""
        if not self.experts:
            return self.params_estimate
        attention = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        mlp = (self.experts_per_token or 1) * 3 * self.hidden * (self.expert_intermediate or self.intermediate)
        return self.layers * (attention + mlp) + self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


def _get(config, text, *names, default=None):
    for name in names:
        for source in (text, config):
            if isinstance(source, dict) and source.get(name) is not None:
                return source[name]
    return default


def _layer_kinds(config, text, layers, model_type):
    layer_types = _get(config, text, "layer_types")
    if layer_types:
        kinds = []
        for kind in layer_types:
            if kind in ("sliding_attention", "sliding"):
                kinds.append(SLIDING)
            elif kind in ("chunked_attention", "chunked_local_attention"):
                kinds.append(CHUNKED)
            else:
                kinds.append(FULL)
        return kinds
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


def parse_config(config, name="model"):
    """Return the ModelShape of a config.json dict; PlanError naming the missing field otherwise."""
    if not isinstance(config, dict):
        raise PlanError("model %s: config.json is not a JSON object" % name)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
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
        tied_embeddings=bool(_get(config, text, "tie_word_embeddings", default=False)),
    )
    shape.layer_kinds = _layer_kinds(config, text, layers, model_type)
    return shape
