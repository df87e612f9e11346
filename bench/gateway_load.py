#!/usr/bin/env python3
"""The gateway's own cost, measured open-loop on the appliance: added latency and CPU per request.

Run as root on a converged appliance (bench/appliance runs it in the demo container) with the
gateway venv's Python (it reads the gateway's YAML configuration):

    gateway_load.py [--rates 7,33,67,133,200,333,500,667,1000] [--seconds 10] [--engine-rates 7,13]

Open loop: request i is due at start + i / rate whatever the answers do, and its latency counts
from that due time, so a request that waits for a free connection or for the generator itself is
charged its wait (a closed loop hides it). Each rate is sent, one after the other, to:

  direct     the upstream itself (the engine's port);
  bare       a bare LiteLLM of the same version with the same routes, no custom auth, no callback,
             one instance (a transient unit, removed at the end);
  appliance  the appliance's API as clients reach it: nginx with TLS, every gateway instance, the
             door, the keys, the usage rows.

First against a canned upstream: nginx answers a fixed OpenAI completion on the engine's port while
the engine is stopped, so the engine does not dominate; then (--engine-rates) against the real
engine, started again. Added latency = the target's percentile - direct's at the same rate. CPU
per request: the CPU time the gateway's processes (the litellm@ units, or the bare one) and the
edge's nginx used during the run, divided by the requests sent. A target is saturated at a rate
when under 99% of its requests succeed or its p99 exceeds --slo-ms; higher rates are not sent to it.

The generator runs on the last CPU and every other process of the host is moved off it for the
run (restored at the end) when the host has two CPUs or more. Requests come from --clients
loopback addresses in turn (127.77.0.1, ...), as from that many employees: nginx's per-address
limits apply to each as in production. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_RATE = 40 / 6  # the reference site's bursts: 40 requests in 6 s
WORK_DIR = Path("/run/llm-bench")
UPSTREAM_UNIT = "llm-bench-upstream"
BARE_UNIT = "llm-bench-bare-litellm"
CANNED_COMPLETION = {
    "id": "cmpl-bench", "object": "text_completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "text": " ok", "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
CANNED_CHAT = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


# --- the load generator -------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str
    key: str
    model: str
    tls_name: str = ""  # SNI and certificate name; empty: plain HTTP
    ca_file: str = ""

    def request(self, max_tokens: int) -> bytes:
        body = json.dumps({"model": self.model, "prompt": "Hello", "max_tokens": max_tokens}).encode()
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.tls_name or self.host}\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nUser-Agent: llm-bench\r\n\r\n")
        return head.encode() + body


@dataclass
class RunResult:
    target: str
    rate: float
    sent: int
    latencies_ms: list[float] = field(default_factory=list)  # successful requests, from their due time
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    generator_lag_ms: float = 0.0  # the latest any request left after its due time
    seconds: float = 0.0
    used: dict[str, float] = field(default_factory=dict)  # what each counter counted during the run

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def saturated(self, slo_ms: float) -> bool:
        return self.ok < 0.99 * self.sent or self.percentile(99) > slo_ms

    def per_request(self, counter: str) -> float:
        return self.used.get(counter, float("nan")) / self.sent if self.sent else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first
    return ordered[int(rank) - 1]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one HTTP/1.1 response; returns its status and whether the connection may be reused."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        return status, False
    return status, headers.get("connection") != "close"


# Seconds an idle connection is reused, as HTTP clients do (httpx: 5 s), shorter than the servers
# keep one (uvicorn's default: 5 s): a client that sends on a connection its server is closing gets
# a broken answer, which would count against the server.
CLIENT_KEEPALIVE_S = 4.0


class Pool:
    """Keep-alive connections to one target from one source address; a new one when none is idle."""

    def __init__(self, target: Target, source: str, context: ssl.SSLContext | None,
                 keepalive_s: float = CLIENT_KEEPALIVE_S):
        self.target, self.source, self.context, self.keepalive_s = target, source, context, keepalive_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.keepalive_s:
                return reader, writer
            writer.close()
        return None

    async def exchange(self, payload: bytes) -> int:
        connection = self._reusable()
        if connection is None:
            connection = await asyncio.open_connection(
                self.target.host, self.target.port, ssl=self.context, local_addr=(self.source, 0),
                server_hostname=self.target.tls_name if self.context else None)
        reader, writer = connection
        try:
            writer.write(payload)
            status, reusable = await read_response(reader)
        except BaseException:
            writer.close()
            raise
        if reusable:
            self.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


def client_addresses(count: int, network: int = 77) -> list[str]:
    return [f"127.{network}.{i // 250}.{i % 250 + 1}" for i in range(count)]


async def open_loop(target: Target, rate: float, seconds: float, *, clients: int = 50, max_tokens: int = 1,
                    timeout: float = 30.0, network: int = 77) -> RunResult:
    """Sends rate * seconds requests, each at its due time, and waits for them (timeout each)."""
    context = None
    if target.tls_name:
        context = ssl.create_default_context(cafile=target.ca_file or None)
    pools = [Pool(target, source, context) for source in client_addresses(clients, network)]
    payload = target.request(max_tokens)
    count = max(1, round(rate * seconds))
    result = RunResult(target.name, rate, count)
    loop = asyncio.get_running_loop()

    async def one(pool: Pool, due: float) -> None:
        try:
            status = await asyncio.wait_for(pool.exchange(payload), timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as err:
            result.errors[type(err).__name__] += 1
            return
        except TimeoutError:
            result.errors["timeout"] += 1
            return
        if status == 200:
            result.latencies_ms.append((loop.time() - due) * 1000.0)
        else:
            result.errors[str(status)] += 1

    start = loop.time() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result.generator_lag_ms = max(result.generator_lag_ms, (loop.time() - due) * 1000.0)
        tasks.append(asyncio.create_task(one(pools[i % len(pools)], due)))
    await asyncio.gather(*tasks)
    result.seconds = loop.time() - start
    for pool in pools:
        pool.close()
    return result


# --- the host: CPU time, pinning, units ---------------------------------------------------------

def unit_pids(unit: str) -> list[int]:
    """The processes whose cgroup is the unit's (read from /proc, so no cgroup mount is assumed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if any(line.rstrip().endswith("/" + unit) for line in cgroup.splitlines()):
            found.append(int(entry))
    return found


