"""Fetch a model from a Hugging Face-compatible mirror at a pinned commit, each file checked
against the checksum the mirror publishes for that commit.

    llm-appliance-model-fetch --endpoint URL --repo OWNER/NAME --revision COMMIT --dest DIR [--trust-pickle]

The mirror's metadata for the commit (GET /api/models/REPO/revision/COMMIT?blobs=true) lists every
file with its checksum: SHA-256 for files stored in LFS (the weights), the git blob id (SHA-1 of
"blob SIZE\\0" and the content) for the rest. A file is downloaded to a partial name, checked, and
only then moved into place; a file already in place is checked again before it is kept. A file the
mirror gives no checksum for, a checksum that differs, or metadata for another commit stops the
fetch, naming the file, and nothing more is written. At the end the directory gets the appliance's
SHA-256 manifest (so the store's check covers it like a copy from the controller) and the mark
that the fetch is complete.

Pickle files (.bin, .pt, ...) run code when loaded: they are skipped unless --trust-pickle, and a
model whose only weights they are is refused. The mirror's token, if it needs one, comes from the
environment (HF_TOKEN), never the command line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from llm_appliance.model_dir import WEIGHT_SUFFIXES, ModelDirError, is_pickle
from llm_appliance.model_manifest import CHUNK, MANIFEST_NAME, make_manifest, sha256_file

FETCHED_MARK = ".llm-appliance-fetched"
PARTIAL_DIR = ".llm-appliance-partial"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
TIMEOUT_S = 60


class FetchError(RuntimeError):
    """The fetch cannot go on; the message names the model and the file or the field."""


def _get(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - the site's own mirror URL


def revision_files(endpoint: str, repo: str, revision: str, token: str | None = None) -> list[dict[str, Any]]:
    """The files of the commit with their checksums: [{"path", "size", "sha256"| "git_sha1"}]."""
    url = "%s/api/models/%s/revision/%s?blobs=true" % (endpoint.rstrip("/"), repo, revision)
    try:
        with _get(url, token) as answer:
            info = json.load(answer)
    except urllib.error.HTTPError as exc:
        raise FetchError("%s@%s: the mirror answered %d to %s" % (repo, revision, exc.code, url)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError("%s@%s: cannot read the mirror's metadata at %s: %s" % (repo, revision, url, exc)) from None
    if info.get("sha") != revision:
        raise FetchError("%s@%s: the mirror describes commit %r, not the pinned one"
                         % (repo, revision, info.get("sha")))
    files = []
    for sibling in info.get("siblings") or []:
        path = sibling.get("rfilename", "")
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise FetchError("%s@%s: the mirror lists an unsafe file name %r" % (repo, revision, path))
        lfs = sibling.get("lfs") or {}
        if lfs.get("sha256"):
            files.append({"path": path, "size": int(lfs.get("size", sibling.get("size", -1))),
                          "sha256": lfs["sha256"]})
        elif sibling.get("blobId"):
            files.append({"path": path, "size": int(sibling.get("size", -1)), "git_sha1": sibling["blobId"]})
        else:
            raise FetchError("%s@%s: the mirror gives no checksum for %s (its metadata lacks lfs.sha256 and "
                             "blobId); the file cannot be checked" % (repo, revision, path))
    if not files:
        raise FetchError("%s@%s: the mirror lists no files" % (repo, revision))
    return files


def select(files: list[dict[str, Any]], repo: str, trust_pickle: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The files to fetch and the pickle files left out."""
    pickles = [f["path"] for f in files if is_pickle(f["path"])]
    if trust_pickle:
        return files, []
    kept = [f for f in files if not is_pickle(f["path"])]
    if pickles and not any(f["path"].endswith(WEIGHT_SUFFIXES) for f in kept):
        raise FetchError("%s: its only weights are pickle files (%s), which run code when loaded; use a "
                         "safetensors revision, or set trust_pickle: true in its catalog entry if you trust "
                         "where they come from" % (repo, ", ".join(pickles[:3])))
    return kept, pickles


