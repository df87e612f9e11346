"""Speculative decoding as a catalog option: what vLLM is told, what it costs in memory, and what
it may gain, stated as the range published measurements found (never added to the speed plan).

A served model asks for it with `speculative:` in its catalog entry:

    speculative: {method: ngram}                       # prompt lookup: no model, no GPU memory
    speculative: {method: eagle3, model: qwen-eagle3}  # a catalog entry with profile: draft
    speculative: {method: draft_model, model: qwen-0.5b, num_speculative_tokens: 3}

Draft and EAGLE models are catalog entries of their own with `profile: draft`: the model store
keeps their weights on the hosts of the models that use them, and no engine serves them.

vLLM 0.32 (config/speculative.py, SpeculativeConfig): the draft runs with the target's
tensor-parallel size unless told otherwise (_verify_and_get_draft_tp), and its attention layers
take their KV cache from the target's pool (v1/worker/gpu_model_runner.py, get_kv_cache_spec walks
every attention layer, the drafter's too). N-gram lookup runs on the CPU over the request's tokens.
"""
import json
from dataclasses import dataclass
from typing import Any

from llm_appliance.plan.config import FULL, ModelShape, parse_config
from llm_appliance.plan.errors import PlanError

DRAFT_PROFILE = "draft"

# vLLM's defaults are 5/5 for prompt_lookup_min/max (SpeculativeConfig.__post_init__); its docs'
# example, which this follows, matches n-grams of up to 4 tokens and proposes 5.
NGRAM_DEFAULTS = {"num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
DRAFT_DEFAULT_TOKENS = {"draft_model": 3, "eagle": 3, "eagle3": 3}
METHODS = ("ngram", "draft_model", "eagle", "eagle3")
FIELDS = {"method", "model", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}

# Held back from the KV cache for a draft model: its CUDA graphs and its share of the profile
# run's activations are not measured here (no vLLM start-up log with a draft was found to fit
# them), so the plan under-predicts the pool by this much rather than over-predict it.
DRAFT_UNMEASURED_GIB = 0.5

# What published measurements found with vLLM. A range, because the gain depends on how often the
# draft is right, which depends on the traffic; at high load every method can cost more than it saves.
EXPECTED_EFFECT = {
    "ngram": ("up to 2.8x tokens/s per stream at low load where outputs repeat the prompt (summaries, code "
              "edits), about 1x on open-ended chat",
              "https://blog.vllm.ai/2024/10/17/spec-decode.html"),
    "draft_model": ("up to 1.5x tokens/s per stream at low load for a same-family draft",
                    "https://blog.vllm.ai/2024/10/17/spec-decode.html"),
    "eagle": ("1.3-1.7x tokens/s per stream at one request at a time (Llama-3.1-8B, H100: 1.27-1.51x with 2-7 "
              "tokens per step; 1.65x in issue #20780)",
              "https://github.com/vllm-project/vllm/pull/16937"),
    "eagle3": ("1.6-1.8x tokens/s per stream at one request at a time (Llama-3.1-8B, H100: 1.65x; 1.75x in "
               "issue #20780)",
               "https://github.com/vllm-project/vllm/pull/16937"),
}


@dataclass
class Speculation:
    """A served model's speculative decoding: vLLM's settings and, for draft methods, the draft."""
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 0
    prompt_lookup_max: int = 0
    draft: str = ""                       # the draft's catalog name
    draft_shape: ModelShape | None = None
    draft_weights_bytes: float | None = None

    def vllm_config(self) -> dict[str, Any]:
        """--speculative-config; `model` is the draft's catalog name until the host's path replaces it."""
        config: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
        if self.method == "ngram":
            config.update(prompt_lookup_max=self.prompt_lookup_max, prompt_lookup_min=self.prompt_lookup_min)
        else:
            config["model"] = self.draft
        return config

    def record(self) -> dict[str, Any]:
        """The plan's summary: the settings, the draft, and the published effect with its source."""
        effect, source = EXPECTED_EFFECT[self.method]
        return dict(self.vllm_config(), draft=self.draft or None, expected_effect=effect, source=source)


def _whole(value: object, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError("model %s: speculative.%s must be a whole number of 1 or more, not %r" % (name, what, value))
    return value


def read_speculation(entry: dict[str, Any], drafts: dict[str, dict[str, Any]]) -> Speculation | None:
    """The entry's `speculative:` checked against vLLM's rules and the catalog's drafts, or None."""
    name, spec = entry["name"], entry.get("speculative")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise PlanError("model %s: speculative must be a mapping such as {method: ngram}, not %r" % (name, spec))
    unknown = sorted(set(spec) - FIELDS)
    if unknown:
        raise PlanError("model %s: speculative has unknown field%s %s (known: %s)" % (
            name, "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(FIELDS))))
    method = spec.get("method")
    if method not in METHODS:
        raise PlanError("model %s: speculative.method must be one of %s, not %r" % (name, ", ".join(METHODS), method))
    if method == "ngram":
        if spec.get("model"):
            raise PlanError("model %s: speculative method ngram looks tokens up in the prompt and takes no model; "
                            "remove speculative.model or choose draft_model, eagle or eagle3" % name)
        values = {key: _whole(spec.get(key, default), key, name) for key, default in NGRAM_DEFAULTS.items()}
        if values["prompt_lookup_min"] > values["prompt_lookup_max"]:
            raise PlanError("model %s: speculative.prompt_lookup_min (%d) must not exceed prompt_lookup_max (%d)"
                            % (name, values["prompt_lookup_min"], values["prompt_lookup_max"]))
        return Speculation(method, values["num_speculative_tokens"], prompt_lookup_min=values["prompt_lookup_min"],
                           prompt_lookup_max=values["prompt_lookup_max"])
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        if key in spec:
            raise PlanError("model %s: speculative.%s is for method ngram, not %s" % (name, key, method))
    draft_name = spec.get("model")
    draft = drafts.get(draft_name) if isinstance(draft_name, str) else None
    if draft is None:
        raise PlanError("model %s: speculative method %s needs `model`: the name of a catalog entry with profile "
                        "draft and state present (drafts in the catalog: %s)"
                        % (name, method, ", ".join(sorted(drafts)) or "none"))
    return Speculation(method, _whole(spec.get("num_speculative_tokens", DRAFT_DEFAULT_TOKENS[method]),
                                      "num_speculative_tokens", name),
                       draft=draft["name"], draft_shape=parse_config(draft["config"], draft["name"]),
                       draft_weights_bytes=draft.get("weights_bytes"))


@dataclass
class DraftLoad:
    """What a draft adds on each GPU of its target: weights, KV bytes per token, a margin."""
    weights_bytes: float
    kv_bytes_per_token: int
    unmeasured_gib: float


def draft_load(speculation: Speculation | None, target: ModelShape, tensor_parallel_size: int,
               kv_dtype_bytes: int, name: str) -> DraftLoad | None:
    """The draft's share of each GPU at the target's tensor-parallel size (vLLM's default for it);
    None for n-gram lookup, which uses no GPU memory."""
    if speculation is None or speculation.draft_shape is None:
        return None
    if target.layer_kinds and any(kind != FULL for kind in target.layer_kinds):
        raise PlanError("model %s: the planner counts a draft's KV cache for full-attention models only, and %s "
                        "has sliding-window or chunked layers; use speculative method ngram, or plan without it"
                        % (name, target.architecture))
    shape = speculation.draft_shape
    weights = speculation.draft_weights_bytes or shape.checkpoint_bytes()
    per_layer = shape.kv_bytes_per_token_per_layer(tensor_parallel_size, kv_dtype_bytes)
    return DraftLoad(weights_bytes=weights / tensor_parallel_size, kv_bytes_per_token=per_layer * shape.layers,
                     unmeasured_gib=DRAFT_UNMEASURED_GIB)


def speculative_argument(speculation: Speculation) -> list[str]:
    """vLLM's flag and its JSON, compact and in a stable order (the unit changes only when it does)."""
    return ["--speculative-config", json.dumps(speculation.vllm_config(), sort_keys=True, separators=(",", ":"))]


def with_draft_path(args: list[str], draft_paths: dict[str, str]) -> list[str]:
    """The rendered arguments with the draft's catalog name replaced by its path on the host."""
    result = list(args)
    for position, arg in enumerate(result[:-1]):
        if arg != "--speculative-config":
            continue
        config = json.loads(result[position + 1])
        if "model" in config:
            if config["model"] not in draft_paths:
                raise PlanError("draft model %s is planned but not stored on the host" % config["model"])
            config["model"] = draft_paths[config["model"]]
            result[position + 1] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return result