def cpu_seconds(units: list[str]) -> float:
    """User + system CPU of the units' processes, their threads included."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for unit in units:
        for pid in unit_pids(unit):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def redis_commands(host: str, port: int, password: str) -> float:
    """Commands the gateway's Redis has processed so far (INFO stats)."""
    info = subprocess.run(["redis-cli", "-h", host, "-p", str(port), "info", "stats"], capture_output=True,
                          text=True, check=True, env=dict(os.environ, REDISCLI_AUTH=password)).stdout
    for line in info.splitlines():
        if line.startswith("total_commands_processed:"):
            return float(line.split(":", 1)[1])
    raise SystemExit(f"redis {host}:{port}: no total_commands_processed in INFO stats")


def keep_off_cpu(cpu: int) -> tuple[dict[int, set[int]], int]:
    """Moves every thread of every process but this one off `cpu`; returns what to restore and how
    many threads could not be moved (another user's, without CAP_SYS_NICE)."""
    others = set(range(os.cpu_count() or 1)) - {cpu}
    saved: dict[int, set[int]] = {}
    refused = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            tasks = os.listdir(f"/proc/{entry}/task")
        except OSError:
            continue  # gone
        for task in tasks:
            tid = int(task)
            try:
                current = os.sched_getaffinity(tid)
                if cpu in current and current - {cpu}:
                    os.sched_setaffinity(tid, current & others)
                    saved[tid] = current
            except PermissionError:
                refused += 1
            except OSError:
                continue  # gone
    os.sched_setaffinity(0, {cpu})
    return saved, refused


def restore_affinity(saved: dict[int, set[int]]) -> None:
    for tid, cpus in saved.items():
        with contextlib.suppress(OSError):  # a thread gone since
            os.sched_setaffinity(tid, cpus)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


@contextlib.contextmanager
def generator_alone(cpus: int) -> Iterator[None]:
    """The generator on the last CPU, everything else off it, for the block (nothing to do on one CPU)."""
    if cpus < 2:
        yield
        return
    saved, refused = keep_off_cpu(cpus - 1)
    if refused:
        print(f"(the generator shares CPU {cpus - 1} with {refused} threads it may not move: run it with "
              "CAP_SYS_NICE, or move them from outside first as bench/appliance does)", flush=True)
    try:
        yield
    finally:
        restore_affinity(saved)


def env_file_value(path: Path, name: str) -> str:
    """One variable of a systemd environment file (the gateway's master key, for the bare LiteLLM)."""
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value
    raise SystemExit(f"{path}: no {name}")


