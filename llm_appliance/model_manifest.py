"""SHA-256 manifests of model directories: made on the controller, checked on the host.

The controller hashes each file once (a cache keyed by size and modification time keeps
re-runs cheap for 60 GiB models). The host checks its copy against that manifest and
leaves a stamp, so that an unchanged copy is not hashed again on the next run.
"""
import hashlib
import json
import os
import tempfile

from llm_appliance.model_dir import inspect_model_dir

MANIFEST_NAME = ".llm-appliance-manifest.json"
STAMP_NAME = ".llm-appliance-verified"
CHUNK = 8 * 1024 * 1024


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def make_manifest(model_path, model_name="model", cache_dir=None, trust_pickle=False, known_sha256=None):
    """Inspect the model directory and return {"files": [{"path", "size", "sha256"}], ...}.
    Untrusted pickle files are not in it (the copy leaves them out). known_sha256: digests the
    caller has just checked ({path: sha256}), so those files are not read again."""
    info = inspect_model_dir(model_path, model_name, trust_pickle)
    cache, cache_file, cached_before = {}, None, {}
    if cache_dir:
        key = hashlib.sha256(info["path"].encode()).hexdigest()[:32]
        cache_file = os.path.join(cache_dir, key + ".json")
        try:
            with open(cache_file, encoding="utf-8") as handle:
                cache = json.load(handle)
            cached_before = dict(cache)
        except (OSError, ValueError):
            cache = {}
    files = []
    for entry in info["files"]:
        full = os.path.join(info["path"], entry["path"])
        fingerprint = _fingerprint(full)
        cached = cache.get(entry["path"])
        if known_sha256 and entry["path"] in known_sha256:
            digest = known_sha256[entry["path"]]
        elif cached and cached["fingerprint"] == fingerprint:
            digest = cached["sha256"]
        else:
            digest = sha256_file(full)
        cache[entry["path"]] = {"fingerprint": fingerprint, "sha256": digest}
        files.append({"path": entry["path"], "size": entry["size"], "sha256": digest})
    if cache_file and cache != cached_before:
        # Hosts of one play (forks) may write the same model's cache at once: each writes a file of
        # its own and renames it over the cache, the last one whole.
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=cache_dir, suffix=".tmp",
                                         delete=False) as handle:
            json.dump(cache, handle)
        os.replace(handle.name, cache_file)
    manifest = {
        "model": model_name,
        "files": files,
        "weights_bytes": info["weights_bytes"],
        "total_bytes": info["total_bytes"],
    }
    if trust_pickle:
        # The host's check then accepts pickle weights too; absent, they are refused there as well.
        manifest["trust_pickle"] = True
    return manifest


def verify_copy(model_path, manifest, model_name="model"):
    """Check the copy at model_path against the manifest; return "verified" or "unchanged".

    Raises ValueError naming the model and the first file that differs.
    """
    model_path = os.path.abspath(model_path)
    manifest_digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    state = {"manifest": manifest_digest,
             "files": {f["path"]: _fingerprint(os.path.join(model_path, f["path"]))
                       for f in manifest["files"] if os.path.exists(os.path.join(model_path, f["path"]))}}
    stamp_path = os.path.join(model_path, STAMP_NAME)
    try:
        with open(stamp_path, encoding="utf-8") as handle:
            if json.load(handle) == state:
                return "unchanged"
    except (OSError, ValueError):
        pass
    for entry in manifest["files"]:
        full = os.path.join(model_path, entry["path"])
        if not os.path.exists(full):
            raise ValueError("model %s: %s is missing from the copy" % (model_name, full))
        size = os.path.getsize(full)
        if size != entry["size"]:
            raise ValueError("model %s: %s has %d bytes, the controller's copy %d"
                             % (model_name, full, size, entry["size"]))
        if sha256_file(full) != entry["sha256"]:
            raise ValueError("model %s: %s differs from the controller's copy (sha256 mismatch)" % (model_name, full))
    inspect_model_dir(model_path, model_name, bool(manifest.get("trust_pickle")))
    with open(stamp_path, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
    return "verified"
