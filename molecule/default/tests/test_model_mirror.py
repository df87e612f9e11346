"""Models from a Hugging Face-compatible mirror, end to end on the host: the model_store role
fetches at the pinned commit with the host's own fetch command, checks every file against the
mirror's checksums, leaves pickle files out, refuses a file that does not match and a branch name."""
import base64
import json
import time
from pathlib import Path

import pytest
from playbook_runner import run_playbook

REPO_ROOT = Path(__file__).resolve().parents[3]
COMMIT = "3b1d4c9e0f2a7d6e5c4b3a29180f7e6d5c4b3a29"
PORT = 18091
SOURCE = "/srv/models/tiny-code@seed0"
STORE = "/srv/models"


def run_store(models):
    extra = {"model_store_models": models, "model_store_hf_endpoint": "http://127.0.0.1:%d" % PORT}
    return run_playbook("molecule/default/tests/model_mirror.yml", "-e", json.dumps(extra), inventory="inventory/demo")


def mirror_entry(name, repo="acme/tiny", revision=COMMIT):
    return {"name": name, "source": "mirror", "hf_repo": repo, "revision": revision}


@pytest.fixture(scope="module")
def mirror(host):
    """The demo's tiny model plus a pickle file, as acme/tiny, and as acme/tiny-bad with its
    config.json served altered."""
    script = base64.b64encode((REPO_ROOT / "tests/fixtures/hf_mirror.py").read_bytes()).decode()
    prepared = host.run(
        "rm -rf /tmp/mirror-src && mkdir /tmp/mirror-src && cp -a %s/. /tmp/mirror-src/ "
        "&& rm -f /tmp/mirror-src/.llm-appliance-* && printf 'pickle' > /tmp/mirror-src/pytorch_model.bin "
        "&& echo %s | base64 -d > /tmp/hf_mirror.py "
        "&& systemd-run --unit=hf-mirror-probe --collect python3 /tmp/hf_mirror.py %s %s /tmp/mirror-src "
        "acme/tiny acme/tiny-bad:config.json", SOURCE, script, str(PORT), COMMIT)
    assert prepared.rc == 0, prepared.stderr
    for _ in range(50):
        if host.run("curl -sf http://127.0.0.1:%s/api/models/acme/tiny/revision/%s", str(PORT), COMMIT).rc == 0:
            break
        time.sleep(0.2)
    yield
    host.run("systemctl stop hf-mirror-probe; rm -rf /tmp/mirror-src /tmp/hf_mirror.py %s/tiny-mirror*", STORE)


def test_a_branch_name_is_refused_before_anything_changes(host, mirror):
    result = run_store([mirror_entry("tiny-mirror-branch", revision="main")])
    assert result.returncode != 0
    assert "revision main is not a commit (40 hex digits)" in result.stdout
    assert not host.file("%s/tiny-mirror-branch@main" % STORE).exists


def test_a_mirror_model_is_fetched_checked_and_a_bad_file_refused(host, mirror):
    good, bad = "%s/tiny-mirror@%s" % (STORE, COMMIT), "%s/tiny-mirror-bad@%s" % (STORE, COMMIT)
    result = run_store([mirror_entry("tiny-mirror"), mirror_entry("tiny-mirror-bad", repo="acme/tiny-bad")])
    assert result.returncode != 0
    assert "model tiny-mirror-bad: config.json does not match the mirror's checksum" in result.stdout
    assert not host.file(bad + "/.llm-appliance-fetched").exists
    assert not host.file(bad + "/config.json").exists
    # The good model landed whole, without the pickle file, with a manifest the store's check accepts.
    assert host.file(good + "/.llm-appliance-fetched").content_string == "acme/tiny@%s\n" % COMMIT
    assert not host.file(good + "/pytorch_model.bin").exists
    assert host.file(good + "/config.json").content == host.file(SOURCE + "/config.json").content
    verify = host.run("llm-appliance-model-verify tiny-mirror %s", good)
    assert verify.rc == 0 and verify.stdout.strip() in ("verified", "unchanged"), verify.stderr
    # A file that goes bad on the host afterwards is caught by the same check.
    host.run("printf ' ' >> %s/tokenizer_config.json", good)
    assert host.run("llm-appliance-model-verify tiny-mirror %s", good).rc == 1
