"""Checks a Hugging Face model directory before it is copied or served.

A directory is servable when its config.json parses, and every weight file that the
safetensors index names is present and whole: a safetensors file's size must equal its
8-byte header length, the header and the end of its last tensor. An interrupted copy or a
half-downloaded shard fails that test, naming the file, before any unit is touched.

Pickle files (PyTorch's .bin, .pt) run code when they are loaded. They are weights only for a
catalog entry that says `trust_pickle: true`; otherwise they are left out of the copy, and a
model whose only weights they are is refused.
"""
import json
import os
import struct

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def is_pickle(relative_path):
    return relative_path.lower().endswith(PICKLE_SUFFIXES)


class ModelDirError(ValueError):
    """A model directory that cannot be served; the message names the model and the file."""


def _safetensors_expected_size(path):
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelDirError("%s is truncated: %d bytes, not even a safetensors header" % (path, len(prefix)))
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > 100 * 1024 * 1024:
            raise ModelDirError("%s is not a safetensors file (header length %d)" % (path, header_length))
        raw = handle.read(header_length)
    if len(raw) < header_length:
        raise ModelDirError("%s is truncated inside its header" % path)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ModelDirError("%s has an unreadable safetensors header: %s" % (path, exc)) from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    return 8 + header_length + end


def inspect_model_dir(path, model_name="model", trust_pickle=False):
    """Return what the store and the planner need to know of a model directory.

    {"path", "config", "files": [{"path", "size"}], "weights_bytes", "total_bytes",
     "pickle_left_out": [paths]}; untrusted pickle files are not in "files".
    Raises ModelDirError naming the model and the offending file.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ModelDirError("model %s: directory %s does not exist" % (model_name, path))
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise ModelDirError("model %s: %s is missing" % (model_name, config_path)) from None
    except (OSError, ValueError) as exc:
        raise ModelDirError("model %s: %s is unreadable: %s" % (model_name, config_path, exc)) from None
    if not isinstance(config, dict):
        raise ModelDirError("model %s: %s does not hold a JSON object" % (model_name, config_path))

    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".llm-appliance"):
                continue
            full = os.path.join(root, name)
            files.append({"path": os.path.relpath(full, path), "size": os.path.getsize(full)})
    pickle_left_out = [] if trust_pickle else [entry["path"] for entry in files if is_pickle(entry["path"])]
    files = [entry for entry in files if entry["path"] not in pickle_left_out]
    present = {entry["path"]: entry["size"] for entry in files}

    index_path = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as handle:
                weight_files = sorted(set(json.load(handle)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ModelDirError("model %s: %s is unreadable: %s" % (model_name, index_path, exc)) from None
    else:
        weight_files = sorted(p for p in present if p.endswith(WEIGHT_SUFFIXES))
        if not weight_files and trust_pickle:
            weight_files = sorted(p for p in present if is_pickle(p))
    if not weight_files and pickle_left_out:
        raise ModelDirError(
            "model %s: its only weights in %s are pickle files (%s), which run code when loaded; convert them "
            "to safetensors, or set trust_pickle: true in its catalog entry if you trust where they come from"
            % (model_name, path, ", ".join(sorted(pickle_left_out)[:3])))
    if not weight_files:
        raise ModelDirError("model %s: no weight files (*.safetensors) in %s" % (model_name, path))

    weights_bytes = 0
    for relative in weight_files:
        full = os.path.join(path, relative)
        if relative not in present:
            raise ModelDirError("model %s: weight file %s is missing (named by %s)" % (model_name, full, index_path))
        if relative.endswith(".safetensors"):
            expected = _safetensors_expected_size(full)
            if present[relative] != expected:
                raise ModelDirError("model %s: weight file %s is incomplete: %d bytes of %d"
                                    % (model_name, full, present[relative], expected))
        weights_bytes += present[relative]

    return {
        "path": path,
        "config": config,
        "files": files,
        "weights_bytes": weights_bytes,
        "total_bytes": sum(present.values()),
        "pickle_left_out": sorted(pickle_left_out),
    }
