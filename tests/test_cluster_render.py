"""The site's wiring as the roles render it, for the cluster example and the single server.

inventory/example-cluster: one front (gateway, chat, nginx, PostgreSQL) and three 4x H100 GPU
servers. tests/cluster_render.yml renders, on the controller, what each host would get; no host is
contacted. The single-server example must keep every service on loopback, as before.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
FRONT, GPUS = "10.20.0.10", {"gpu01": "10.20.0.11", "gpu02": "10.20.0.12", "gpu03": "10.20.0.13"}


def render(inventory, out, *more_inventories, extra_vars=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               CLUSTER_RENDER_DIR=str(out))
    inventories = [arg for path in (REPO / inventory, *more_inventories) for arg in ("-i", str(path))]
    result = subprocess.run([str(ANSIBLE_PLAYBOOK), str(REPO / "tests/cluster_render.yml"), *inventories,
                             "-e", "appliance_plan_output_dir=%s" % (out / "plans"),
                             *(["-e", "@%s" % extra_vars] if extra_vars else [])],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    return render("inventory/example-cluster", tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return render("inventory/example", tmp_path_factory.mktemp("single"))


def deployments(config_file):
    """model name -> the api_base of each of its deployments in LiteLLM's model_list."""
    routes = {}
    for entry in yaml.safe_load(config_file.read_text())["model_list"]:
        routes.setdefault(entry["model_name"], []).append(entry["litellm_params"]["api_base"])
    return routes


def wiring(out, host):
    return json.loads((out / host / "wiring.json").read_text())


def test_the_site_plan_puts_replicas_on_different_servers(cluster):
    plan = json.loads((cluster / "plans/site-plan.json").read_text())
    hosts = {m["name"]: m["hosts"] for m in plan["models"]}
    assert hosts == {"qwen-coder": ["gpu01", "gpu02", "gpu03"], "gemma-chat": ["gpu01", "gpu02"]}
    assert {h: share["address"] for h, share in plan["hosts"].items()} == GPUS
    # Each GPU server's share, as the serving play records it on the host.
    gpu03 = json.loads((cluster / "plans/plan-gpu03.json").read_text())
    assert [m["name"] for m in gpu03["models"]] == ["qwen-coder"] and gpu03["address"] == GPUS["gpu03"]


def test_the_gateway_routes_each_alias_over_its_replicas(cluster):
    routes = deployments(cluster / "front01/config.yaml")
    assert routes["code"] == routes["qwen-coder"] == ["https://%s:8001/v1" % a for a in GPUS.values()]
    assert routes["chat"] == ["https://%s:8002/v1" % GPUS[h] for h in ("gpu01", "gpu02")]
    config = yaml.safe_load((cluster / "front01/config.yaml").read_text())
    router = config["router_settings"]
    assert router["num_retries"] >= 1 and router["allowed_fails"] >= 1 and router["cooldown_time"] > 0
    # The engines' certificates are checked against the internal CA alone.
    assert config["litellm_settings"]["ssl_verify"] == "/etc/llm-appliance/ca/ca.crt"


def test_engines_listen_on_the_cluster_address_open_to_the_front_alone(cluster):
    for host, address in GPUS.items():
        units = sorted((cluster / host).glob("vllm-*.service"))
        assert units
        for unit in units:
            text = unit.read_text()
            assert "--host %s " % address in text
            command = " ".join(text.replace("\\\n", " ").split())
            assert ("--ssl-keyfile /etc/llm-appliance/vllm/tls/engine.key "
                    "--ssl-certfile /etc/llm-appliance/vllm/tls/engine.crt") in command
            # The front (the gateway), and the host itself (its own checks reach the cluster address);
            # not the other GPU servers.
            allowed = sorted(line for line in text.splitlines() if line.startswith("IPAddressAllow="))
            assert allowed == sorted(["IPAddressAllow=localhost", "IPAddressAllow=%s" % FRONT,
                                      "IPAddressAllow=%s" % address]), allowed
        nft = (cluster / host / "llm-appliance.nft").read_text()
        ports = "8001, 8002" if host != "gpu03" else "8001"
        assert "tcp dport { %s } ip saddr { %s } accept" % (ports, FRONT) in nft
        # No web door on a GPU server.
        assert "tcp dport { 443, 80 }" not in nft
        assert wiring(cluster, host)["database"] == FRONT