def warm_up(target: Target, args: argparse.Namespace, timeout: float = 120.0) -> None:
    """Until a short run is answered in full: a route cooled down while the engine was swapped recovers."""
    deadline = time.monotonic() + timeout
    while True:
        result = asyncio.run(open_loop(target, 5, 1, clients=1, max_tokens=args.max_tokens, timeout=args.timeout))
        if result.ok == result.sent:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{target.name}: still failing after {timeout:.0f} s: {dict(result.errors)}")
        time.sleep(2)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def wait_http(url: str, timeout: float, ok: tuple[int, ...] = (200,)) -> None:
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as err:
            if err.code in ok:
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url}: no answer within {timeout:.0f} s")


def canned_upstream_conf(port: int, work_dir: Path = WORK_DIR) -> str:
    """nginx answering the canned OpenAI replies on the engine's loopback port."""
    def answer(document: dict[str, Any]) -> str:
        return json.dumps(document).replace("'", "\\'")
    models = {"object": "list", "data": [{"id": "bench", "object": "model"}]}
    return f"""user www-data;
worker_processes 1;
pid {work_dir}/upstream.pid;
error_log {work_dir}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work_dir}/body;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /v1/chat/completions {{ return 200 '{answer(CANNED_CHAT)}'; }}
        location = /v1/completions {{ return 200 '{answer(CANNED_COMPLETION)}'; }}
        location / {{ return 200 '{answer(models)}'; }}
    }}
}}
"""


def bare_litellm_config(appliance_config: dict[str, Any]) -> dict[str, Any]:
    """The appliance's routes and router settings, without its auth, callback, cache or Redis."""
    router = {k: v for k, v in appliance_config.get("router_settings", {}).items() if not k.startswith("redis")}
    settings = {k: v for k, v in appliance_config.get("litellm_settings", {}).items()
                if k not in ("callbacks", "cache", "cache_params")}
    return {"model_list": appliance_config["model_list"], "router_settings": router, "litellm_settings": settings,
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}


# --- the report ---------------------------------------------------------------------------------

def report_lines(rows: list[RunResult], gateway_groups: dict[str, str]) -> list[str]:
    """One line per run: latency, added latency against direct at the same rate, errors, CPU
    milliseconds per request of the gateway's processes and of nginx, Redis commands per request."""
    direct = {row.rate: row for row in rows if row.target == "direct"}
    lines = [f"{'target':<10} {'req/s':>6} {'sent':>6} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} "
             f"{'gw cpu':>7} {'nginx':>6} {'redis':>6} {'lag':>6}  errors  (ms; cpu ms, redis commands per request)"]
    for row in rows:
        base = direct.get(row.rate)
        add50 = row.percentile(50) - base.percentile(50) if base and row is not base else float("nan")
        add99 = row.percentile(99) - base.percentile(99) if base and row is not base else float("nan")
        group = gateway_groups.get(row.target, "")
        gateway_cpu = row.per_request(group) if group else float("nan")
        nginx_cpu = row.per_request("nginx") if row.target == "appliance" else float("nan")
        redis = row.per_request("redis") if row.target == "appliance" else float("nan")
        errors = ", ".join(f"{kind} x{count}" for kind, count in sorted(row.errors.items())) or "-"
        lines.append(f"{row.target:<10} {row.rate:>6.1f} {row.sent:>6} {row.percentile(50):>7.1f} "
                     f"{row.percentile(99):>7.1f} {add50:>7.1f} {add99:>7.1f} {gateway_cpu:>7.2f} "
                     f"{nginx_cpu:>6.2f} {redis:>6.1f} {row.generator_lag_ms:>6.1f}  {errors}")
    return lines


def saturation(rows: list[RunResult], target: str, slo_ms: float) -> float | None:
    """The highest rate the target kept up with, below the first rate it did not."""
    best = None
    for row in sorted((r for r in rows if r.target == target), key=lambda r: r.rate):
        if row.saturated(slo_ms):
            break
        best = row.rate
    return best


async def alongside_a_flood(quiet: Target, noisy: Target, quiet_rate: float, noisy_rate: float,
                            args: argparse.Namespace) -> tuple[RunResult, RunResult]:
    """The quiet users' requests while one user floods the gateway from one address of their own."""
    quiet_run = open_loop(quiet, quiet_rate, args.seconds, clients=args.clients, max_tokens=args.max_tokens,
                          timeout=args.timeout)
    noisy_run = open_loop(noisy, noisy_rate, args.seconds, clients=1, max_tokens=args.max_tokens,
                          timeout=args.timeout, network=78)
    quiet_result, noisy_result = await asyncio.gather(quiet_run, noisy_run)
    return quiet_result, noisy_result


# --- the run ------------------------------------------------------------------------------------

