"""bench/gateway_load.py: its open loop charges a request the time it waited to be sent, it reads
what a gateway answers (lengths, chunks, a closing connection, error statuses), the canned upstream
it puts on the engine's port is a real nginx answering a completion, and the report's arithmetic."""

import argparse
import asyncio
import collections
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("gateway_load", Path(__file__).parents[2] / "bench" / "gateway_load.py")
assert SPEC and SPEC.loader
load = importlib.util.module_from_spec(SPEC)
sys.modules["gateway_load"] = load  # dataclasses look their module up
SPEC.loader.exec_module(load)


class Server:
    """A plain HTTP/1.1 server on loopback that answers every request after `delay` seconds, one at
    a time when `serial` (a gateway at saturation), with the statuses and framing it is given."""

    def __init__(self, delay=0.0, serial=False, statuses=(200,), chunked=False, close=False):
        self.delay, self.serial, self.statuses = delay, serial, statuses
        self.chunked, self.close = chunked, close
        self.served = 0
        self.lock = asyncio.Lock()

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                if self.serial:
                    async with self.lock:
                        await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(self.delay)
                status = self.statuses[self.served % len(self.statuses)]
                self.served += 1
                body = b'{"choices": []}'
                framing = (b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
                           if self.chunked else b"Content-Length: %d\r\n\r\n" % len(body) + body)
                connection = b"Connection: close\r\n" if self.close else b""
                writer.write(b"HTTP/1.1 %d X\r\n" % status + connection + framing)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def run_against(server, rate, seconds, **kwargs):
    async def go():
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        target = load.Target("t", "127.0.0.1", port, "/v1/completions", "key", "m")
        try:
            return await load.open_loop(target, rate, seconds, **kwargs)
        finally:
            listener.close()
    return asyncio.run(go())


def test_a_request_waiting_behind_a_slow_server_is_charged_from_its_due_time():
    # 40 requests due over 0.4 s; the server answers one every 20 ms, so the last waits ~0.4 s more.
    # A closed loop would report ~20 ms for each.
    result = run_against(Server(delay=0.02, serial=True), rate=100, seconds=0.4)
    assert result.ok == result.sent == 40
    assert result.percentile(50) > 150 and result.percentile(99) > 350, result.latencies_ms
    assert result.saturated(slo_ms=300)


def test_a_fast_server_keeps_up_and_latency_is_small():
    result = run_against(Server(delay=0.001), rate=200, seconds=0.5, clients=4)
    assert result.ok == result.sent == 100
    assert result.percentile(50) < 50
    assert not result.saturated(slo_ms=1000)


@pytest.mark.parametrize("framing", [{"chunked": True}, {"close": True}])
def test_chunked_answers_and_closed_connections_are_read(framing):
    result = run_against(Server(**framing), rate=50, seconds=0.2, clients=2)
    assert result.ok == result.sent == 10 and not result.errors


def test_answers_other_than_200_are_counted_by_status():
    result = run_against(Server(statuses=(200, 429, 502)), rate=60, seconds=0.5, clients=1)
    assert result.ok == 10 and result.errors == {"429": 10, "502": 10}


def test_requests_come_from_as_many_loopback_addresses_as_clients():
    seen = set()

    async def go():
        async def handle(reader, writer):
            seen.add(writer.get_extra_info("peername")[0])
            await Server().handle(reader, writer)
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        target = load.Target("t", "127.0.0.1", listener.sockets[0].getsockname()[1], "/", "k", "m")
        try:
            return await load.open_loop(target, 100, 0.2, clients=5)
        finally:
            listener.close()
    assert asyncio.run(go()).ok == 20
    assert seen == set(load.client_addresses(5)) and "127.77.0.1" in seen


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 50) == 50 and load.percentile(values, 99) == 99
    assert load.percentile([7.0], 99) == 7.0
    assert load.percentile([], 50) != load.percentile([], 50)  # NaN


def row(target, rate, latencies, sent=None, errors=None, used=None):
    result = load.RunResult(target, rate, sent or len(latencies), list(latencies))
    result.errors.update(errors or {})
    result.used = used or {}
    return result


def test_report_subtracts_direct_at_the_same_rate_and_divides_cpu_by_requests():
    rows = [row("direct", 10, [1.0] * 100),
            row("appliance", 10, [4.0] * 100, used={"gateway": 250.0, "nginx": 20.0, "redis": 300}),
            row("direct", 20, [2.0] * 100)]
    lines = load.report_lines(rows, {"appliance": "gateway"})
    appliance = lines[2].split()
    assert appliance[:3] == ["appliance", "10.0", "100"]
    assert appliance[5:10] == ["3.0", "3.0", "2.50", "0.20", "3.0"]


