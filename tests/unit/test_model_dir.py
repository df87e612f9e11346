"""The model directory check, on the tiny model the tests serve and on broken copies of it."""
import hashlib
import json
import shutil

import pytest

from llm_appliance.model_dir import ModelDirError, inspect_model_dir
from tests.fixtures.make_tiny_model import make_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture()
def model_copy(tiny_model, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_model, target)
    return target


def test_maker_is_deterministic(tiny_model, tmp_path):
    again = make_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert hashlib.sha256((tiny_model / name).read_bytes()).digest() == \
            hashlib.sha256((again / name).read_bytes()).digest(), name


def test_hybrid_maker_is_deterministic_and_sliding(tmp_path):
    first = make_model(tmp_path / "first", seed=0, kind="hybrid")
    again = make_model(tmp_path / "again", seed=0, kind="hybrid")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert hashlib.sha256((first / name).read_bytes()).digest() == \
            hashlib.sha256((again / name).read_bytes()).digest(), name
    info = inspect_model_dir(first, "tiny-hybrid")
    config = info["config"]
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert (config["sliding_window"], config["num_key_value_heads"], config["head_dim"]) == (128, 2, 64)
    weight_map = json.loads((first / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" not in weight_map   # tied to the embedding, as in Gemma 3


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of llama, hybrid"):
        make_model(tmp_path / "m", kind="mamba")


def test_tiny_model_shape(tiny_model):
    info = inspect_model_dir(tiny_model, "tiny-llama")
    config = info["config"]
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]) == (2, 2, 64)
    # 2 layers x 2 KV heads x 64 x 2 (K, V) x 2 bytes: the figure vLLM's CPU engine divides its cache by.
    kv_bytes_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2
    assert kv_bytes_per_token == 1024
    index = json.loads((tiny_model / "model.safetensors.index.json").read_text())
    assert info["weights_bytes"] == (tiny_model / "model.safetensors").stat().st_size
    assert index["metadata"]["total_size"] + 8 < info["weights_bytes"]
    assert {f["path"] for f in info["files"]} >= {"config.json", "tokenizer.json", "model.safetensors"}


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match=r"model qwen: directory .*/nowhere does not exist"):
        inspect_model_dir(tmp_path / "nowhere", "qwen")


def test_unreadable_config(model_copy):
    (model_copy / "config.json").write_text("{ not json")
    with pytest.raises(ModelDirError, match=r"model m: .*/config.json is unreadable"):
        inspect_model_dir(model_copy, "m")


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelDirError, match=r"model m: .*/config.json is missing"):
        inspect_model_dir(model_copy, "m")


def test_truncated_weights(model_copy):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelDirError, match=r"model m: weight file .*/model.safetensors is incomplete: %d bytes of %d"
                       % (len(data) - 1000, len(data))):
        inspect_model_dir(model_copy, "m")


def test_weight_file_named_by_index_missing(model_copy):
    index_path = model_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelDirError, match=r"weight file .*/model-00002-of-00002.safetensors is missing"):
        inspect_model_dir(model_copy, "m")


def test_pickle_files_beside_safetensors_are_left_out_unless_trusted(model_copy):
    (model_copy / "pytorch_model.bin").write_bytes(b"\x80\x04not-for-loading")
    (model_copy / "training_args.bin").write_bytes(b"\x80\x04")
    info = inspect_model_dir(str(model_copy), "tiny")
    assert info["pickle_left_out"] == ["pytorch_model.bin", "training_args.bin"]
    assert not any(f["path"].endswith(".bin") for f in info["files"])
    trusted = inspect_model_dir(str(model_copy), "tiny", trust_pickle=True)
    assert trusted["pickle_left_out"] == []
    assert {"pytorch_model.bin", "training_args.bin"} <= {f["path"] for f in trusted["files"]}


def test_a_model_with_only_pickle_weights_is_refused_unless_trusted(model_copy):
    for weights in model_copy.glob("*.safetensors*"):
        weights.unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"\x80\x04weights")
    with pytest.raises(ModelDirError, match="only weights .* are pickle files .*trust_pickle: true"):
        inspect_model_dir(str(model_copy), "tiny")
    info = inspect_model_dir(str(model_copy), "tiny", trust_pickle=True)
    assert info["weights_bytes"] == len(b"\x80\x04weights")