def _digest_of(path: str, entry: dict[str, Any]) -> str:
    if "sha256" in entry:
        return str(sha256_file(path))
    digest = hashlib.sha1()  # noqa: S324 - git's blob id is SHA-1 by definition
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: str, entry: dict[str, Any]) -> bool:
    expected = entry.get("sha256") or entry["git_sha1"]
    return (os.path.exists(path) and (entry["size"] < 0 or os.path.getsize(path) == entry["size"])
            and _digest_of(path, entry) == expected)


def _download(url: str, target: str, token: str | None) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with _get(url, token) as answer, open(target, "wb") as out:
        for block in iter(lambda: answer.read(CHUNK), b""):
            out.write(block)


def fetch(endpoint: str, repo: str, revision: str, dest: str, trust_pickle: bool = False,
          token: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Fetch and check every file; return {"fetched": [...], "kept": [...], "pickle_left_out": [...]}."""
    name = name or repo
    if not COMMIT.match(revision):
        raise FetchError("model %s: revision %r is not a commit (40 hex digits); a branch or tag moves, so the "
                         "same catalog could serve other weights tomorrow. Pin the commit the mirror shows for it."
                         % (name, revision))
    wanted, left_out = select(revision_files(endpoint, repo, revision, token), repo, trust_pickle)
    os.makedirs(dest, exist_ok=True)
    partial_root = os.path.join(dest, PARTIAL_DIR)
    fetched, kept = [], []
    for entry in wanted:
        final = os.path.join(dest, entry["path"])
        if _matches(final, entry):
            kept.append(entry["path"])
            continue
        partial = os.path.join(partial_root, entry["path"])
        url = "%s/%s/resolve/%s/%s" % (endpoint.rstrip("/"), repo, revision, urllib.parse.quote(entry["path"]))
        try:
            _download(url, partial, token)
        except urllib.error.HTTPError as exc:
            raise FetchError("model %s: the mirror answered %d for %s" % (name, exc.code, entry["path"])) from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError("model %s: downloading %s failed: %s" % (name, entry["path"], exc)) from None
        if not _matches(partial, entry):
            os.unlink(partial)
            raise FetchError("model %s: %s does not match the mirror's checksum for commit %s (%s); nothing of it "
                             "was kept" % (name, entry["path"], revision,
                                           "sha256" if "sha256" in entry else "git blob id"))
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(partial, final)
        fetched.append(entry["path"])
    # Files of an earlier fetch that this commit does not have, and untrusted pickle files, go.
    wanted_paths = {entry["path"] for entry in wanted}
    for root, _dirs, names in os.walk(dest, topdown=False):
        for file_name in names:
            relative = os.path.relpath(os.path.join(root, file_name), dest)
            if relative not in wanted_paths and not relative.split(os.sep)[0].startswith(".llm-appliance"):
                os.unlink(os.path.join(root, file_name))
    shutil.rmtree(partial_root, ignore_errors=True)
    try:
        # The weights' SHA-256 was just checked against the mirror's: they are not read again.
        manifest = make_manifest(dest, name, trust_pickle=trust_pickle,
                                 known_sha256={e["path"]: e["sha256"] for e in wanted if "sha256" in e})
    except ModelDirError as exc:
        raise FetchError(str(exc)) from None
    _write(os.path.join(dest, MANIFEST_NAME), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write(os.path.join(dest, FETCHED_MARK), "%s@%s\n" % (repo, revision))
    return {"fetched": fetched, "kept": kept, "pickle_left_out": left_out}


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-appliance-model-fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the mirror's base URL")
    parser.add_argument("--repo", required=True, help="the model's repository on the mirror, OWNER/NAME")
    parser.add_argument("--revision", required=True, help="the commit, 40 hex digits")
    parser.add_argument("--dest", required=True, help="the model's directory")
    parser.add_argument("--name", help="the model's name in the catalog, for messages")
    parser.add_argument("--trust-pickle", action="store_true", help="fetch and accept pickle weights")
    args = parser.parse_args(argv)
    try:
        result = fetch(args.endpoint, args.repo, args.revision, args.dest, args.trust_pickle,
                       os.environ.get("HF_TOKEN") or None, args.name)
    except FetchError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
