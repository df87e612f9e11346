"""A model larger than one server: one copy over several GPU hosts, tensor parallel within each
host and pipeline parallel across them on a Ray cluster of those hosts, as vLLM recommends."""
import pytest

from llm_appliance.plan import PlanError
from llm_appliance.plan.cli import format_plan
from llm_appliance.plan.decide import host_plan, plan_cluster
from tests.unit.test_plan import LLAMA_8B, LLAMA_8B_BYTES, h100s

# Llama 3.1 405B (config.json of meta-llama/Llama-3.1-405B-Instruct): 810 GB in bf16, more than a
# 4x H100 server holds; in runtime fp8 about half of it, which two such servers hold.
LLAMA_405B = dict(LLAMA_8B, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                  num_attention_heads=128, num_key_value_heads=8)
LLAMA_405B_BYTES = 405_853_388_800 * 2
BIG = {"name": "llama-405b", "profile": "chat", "config": LLAMA_405B, "weights_bytes": LLAMA_405B_BYTES,
       "quantization": "fp8", "max_model_len": 16384, "nodes": 2}
SMALL = {"name": "eval", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES}


def cluster(models, names, engine="cuda"):
    return plan_cluster(models, {name: h100s(4) for name in names}, engine=engine, vllm_version="0.32.0")


def test_a_model_larger_than_one_server_runs_over_two_with_one_stage_each():
    plan = cluster([BIG, SMALL], ["gpu01", "gpu02", "gpu03"])
    big = {m["name"]: m for m in plan["models"]}["llama-405b"]
    # The gateway reaches it at its first host; the others are its later stages.
    assert big["hosts"] == ["gpu01"] and big["nodes"] == ["gpu01", "gpu02"]
    record = host_plan(plan, "gpu01")["models"][0]
    assert record["tensor_parallel_size"] == 4 and record["pipeline_parallel_size"] == 2
    args = record["vllm_args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert args[args.index("--distributed-executor-backend") + 1] == "ray"
    assert record["node_gpus"] == {"gpu01": [0, 1, 2, 3], "gpu02": [0, 1, 2, 3]}
    # Both hosts run a Ray node with their GPUs; the first heads the cluster. No engine unit on the second.
    assert host_plan(plan, "gpu01")["pipeline_stages"] == [
        {"model": "llama-405b", "head": "gpu01", "rank": 0, "nodes": ["gpu01", "gpu02"], "gpus": [0, 1, 2, 3]}]
    assert host_plan(plan, "gpu02")["pipeline_stages"] == [
        {"model": "llama-405b", "head": "gpu01", "rank": 1, "nodes": ["gpu01", "gpu02"], "gpus": [0, 1, 2, 3]}]
    assert host_plan(plan, "gpu02")["models"] == [] and plan["hosts"]["gpu02"]["free_gpus"] == []
    # What is left goes on the third server.
    assert {m["name"]: m for m in plan["models"]}["eval"]["hosts"] == ["gpu03"]
    assert host_plan(plan, "gpu03")["pipeline_stages"] == []
    # Half of the layers per host: each GPU holds about a quarter of one stage's fp8 weights.
    assert 45 < record["memory"]["weights_gib_per_gpu"] < 55
    assert any("pipeline over 2 hosts (gpu01, gpu02)" in reason for reason in record["reasons"])
    # What the plan command prints for the second host.
    assert "stage 2 of llama-405b (a Ray worker of gpu01's cluster): GPUs [0, 1, 2, 3]" in format_plan(plan)


def test_a_single_host_model_is_planned_as_before():
    plan = cluster([SMALL], ["gpu01"])
    record = plan["hosts"]["gpu01"]["models"][0]
    assert "nodes" not in record and "--pipeline-parallel-size" not in record["vllm_args"]
    assert "pipeline_stages" not in plan["hosts"]["gpu01"] and "nodes" not in plan["models"][0]


def test_pinned_hosts_choose_the_stages():
    plan = cluster([dict(BIG, hosts=["gpu03", "gpu02"])], ["gpu01", "gpu02", "gpu03"])
    assert plan["models"][0]["nodes"] == ["gpu02", "gpu03"] and plan["models"][0]["hosts"] == ["gpu02"]


@pytest.mark.parametrize("entry, hosts, message", [
    (dict(BIG, quantization=""), ["gpu01", "gpu02"],
     r"model llama-405b: nodes 2 does not fit on the GPU hosts gpu01, gpu02: tensor_parallel_size 4 on gpu01, "
     r"gpu02: model llama-405b needs 100.88 GiB per GPU .* no memory is left for the KV cache\. Raise nodes "
     r"\(with as many GPU hosts\), or shrink it \(quantization: fp8"),
    (dict(BIG, nodes=3), ["gpu01", "gpu02"],
     r"model llama-405b: nodes 3 needs 3 GPU hosts, but only 2 exist: gpu01, gpu02. Add GPU hosts or lower nodes"),
    (dict(BIG, replicas=2), ["gpu01", "gpu02", "gpu03", "gpu04"],
     r"model llama-405b: a model over several hosts \(nodes 2\) is planned as one copy on GPUs of its own"),
    (dict(BIG, nodes=0), ["gpu01"], r"model llama-405b: nodes must be a whole number of 1 or more, not 0"),
    (dict(BIG, hosts=["gpu09"]), ["gpu01", "gpu02"], r"model llama-405b: hosts names gpu09, not in the GPU hosts"),
])
def test_impossible_stages_are_refused_by_name(entry, hosts, message):
    with pytest.raises(PlanError, match=message):
        cluster([entry], hosts)


def test_a_host_is_a_stage_of_one_model_only():
    second = dict(BIG, name="llama-405b-2", quantization="fp8")
    with pytest.raises(PlanError, match=r"model llama-405b-2: nodes 2 does not fit .*gpu01: already a pipeline "
                                        r"stage of llama-405b \(one Ray node per host\)"):
        cluster([BIG, second], ["gpu01", "gpu02", "gpu03"])
    assert [m["nodes"] for m in cluster([BIG, second], ["gpu01", "gpu02", "gpu03", "gpu04"])["models"]] == [
        ["gpu01", "gpu02"], ["gpu03", "gpu04"]]


def test_the_cpu_engine_refuses_with_vllms_own_error():
    """vLLM's CPU build stops its Ray executor at once (vllm/v1/executor/ray_utils.py): the plan says so."""
    with pytest.raises(PlanError, match=r"model llama-405b: nodes 2: vLLM's CPU build cannot serve a model over "
                                        r"several hosts: its Ray executor stops with \"ValueError: current "
                                        r"platform cpu does not support ray\""):
        cluster([BIG], ["gpu01", "gpu02"], engine="cpu")


def test_every_host_of_the_pipeline_stores_the_weights():
    """Ray's workers on each stage host load their layers from the model's path there."""
    from tests.unit.test_plan import load_filter_plugin
    planner = load_filter_plugin("planner")
    plan = cluster([BIG, SMALL], ["gpu01", "gpu02", "gpu03"])
    catalog = [BIG, SMALL]
    assert [m["name"] for m in planner.appliance_host_catalog(catalog, host_plan(plan, "gpu02"))] == ["llama-405b"]
    assert [m["name"] for m in planner.appliance_host_catalog(catalog, host_plan(plan, "gpu03"))] == ["eval"]
    units = planner.appliance_vllm_units(host_plan(plan, "gpu01"), {"llama-405b": "/srv/models/llama-405b"})
    assert units[0]["nodes"] == ["gpu01", "gpu02"]
