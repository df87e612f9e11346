"""The site's plan over several GPU hosts: replicas on different hosts, stable when hosts are added."""
import pytest
from ansible.errors import AnsibleFilterError

from llm_appliance.plan import PlanError
from llm_appliance.plan.decide import host_plan, plan_cluster, plan_site
from tests.unit.test_plan import GEMMA_3_27B, LLAMA_8B, LLAMA_8B_BYTES, QWEN_CODER_32B, h100s, load_filter_plugin

CODER = {"name": "qwen-coder", "profile": "completion", "config": QWEN_CODER_32B, "weights_bytes": 65527752704,
         "quantization": "fp8", "tensor_parallel_size": 2, "aliases": ["code"]}
CHAT = {"name": "gemma-chat", "profile": "chat", "config": GEMMA_3_27B, "weights_bytes": 55244358451,
        "max_num_batched_tokens": 4096, "aliases": ["chat"]}


def cluster(models, names, **kwargs):
    return plan_cluster(models, {name: h100s(4) for name in names}, vllm_version="0.32.0", **kwargs)


def test_replicas_go_on_different_hosts_with_one_port():
    plan = cluster([dict(CODER, replicas=3), dict(CHAT, replicas=2)], ["gpu01", "gpu02", "gpu03"])
    by_name = {m["name"]: m for m in plan["models"]}
    assert by_name["qwen-coder"]["hosts"] == ["gpu01", "gpu02", "gpu03"]
    assert by_name["gemma-chat"]["hosts"] == ["gpu01", "gpu02"]
    assert by_name["qwen-coder"]["port"] == 8001 and by_name["gemma-chat"]["port"] == 8002
    first = {m["name"]: m for m in plan["hosts"]["gpu01"]["models"]}
    assert first["qwen-coder"]["gpus"] == [0, 1] and first["gemma-chat"]["gpus"] == [2]
    assert plan["hosts"]["gpu03"]["free_gpus"] == [2, 3]
    # Each host's share has the single-host plan's shape, for the vllm role.
    assert host_plan(plan, "gpu03")["models"][0]["vllm_args"] == first["qwen-coder"]["vllm_args"]
    assert host_plan(plan, "front")["models"] == []


def test_adding_a_host_moves_nothing_that_runs():
    """A new host's name sorts after the others: every placed engine keeps its host, GPUs and arguments."""
    models = [dict(CODER, replicas=2), CHAT, {"name": "eval", "profile": "eval", "config": LLAMA_8B,
                                              "weights_bytes": LLAMA_8B_BYTES, "replicas": 2}]
    before = cluster(models, ["gpu2", "gpu9"])
    after = cluster(models + [{"name": "new", "profile": "eval", "config": LLAMA_8B,
                               "weights_bytes": LLAMA_8B_BYTES, "hosts": ["gpu10"]}], ["gpu9", "gpu10", "gpu2"])
    assert list(after["hosts"]) == ["gpu2", "gpu9", "gpu10"]     # natural order, not text order
    for host in ("gpu2", "gpu9"):
        assert after["hosts"][host] == before["hosts"][host]
    assert [m["name"] for m in after["hosts"]["gpu10"]["models"]] == ["new"]


def test_named_hosts_pin_the_replicas():
    plan = cluster([dict(CHAT, hosts=["gpu03", "gpu01"])], ["gpu01", "gpu02", "gpu03"])
    assert plan["models"][0]["hosts"] == ["gpu01", "gpu03"]
    assert plan["hosts"]["gpu02"]["models"] == []
    two_of_three = cluster([dict(CHAT, hosts=["gpu01", "gpu02", "gpu03"], replicas=2)], ["gpu01", "gpu02", "gpu03"])
    assert two_of_three["models"][0]["hosts"] == ["gpu01", "gpu02"]


@pytest.mark.parametrize("entry, hosts, message", [
    (dict(CHAT, replicas=3), ["gpu01", "gpu02"],
     r"model gemma-chat: 3 replicas must go on different hosts, but only 2 GPU hosts exist: gpu01, gpu02\. "
     r"Add GPU hosts or lower replicas"),
    (dict(CHAT, hosts=["gpu07"]), ["gpu01"], r"model gemma-chat: hosts names gpu07, which is not in the GPU hosts"),
    (dict(CHAT, replicas=0), ["gpu01"], r"model gemma-chat: replicas must be a whole number of 1 or more, not 0"),
    (dict(CHAT, hosts="gpu01"), ["gpu01"], r"model gemma-chat: hosts must be a list of GPU host names"),
])
def test_impossible_replicas_are_refused_by_name(entry, hosts, message):
    with pytest.raises(PlanError, match=message):
        cluster([entry], hosts)


def test_a_catalog_that_cannot_fit_names_the_model_and_every_host():
    # Three models of two GPUs fill two 4-GPU hosts after the first two replicas take half of each.
    big = [dict(CODER, name="a", replicas=2), dict(CODER, name="b", replicas=2, port=8101),
           dict(CODER, name="c", replicas=2, port=8102)]
    with pytest.raises(PlanError) as raised:
        cluster(big, ["gpu01", "gpu02"])
    message = str(raised.value)
    assert message.startswith("model c: 0 of 2 replicas placed (none); not on gpu01: model c: no GPU is left")
    assert "not on gpu02: model c: no GPU is left" in message


def test_shared_gpus_follow_their_partner_host():
    small = {"name": "a", "profile": "eval", "config": LLAMA_8B, "weights_bytes": LLAMA_8B_BYTES,
             "gpu_memory_utilization": 0.45, "hosts": ["gpu02"]}
    partner = dict(small, name="b", share_gpus_with="a")
    del partner["hosts"]
    plan = cluster([small, partner], ["gpu01", "gpu02"])
    assert plan["models"][1]["hosts"] == ["gpu02"]
    with pytest.raises(PlanError, match="not on gpu01: a, whose GPUs it shares, is not on this host"):
        cluster([small, dict(partner, replicas=2)], ["gpu01", "gpu02"])


def test_one_host_plan_is_the_single_server_plan():
    single = plan_site([CODER, CHAT], h100s(4), vllm_version="0.32.0")
    assert host_plan(cluster([CODER, CHAT], ["gpu01"]), "gpu01") == single


def test_no_gpu_host_is_refused():
    with pytest.raises(PlanError, match="no GPU host to plan for: put the hosts that serve models in the gpu_hosts"):
        plan_cluster([CHAT], {})


def test_a_limited_run_plans_the_whole_site_from_declared_gpus():
    planner = load_filter_plugin("planner")
    # gpu01 is in this run (its GPUs read), gpu02 is not: its declared GPUs count.
    hostvars = {"gpu01": {"appliance_plan_gpus": h100s(4)}, "gpu02": {"appliance_gpus": h100s(2)}, "gpu03": {}}
    assert planner.appliance_plan_hosts(["gpu01", "gpu02"], hostvars) == {"gpu01": h100s(4), "gpu02": h100s(2)}
    with pytest.raises(AnsibleFilterError, match="gpu03 is outside this run and has no GPUs declared: run without "
                                                  "--limit, or declare appliance_gpus for it"):
        planner.appliance_plan_hosts(["gpu01", "gpu03"], hostvars)
    # The CPU engine needs no GPUs.
    assert planner.appliance_plan_hosts(["gpu03"], hostvars, engine="cpu") == {"gpu03": {}}