def test_the_database_admits_the_gpu_servers_over_tls_only(cluster):
    hba = (cluster / "front01/pg_hba.conf").read_text()
    for address in GPUS.values():
        assert "hostssl all       all       %s/32   scram-sha-256" % address in hba
        assert "host    all       all       %s/32" % address not in hba
    settings = (cluster / "front01/llm-appliance.conf").read_text()
    assert "listen_addresses = '127.0.0.1,::1,%s'" % FRONT in settings
    # Its own certificate from the internal CA, which the clients check (verify-full).
    assert "ssl_cert_file = '/etc/postgresql/llm-appliance-tls/server.crt'" in settings
    nft = (cluster / "front01/llm-appliance.nft").read_text()
    assert "tcp dport { 5432 } ip saddr { %s } accept" % ", ".join(GPUS.values()) in nft
    assert "tcp dport { 443, 80 } ip saddr @https_v4 accept" in nft


def test_a_fourth_gpu_server_changes_nothing_on_the_three_that_run(cluster, tmp_path):
    """README: add a GPU server named after the others and nothing that runs moves or restarts."""
    grown = tmp_path / "gpu04.yml"
    grown.write_text("all:\n  children:\n    gpu_hosts:\n      hosts:\n        gpu04:\n"
                     "          ansible_host: 10.20.0.14\n")
    after = render("inventory/example-cluster", tmp_path / "grown", grown)
    for host in GPUS:
        units = sorted(path.name for path in (cluster / host).glob("vllm-*.service"))
        assert units == sorted(path.name for path in (after / host).glob("vllm-*.service"))
        for name in units:
            assert (after / host / name).read_text() == (cluster / host / name).read_text(), (host, name)
    # The catalog asks for no more replicas: the new server waits, free, and the routes stay.
    plan = json.loads((after / "plans/site-plan.json").read_text())
    assert plan["hosts"]["gpu04"]["address"] == "10.20.0.14" and not list((after / "gpu04").glob("vllm-*"))
    assert deployments(after / "front01/config.yaml") == deployments(cluster / "front01/config.yaml")


def test_the_front_keeps_gateway_redis_and_chat_on_loopback(cluster):
    front = wiring(cluster, "front01")
    assert front["litellm_listen_address"] == front["redis"] == front["database"] == "127.0.0.1"
    assert front["edge_gateway_upstreams"] == ["127.0.0.1:4000", "127.0.0.1:4001"]
    assert "bind 127.0.0.1 -::1\n" in (cluster / "front01/redis-llm-appliance.conf").read_text()


def test_the_single_server_keeps_everything_on_loopback(single):
    gpu01 = wiring(single, "gpu01")
    assert gpu01["firewall_cluster_admits"] == [] and gpu01["site_addresses"] == []
    assert gpu01["postgresql_listen_addresses"] == ["127.0.0.1", "::1"]
    assert "hostssl" not in (single / "gpu01/pg_hba.conf").read_text()
    assert "ssl_cert_file" not in (single / "gpu01/llm-appliance.conf").read_text()
    assert set(deployments(single / "gpu01/config.yaml")["code"]) == {"http://127.0.0.1:8001/v1"}
    assert "ssl_verify" not in yaml.safe_load((single / "gpu01/config.yaml").read_text())["litellm_settings"]
    for unit in (single / "gpu01").glob("vllm-*.service"):
        text = unit.read_text()
        assert "--host 127.0.0.1 " in text and "--ssl-" not in text
        allowed = [line for line in text.splitlines() if line.startswith("IPAddressAllow=")]
        assert allowed == ["IPAddressAllow=localhost"]


