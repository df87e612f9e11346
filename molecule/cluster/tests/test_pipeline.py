"""A model over several hosts, as far as vLLM's CPU build goes.

The pipeline's stages that a GPU site's plan gives both GPU hosts (molecule/cluster/pipeline.yml):
both join one Ray cluster, which admits no client without its token and no host outside the
pipeline; then vLLM's Ray executor, started on that cluster with the arguments the plan renders,
stops with the error the planner quotes for the CPU engine. The stages are then taken away again
and nothing of them is left.
"""
import importlib.util
import re
from pathlib import Path

import pytest
import testinfra

testinfra_hosts = ["cluster-front"]

GPU1, GPU2 = "172.30.77.11", "172.30.77.12"
RAY = "/opt/llm-appliance/venvs/vllm-current/bin/ray"
PYTHON = "/opt/llm-appliance/venvs/vllm-current/bin/python"
RAY_ADDRESS = "%s:6380" % GPU1
TOKEN_ENV = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/llm-appliance/vllm/ray-auth-token"
_spec = importlib.util.spec_from_file_location(
    "playbook_runner", Path(__file__).resolve().parents[2] / "default/tests/playbook_runner.py")
playbook_runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(playbook_runner)


def gpu_host(name):
    return testinfra.get_host("docker://" + name)


def joined_nodes(host):
    status = host.run("env " + TOKEN_ENV + " %s status --address %s", RAY, RAY_ADDRESS)
    assert status.rc == 0, status.stdout + status.stderr
    return len(re.findall(r"(?m)^\s*1 node_", status.stdout))


@pytest.fixture(scope="module")
def pipeline():
    run = playbook_runner.run_playbook("molecule/cluster/pipeline.yml")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run


def test_both_gpu_hosts_join_one_ray_cluster(pipeline):
    gpu1, gpu2 = gpu_host("cluster-gpu1"), gpu_host("cluster-gpu2")
    assert gpu1.service("llm-appliance-ray.service").is_running and gpu2.service("llm-appliance-ray.service").is_running
    # The play waits for both; each host sees the same two nodes.
    assert joined_nodes(gpu1) == 2 and joined_nodes(gpu2) == 2
    # The head's pinned port (Ray listens on every address: the firewall keeps it to the pipeline).
    assert any(s.endswith(":6380") for s in gpu1.socket.get_listening_sockets())


def test_ray_admits_no_client_without_its_token(pipeline):
    refused = gpu_host("cluster-gpu2").run("%s status --address %s", RAY, RAY_ADDRESS)
    assert refused.rc != 0 and "InvalidAuthToken" in refused.stdout + refused.stderr, refused.stdout + refused.stderr


def test_ray_is_closed_to_hosts_outside_the_pipeline(host, pipeline):
    # Dropped by the GPU host's input filter: the front's connection times out.
    out = host.run("curl -sS --max-time 5 telnet://%s", RAY_ADDRESS)
    assert out.rc == 28, (out.rc, out.stderr)
    nft = gpu_host("cluster-gpu1").check_output("nft list table inet llm_appliance")
    assert "meta l4proto tcp ip saddr %s accept" % GPU2 in nft


def test_vllms_ray_executor_refuses_the_cpu_platform(pipeline):
    """What stops a CPU pipeline: vLLM 0.32's CpuPlatform has no Ray device (ray_utils.py)."""
    gpu1 = gpu_host("cluster-gpu1")
    model = re.search(r"--model (\S+)", gpu1.file("/etc/systemd/system/vllm-tiny-code.service").content_string)
    started = gpu1.run(
        "runuser -u vllm -- env HOME=/var/lib/llm-appliance/vllm VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 "
        "VLLM_NO_USAGE_STATS=1 RAY_ADDRESS=%s VLLM_HOST_IP=%s " + TOKEN_ENV + " timeout 300 %s -m "
        "vllm.entrypoints.openai.api_server --model %s --host 127.0.0.1 --port 18123 --max-model-len 512 "
        "--pipeline-parallel-size 2 --distributed-executor-backend ray",
        RAY_ADDRESS, GPU1, PYTHON, model.group(1))
    output = started.stdout + started.stderr
    print("vLLM on the Ray cluster, CPU build: exit %d; %s" % (
        started.rc, [line for line in output.splitlines() if "does not support ray" in line][:1]))
    assert started.rc not in (0, 124), output[-3000:]
    assert "Connected to Ray cluster" in output and "current platform cpu does not support ray" in output, \
        output[-3000:]


def test_taking_the_stages_away_leaves_nothing(pipeline):
    run = playbook_runner.run_playbook("molecule/cluster/pipeline.yml", "-e", "pipeline_present=false")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    for name in ("cluster-gpu1", "cluster-gpu2"):
        gpu = gpu_host(name)
        assert not gpu.file("/etc/systemd/system/llm-appliance-ray.service").exists
        assert not gpu.file("/etc/llm-appliance/vllm/ray-auth-token").exists
        assert "meta l4proto tcp" not in gpu.check_output("nft list table inet llm_appliance")
        assert not any(s.endswith(":6380") for s in gpu.socket.get_listening_sockets())
