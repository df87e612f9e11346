"""Models come and go without disturbing the others; bad models are refused before any unit
is touched. Each test runs the serving plays for real from the controller against the
scenario's container, with the demo catalog plus or minus one model. The model that comes and
goes is the tiny hybrid one (sliding-window and global layers, like Gemma 3), so its KV-cache
figure checks the planner's grouping of sliding-window layers against the real engine."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from playbook_runner import run_playbook

from tests.fixtures.make_tiny_model import make_model

REPO = Path(__file__).resolve().parents[3]
DEMO_CATALOG = yaml.safe_load((REPO / "inventory/demo/group_vars/all/models.yml").read_text())["appliance_models"]
EVAL_MODEL = "tiny-eval"


def run_serving(catalog, tmp_path):
    extra = tmp_path / "catalog.json"
    extra.write_text(json.dumps({"appliance_models": catalog}))
    return run_playbook("playbooks/serving.yml", "-e", "@" + str(extra), timeout=1800,
                        env={"APPLIANCE_BUILD_DIR": str(REPO / "build")})


def pids(host):
    """MainPID of every loaded vllm-* unit. systemctl prints one block of properties per unit."""
    out = host.run("systemctl show -p Id -p MainPID 'vllm-*.service'").stdout
    values = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in fields:
            values[fields["Id"]] = int(fields.get("MainPID", 0))
    return values


@pytest.fixture(scope="module")
def eval_model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / EVAL_MODEL, seed=1, kind="hybrid")


def eval_entry(path, **overrides):
    entry = dict(DEMO_CATALOG[0])
    entry.update({"name": EVAL_MODEL, "controller_path": str(path), "profile": "eval", "aliases": []})
    entry.pop("port", None)
    entry.update(overrides)
    return entry


def test_adding_a_model_restarts_nothing_else(host, eval_model_dir, tmp_path):
    before = pids(host)
    assert before and all(before.values()), before
    result = run_serving(DEMO_CATALOG + [eval_entry(eval_model_dir)], tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    after = pids(host)
    assert host.service("vllm-%s" % EVAL_MODEL).is_running
    for unit, pid in before.items():
        assert after[unit] == pid, "%s restarted when another model was added" % unit


def test_hybrid_model_kv_cache_tokens_match_the_engine(host):
    """The planner's figure for sliding-window grouping equals what vLLM logs at start."""
    plan = json.loads(host.file("/etc/llm-appliance/plan.json").content_string)
    planned = {m["name"]: m for m in plan["models"]}[EVAL_MODEL]
    log = host.run("journalctl -u vllm-%s --no-pager -o cat", EVAL_MODEL).stdout
    logged = [int(n.replace(",", "")) for n in re.findall(r"CPU KV cache size: ([\d,]+) tokens", log)]
    assert logged, "vLLM logged no KV cache size for %s" % EVAL_MODEL
    assert logged[-1] == planned["kv_cache_tokens"], (logged[-1], planned["kv_cache_tokens"])
    assert planned["memory"]["kv_cache_groups"] == 3


def test_retiring_a_model_restarts_nothing_else(host, eval_model_dir, tmp_path):
    before = pids(host)
    assert "vllm-%s.service" % EVAL_MODEL in before
    result = run_serving(DEMO_CATALOG + [eval_entry(eval_model_dir, state="absent")], tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert not host.file("/etc/systemd/system/vllm-%s.service" % EVAL_MODEL).exists
    assert host.run("systemctl is-active vllm-%s.service", EVAL_MODEL).stdout.strip() != "active"
    after = pids(host)
    for unit, pid in before.items():
        if unit != "vllm-%s.service" % EVAL_MODEL:
            assert after[unit] == pid, "%s restarted when another model was retired" % unit


def broken_copy(source, target, breakage):
    shutil.copytree(source, target)
    if breakage == "config":
        (target / "config.json").write_text("{ this is not json")
    elif breakage == "weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4096])
    return target


@pytest.mark.parametrize("breakage, expected", [
    ("missing", "model tiny-eval: directory {path} does not exist"),
    ("config", "model tiny-eval: {path}/config.json is unreadable"),
    ("weights", "model tiny-eval: weight file {path}/model.safetensors is incomplete"),
])
def test_bad_model_is_refused_and_others_keep_serving(host, eval_model_dir, tmp_path, breakage, expected):
    path = tmp_path / "broken"
    if breakage != "missing":
        broken_copy(eval_model_dir, path, breakage)
    before = pids(host)
    result = run_serving(DEMO_CATALOG + [eval_entry(path)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected.format(path=path) in output, output[-3000:]
    assert not host.file("/etc/systemd/system/vllm-%s.service" % EVAL_MODEL).exists
    assert pids(host) == before