def test_saturation_is_the_last_rate_kept_up_with():
    rows = [row("appliance", 10, [5.0] * 100), row("appliance", 20, [5.0] * 100),
            row("appliance", 40, [5.0] * 90, sent=100, errors={"502": 10}), row("appliance", 80, [5.0] * 100)]
    assert load.saturation(rows, "appliance", slo_ms=1000) == 20
    assert load.saturation([row("bare", 10, [2000.0] * 10)], "bare", slo_ms=1000) is None


def test_the_bare_litellm_keeps_the_routes_and_drops_the_appliances_parts():
    config = {"model_list": [{"model_name": "code"}],
              "router_settings": {"routing_strategy": "simple-shuffle", "redis_host": "h", "redis_password": "p"},
              "litellm_settings": {"telemetry": False, "callbacks": ["x"], "cache": True, "cache_params": {}},
              "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY", "custom_auth": "auth"}}
    bare = load.bare_litellm_config(config)
    assert bare["model_list"] == config["model_list"]
    assert bare["router_settings"] == {"routing_strategy": "simple-shuffle"}
    assert bare["litellm_settings"] == {"telemetry": False}
    assert bare["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}


def test_the_master_key_is_read_from_the_environment_file(tmp_path):
    env = tmp_path / "litellm.env"
    env.write_text("# managed\nLITELLM_MASTER_KEY='sk-master'\nOTHER=1\n")
    assert load.env_file_value(env, "LITELLM_MASTER_KEY") == "sk-master"
    with pytest.raises(SystemExit, match="no MISSING"):
        load.env_file_value(env, "MISSING")


@pytest.mark.skipif(not shutil.which("nginx", path="/usr/sbin:/usr/bin"), reason="needs Debian's nginx")
def test_the_canned_upstream_is_nginx_answering_a_completion(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "upstream.conf"
    # The test runs nginx as whoever runs the tests: no user switch.
    conf.write_text(load.canned_upstream_conf(port, tmp_path).replace("user www-data;\n", ""))
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    server = subprocess.Popen([nginx, "-e", str(tmp_path / "error.log"), "-c", str(conf), "-g", "daemon off;"])
    try:
        for _ in range(50):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        target = load.Target("direct", "127.0.0.1", port, "/v1/completions", "key", "tiny-code")
        result = asyncio.run(load.open_loop(target, 100, 0.5, clients=3))
        assert result.ok == result.sent == 50
        body = subprocess.run(["curl", "-s", "-d", "{}", f"http://127.0.0.1:{port}/v1/chat/completions"],
                              capture_output=True, text=True, check=True).stdout
        assert json.loads(body)["choices"][0]["message"]["content"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_noisy_neighbour_floods_from_one_address_of_its_own_while_the_others_send():
    seen = collections.Counter()

    async def go():
        async def handle(reader, writer):
            seen[writer.get_extra_info("peername")[0]] += 1
            await Server().handle(reader, writer)
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        quiet = load.Target("quiet", "127.0.0.1", port, "/", "k", "m")
        noisy = load.Target("noisy", "127.0.0.1", port, "/", "other", "m")
        args = argparse.Namespace(seconds=0.5, clients=3, max_tokens=1, timeout=5.0)
        try:
            return await load.alongside_a_flood(quiet, noisy, 20, 200, args)
        finally:
            listener.close()
    quiet, noisy = asyncio.run(go())
    assert (quiet.ok, noisy.ok) == (10, 100)
    assert set(seen) == {"127.78.0.1", *load.client_addresses(3)}


def test_a_connection_idle_longer_than_the_clients_keepalive_is_not_reused():
    connections = []

    async def go():
        async def handle(reader, writer):
            connections.append(writer)
            await Server().handle(reader, writer)
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        target = load.Target("t", "127.0.0.1", listener.sockets[0].getsockname()[1], "/", "k", "m")
        pool = load.Pool(target, "127.0.0.1", None, keepalive_s=0.2)
        try:
            statuses = [await pool.exchange(target.request(1)), await pool.exchange(target.request(1))]
            await asyncio.sleep(0.3)
            statuses.append(await pool.exchange(target.request(1)))
            return statuses
        finally:
            pool.close()
            listener.close()
    assert asyncio.run(go()) == [200, 200, 200]
    assert len(connections) == 2  # the first reused once, then a new one after the idle time
