"""The mirror fetch over real HTTP against a small Hugging Face-compatible mirror: the pinned
commit, each file's checksum from the mirror's metadata, pickle weights left out unless trusted."""
import json
import struct

import pytest

from llm_appliance.model_fetch import FETCHED_MARK, FetchError, fetch, main
from llm_appliance.model_manifest import MANIFEST_NAME, verify_copy
from tests.fixtures.hf_mirror import MirrorState, serve_in_thread

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-model"


def safetensors_bytes(n_floats=16):
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats)


@pytest.fixture()
def mirror():
    state = MirrorState(REPO, COMMIT, {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}",
                                       "model.safetensors": safetensors_bytes(),
                                       "training_args.bin": b"\x80\x04pickle"})
    state.endpoint, server = serve_in_thread(state)
    yield state
    server.shutdown()


def test_fetch_checks_each_file_and_leaves_pickle_out(mirror, tmp_path):
    dest = tmp_path / "tiny@" / "x"
    result = fetch(mirror.endpoint, REPO, COMMIT, str(dest), name="tiny")
    assert sorted(result["fetched"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert result["pickle_left_out"] == ["training_args.bin"]
    assert not (dest / "training_args.bin").exists()
    assert (dest / FETCHED_MARK).read_text() == "%s@%s\n" % (REPO, COMMIT)
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    # The store's own check accepts the fetched copy against that manifest.
    assert verify_copy(str(dest), manifest, "tiny") == "verified"
    assert "/%s/resolve/%s/training_args.bin" % (REPO, COMMIT) not in mirror.requests


def test_a_second_fetch_downloads_nothing_that_is_already_right(mirror, tmp_path):
    fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    before = len(mirror.requests)
    again = fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    assert again["fetched"] == [] and len(again["kept"]) == 3
    assert len(mirror.requests) == before + 1  # the metadata only


@pytest.mark.parametrize("bad", ["model.safetensors", "config.json"])
def test_a_file_that_does_not_match_the_mirrors_checksum_is_refused(mirror, tmp_path, bad):
    """Weights (LFS, sha256) and small files (git blob id) alike."""
    mirror.served[bad] = mirror.files[bad][:-1] + b"X"
    with pytest.raises(FetchError, match="%s does not match the mirror's checksum" % bad):
        fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    assert not (tmp_path / bad).exists()
    assert not (tmp_path / FETCHED_MARK).exists()


def test_a_file_in_place_that_went_bad_is_fetched_again(mirror, tmp_path):
    fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    (tmp_path / "config.json").write_bytes(b'{"model_type": "evil"}')
    again = fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    assert again["fetched"] == ["config.json"]
    assert (tmp_path / "config.json").read_bytes() == mirror.files["config.json"]


@pytest.mark.parametrize("revision", ["main", "v1.0", COMMIT[:12], COMMIT.upper()])
def test_a_revision_that_is_not_a_commit_is_refused(mirror, tmp_path, revision):
    with pytest.raises(FetchError, match="not a commit"):
        fetch(mirror.endpoint, REPO, revision, str(tmp_path), name="tiny")
    assert mirror.requests == []


def test_metadata_for_another_commit_is_refused(mirror, tmp_path):
    mirror.sha = "f" * 40
    with pytest.raises(FetchError, match="describes commit"):
        fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")


def test_a_file_without_a_checksum_is_refused(mirror, tmp_path):
    mirror.drop_checksum.add("tokenizer.json")
    with pytest.raises(FetchError, match="no checksum for tokenizer.json"):
        fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path), name="tiny")
    assert not any(tmp_path.iterdir())


def test_only_pickle_weights_are_refused_unless_trusted(mirror, tmp_path):
    del mirror.files["model.safetensors"]
    mirror.files["pytorch_model.bin"] = mirror.served["pytorch_model.bin"] = b"\x80\x04weights"
    with pytest.raises(FetchError, match="only weights are pickle files.*trust_pickle: true"):
        fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path / "a"), name="tiny")
    result = fetch(mirror.endpoint, REPO, COMMIT, str(tmp_path / "b"), trust_pickle=True, name="tiny")
    assert "pytorch_model.bin" in result["fetched"]
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    assert manifest["trust_pickle"] is True
    assert verify_copy(str(tmp_path / "b"), manifest, "tiny") == "verified"


def test_the_command_reads_the_token_from_the_environment_and_reports_errors(mirror, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    mirror.served["config.json"] = b"{}"
    code = main(["--endpoint", mirror.endpoint, "--repo", REPO, "--revision", COMMIT, "--dest", str(tmp_path),
                 "--name", "tiny"])
    assert code == 1
    err = capsys.readouterr().err
    assert "model tiny: config.json does not match" in err and "secret-token" not in err
    assert mirror.authorization == {"Bearer secret-token"}