def test_the_readme_s_plan_command_for_the_cluster(tmp_path):
    """`ansible-playbook playbooks/plan.yml -i inventory/example-cluster`, from a shell that only
    activated the venv: the plan of every server, written under the build directory."""
    venv_bin = Path(sys.executable).parent
    env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(venv_bin.parent),
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "APPLIANCE_BUILD_DIR": str(tmp_path)}
    result = subprocess.run(["ansible-playbook", "playbooks/plan.yml", "-i", "inventory/example-cluster"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for host, address in GPUS.items():
        assert '"%s (engines at %s):",' % (host, address) in result.stdout
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == [
        "plan-gpu01.json", "plan-gpu02.json", "plan-gpu03.json", "site-plan.json"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The cluster example with a model larger than one server (Llama 3.1 405B in fp8 over two)."""
    out = tmp_path_factory.mktemp("pipeline")
    from tests.unit.test_plan_pipeline import LLAMA_405B, LLAMA_405B_BYTES
    (out / "config.json").write_text(json.dumps(LLAMA_405B))
    catalog = {"appliance_models": [
        {"name": "llama-405b", "profile": "chat", "aliases": ["big"], "source": "mirror",
         "hf_repo": "meta-llama/Llama-3.1-405B-Instruct", "revision": "0" * 40,
         "config_path": str(out / "config.json"), "weights_bytes": LLAMA_405B_BYTES, "quantization": "fp8",
         "max_model_len": 16384, "nodes": 2}]}
    (out / "catalog.yml").write_text(yaml.safe_dump(catalog))
    return render("inventory/example-cluster", out / "rendered", extra_vars=out / "catalog.yml")


def test_a_model_over_two_servers_runs_on_a_ray_cluster_of_those_two(pipeline):
    head, worker = (pipeline / "gpu01/llm-appliance-ray.service").read_text(), \
        (pipeline / "gpu02/llm-appliance-ray.service").read_text()
    assert "--head --port=6380" in head and "--address=%s:6380" % GPUS["gpu01"] in worker
    for host, text in (("gpu01", head), ("gpu02", worker)):
        assert "--node-ip-address=%s" % GPUS[host] in text and "--num-gpus=4" in text
        assert "Environment=CUDA_VISIBLE_DEVICES=0,1,2,3\n" in text and "Environment=RAY_AUTH_MODE=token\n" in text
        assert "--disable-usage-stats" in text and "Environment=RAY_USAGE_STATS_ENABLED=0\n" in text
        # The pipeline's two hosts, nobody else.
        allowed = sorted(line for line in text.splitlines() if line.startswith("IPAddressAllow="))
        assert allowed == ["IPAddressAllow=%s" % GPUS["gpu01"], "IPAddressAllow=%s" % GPUS["gpu02"],
                           "IPAddressAllow=localhost"]
        nft = (pipeline / host / "llm-appliance.nft").read_text()
        other = GPUS["gpu02" if host == "gpu01" else "gpu01"]
        assert "meta l4proto tcp ip saddr { %s } accept" % other in nft
    assert not (pipeline / "gpu03/llm-appliance-ray.service").exists()
    assert "meta l4proto tcp" not in (pipeline / "gpu03/llm-appliance.nft").read_text()
    # One engine, on the first host, with vLLM's multi-node arguments and the cluster's address.
    assert [p.name for p in (pipeline / "gpu01").glob("vllm-*.service")] == ["vllm-llama-405b.service"]
    assert not list((pipeline / "gpu02").glob("vllm-*.service"))
    unit = (pipeline / "gpu01/vllm-llama-405b.service").read_text()
    command = " ".join(unit.replace("\\\n", " ").split())
    assert ("--tensor-parallel-size 4 --gpu-memory-utilization 0.90 --pipeline-parallel-size 2 "
            "--distributed-executor-backend ray") in command
    assert "Environment=RAY_ADDRESS=%s:6380\n" % GPUS["gpu01"] in unit and "After=llm-appliance-ray.service\n" in unit
    # The gateway routes to it at its first host.
    assert deployments(pipeline / "front01/config.yaml")["big"] == ["https://%s:8001/v1" % GPUS["gpu01"]]


def test_every_client_on_the_request_path_lets_idle_connections_go_before_its_server(cluster):
    """nginx -> gateway and LiteLLM -> engine: a client that reuses a connection its server is
    closing gets a stray 502 or a retried request, so each client's keep-alive is the shorter."""
    front = cluster / "front01"
    nginx = (front / "nginx.conf").read_text()
    upstream = re.search(r"upstream llm_gateway \{(.*?)\}", nginx, re.S).group(1)
    assert "least_conn;" in upstream
    nginx_keepalive = int(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))
    unit = (front / "litellm@.service").read_text()
    gateway_keepalive = int(re.search(r"--timeout-keep-alive (\d+)", unit).group(1))
    litellm_to_engine = int(re.search(r"^Environment=AIOHTTP_KEEPALIVE_TIMEOUT=(\d+)$", unit, re.M).group(1))
    assert "--http httptools" in unit
    engines = [path.read_text() for host in GPUS for path in (cluster / host).glob("vllm-*.service")]
    engine_keepalive = {int(re.search(r"^Environment=VLLM_HTTP_TIMEOUT_KEEP_ALIVE=(\d+)$", text, re.M).group(1))
                        for text in engines}
    assert engines and nginx_keepalive < gateway_keepalive and engine_keepalive == {75}
    assert litellm_to_engine < min(engine_keepalive), (litellm_to_engine, engine_keepalive)