def sweep(targets: list[Target], rates: list[float], args: argparse.Namespace,
          counters: dict[str, Callable[[], float]]) -> list[RunResult]:
    rows: list[RunResult] = []
    saturated: set[str] = set()
    for rate in rates:
        for target in targets:
            if target.name in saturated:
                continue
            before = {name: count() for name, count in counters.items()}
            result = asyncio.run(open_loop(target, rate, args.seconds, clients=args.clients,
                                           max_tokens=args.max_tokens, timeout=args.timeout))
            result.used = {name: count() - before[name] for name, count in counters.items()}
            rows.append(result)
            print(report_lines([r for r in rows if r.rate == rate], GATEWAY_GROUPS)[-1], flush=True)
            if result.saturated(args.slo_ms):
                saturated.add(target.name)
            time.sleep(1)  # the previous run's connections closed before the next run
    return rows


GATEWAY_GROUPS = {"appliance": "gateway", "bare": "bare"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="7,33,67,133,200,333,500,667,1000,1333",
                        help="requests per second, each for --seconds (7: the seed's 40 in 6 s; 333: 50x)")
    parser.add_argument("--engine-rates", default="7,13", help="rates against the real engine afterwards")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50, help="loopback source addresses")
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--slo-ms", type=float, default=1000.0, help="p99 over this: saturated")
    parser.add_argument("--engine-unit", default="vllm-tiny-code")
    parser.add_argument("--engine-port", type=int, default=8001)
    parser.add_argument("--engine-model", default="tiny-code")
    parser.add_argument("--engine-key", default="demo-vllm-engine-key")
    parser.add_argument("--alias", default="code")
    parser.add_argument("--key", default="sk-demo-bench-0123456789", help="an appliance key without limits")
    parser.add_argument("--noisy-key", default="sk-demo-limited-0123456789",
                        help="a key with a low rate limit, for the noisy neighbour")
    parser.add_argument("--noisy-rate", type=float, default=333.0,
                        help="the noisy neighbour's requests per second, from one address (0: no such run)")
    parser.add_argument("--quiet-rate", type=float, default=33.0, help="everyone else's, meanwhile")
    parser.add_argument("--api-name", default="api.demo.internal")
    parser.add_argument("--ca", default="/etc/llm-appliance/ca/ca.crt")
    parser.add_argument("--litellm-config", default="/etc/llm-appliance/litellm/config.yaml")
    parser.add_argument("--litellm-venv", default="/opt/llm-appliance/venvs/litellm-current")
    parser.add_argument("--bare-port", type=int, default=4100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root on the appliance: it stops the engine and starts transient units")
    import yaml  # the gateway venv's

    instances = sorted(line.split()[0] for line in run("systemctl", "list-units", "--plain", "--no-legend",
                                                         "--state=running", "litellm@*").stdout.splitlines())
    gateway_user = run("systemctl", "show", "-p", "User", "--value", instances[0]).stdout.strip()
    state_dir = run("systemctl", "show", "-p", "WorkingDirectory", "--value", instances[0]).stdout.strip()
    cpus = os.cpu_count() or 1
    print(f"host: {cpus} CPUs; gateway: {len(instances)} instances ({', '.join(instances)}); "
          f"generator: {'CPU %d alone' % (cpus - 1) if cpus > 1 else 'shares the only CPU'}; "
          f"{args.clients} client addresses; {args.seconds:.0f} s per rate; p99 over {args.slo_ms:.0f} ms "
          f"or under 99% answered: saturated")
    WORK_DIR.mkdir(mode=0o755, exist_ok=True)
    (WORK_DIR / "upstream.conf").write_text(canned_upstream_conf(args.engine_port))
    appliance_config = yaml.safe_load(Path(args.litellm_config).read_text())
    env_file = Path(args.litellm_config).with_name("litellm.env")
    (WORK_DIR / "bare-litellm.yaml").write_text(yaml.safe_dump(bare_litellm_config(appliance_config)))
    direct = Target("direct", "127.0.0.1", args.engine_port, "/v1/completions", args.engine_key, args.engine_model)
    bare_target = Target("bare", "127.0.0.1", args.bare_port, "/v1/completions",
                         env_file_value(env_file, "LITELLM_MASTER_KEY"), args.alias)
    appliance = Target("appliance", "127.0.0.1", 443, "/v1/completions", args.key, args.alias,
                       tls_name=args.api_name, ca_file=args.ca)
    units = {"gateway": [unit.removesuffix(".service") + ".service" for unit in instances],
             "bare": [BARE_UNIT + ".service"], "nginx": ["nginx.service"]}
    counters: dict[str, Callable[[], float]] = {
        name: (lambda these=these: cpu_seconds(these) * 1000.0) for name, these in units.items()}
    router = appliance_config.get("router_settings", {})
    if router.get("redis_host"):
        password = env_file_value(env_file, "REDIS_PASSWORD")
        counters["redis"] = lambda: redis_commands(router["redis_host"], int(router["redis_port"]), password)
    rows: list[RunResult] = []
    try:
        run("systemctl", "stop", args.engine_unit)
        run("systemd-run", "--unit", UPSTREAM_UNIT, "--property", "Type=exec", "/usr/sbin/nginx", "-c",
            str(WORK_DIR / "upstream.conf"), "-g", "daemon off;")
        # As the litellm@ units run it, less the appliance's door, keys, callback and Redis.
        run("systemd-run", "--unit", BARE_UNIT, "--uid", gateway_user, "--property", "Type=exec",
            "--property", f"EnvironmentFile={env_file}",
            "--setenv", f"CONFIG_FILE_PATH={WORK_DIR}/bare-litellm.yaml",
            "--setenv", "LITELLM_LOCAL_MODEL_COST_MAP=True", "--setenv", "LITELLM_TELEMETRY=False",
            "--setenv", "LITELLM_MODE=PRODUCTION", "--setenv", "DO_NOT_TRACK=1",
            "--setenv", f"HOME={state_dir}", "--setenv", f"XDG_CACHE_HOME={state_dir}/cache",
            f"{args.litellm_venv}/bin/python", "-m", "uvicorn", "litellm.proxy.proxy_server:app", "--host",
            "127.0.0.1", "--port", str(args.bare_port), "--workers", "1", "--loop", "uvloop", "--no-access-log")
        wait_http(f"http://127.0.0.1:{args.engine_port}/v1/models", 30)
        wait_http(f"http://127.0.0.1:{args.bare_port}/health/liveliness", 180)
        for target in (bare_target, appliance):
            warm_up(target, args)
        print("\ncanned upstream (nginx's fixed reply on the engine's port):")
        print(report_lines([], GATEWAY_GROUPS)[0])
        rates = [float(r) for r in args.rates.split(",") if r]
        with generator_alone(cpus):
            rows = sweep([direct, bare_target, appliance], rates, args, counters)
            if args.noisy_rate:
                noisy = Target("noisy", "127.0.0.1", 443, "/v1/completions", args.noisy_key, args.alias,
                               tls_name=args.api_name, ca_file=args.ca)
                quiet_result, noisy_result = asyncio.run(
                    alongside_a_flood(appliance, noisy, args.quiet_rate, args.noisy_rate, args))
                quiet_result.target = "quiet"
    finally:
        run("systemctl", "stop", UPSTREAM_UNIT, BARE_UNIT, check=False)
        run("systemctl", "reset-failed", UPSTREAM_UNIT, BARE_UNIT, check=False)
        run("systemctl", "start", args.engine_unit, check=False)
    if args.noisy_rate:
        alone = next((row for row in rows if row.target == "appliance" and row.rate == args.quiet_rate), None)
        print(f"\nnoisy neighbour: one key sends {args.noisy_rate:.0f} req/s from one address while the others "
              f"send {args.quiet_rate:.0f} req/s:")
        print(f"  the others: p50 {quiet_result.percentile(50):.1f} ms, p99 {quiet_result.percentile(99):.1f} ms, "
              f"errors {dict(quiet_result.errors) or 'none'}"
              + (f" (alone: p50 {alone.percentile(50):.1f}, p99 {alone.percentile(99):.1f})" if alone else ""))
        print(f"  the noisy key: {noisy_result.ok} answered, refused {dict(noisy_result.errors) or 'none'}")
    print()
    for name in ("direct", "bare", "appliance"):
        rate = saturation(rows, name, args.slo_ms)
        server_cpus = max(1, cpus - 1)
        print(f"saturation {name:<10}: " + (f"{rate:.0f} req/s, {rate / server_cpus:.0f} req/s per server CPU"
                                            if rate else "below the lowest rate"))
    engine_rates = [float(r) for r in args.engine_rates.split(",") if r]
    if engine_rates:
        wait_http(f"http://127.0.0.1:{args.engine_port}/health", 300)
        warm_up(appliance, args)
        print("\nthe real engine (vLLM, CPU build):")
        print(report_lines([], GATEWAY_GROUPS)[0])
        with generator_alone(cpus):
            sweep([direct, appliance], engine_rates, args, counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
