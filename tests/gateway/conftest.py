"""Real servers for the gateway tests: vLLM (CPU build), a throwaway PostgreSQL, LiteLLM's proxy.

APPLIANCE_LITELLM_PYTHON: python of a venv with roles/litellm/files/requirements-litellm-*.txt and
  the appliance's package, as on a host (tests that need the proxy are skipped when it is unset).
APPLIANCE_VLLM_PYTHON: python of a vLLM CPU venv; or APPLIANCE_VLLM_BASE_URL (+ APPLIANCE_VLLM_API_KEY)
  for an engine already serving tests/fixtures' tiny model as `tiny-code`.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("APPLIANCE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SCHEMA_SQL = ROOT / "llm_appliance" / "usage_report" / "schema.sql"
# The columns the gateway writes; used only while llm_appliance/usage_report/schema.sql is absent.
FALLBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_events (
  id bigserial PRIMARY KEY, request_id text, started_at timestamptz NOT NULL, ended_at timestamptz,
  user_id text, key_alias text, model_alias text, model text, deployment text, call_type text,
  prompt_tokens integer, completion_tokens integer, ttft_ms real, latency_ms real, status text,
  error_class text, user_agent text);
CREATE UNIQUE INDEX IF NOT EXISTS usage_events_request_id ON usage_events (request_id);
"""


def free_port(lo=18100, hi=18999):
    for port in range(lo, hi):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18100-18999")


def wait_http(url, timeout, headers=None, proc=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited\n{Path(log).read_text()[-4000:] if log else ''}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    raise TimeoutError(url)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Postgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.dir / "data"
        self.port = free_port(18600, 18699)
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_pg:
            shutil.chown(self.dir, "postgres")
        subprocess.run([*self.as_pg, str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def start(self):
        subprocess.run([*self.as_pg, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.dir / "log"),
                        "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)

    def stop(self):
        subprocess.run([*self.as_pg, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"],
                       check=False, capture_output=True)

    def query(self, sql, *params):
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else None


@pytest.fixture(scope="session")
def postgres():
    if not PG_BIN.joinpath("initdb").exists():
        pytest.skip(f"no PostgreSQL binaries at {PG_BIN}")
    pytest.importorskip("psycopg")
    pg = Postgres()
    pg.start()
    pg.query(SCHEMA_SQL.read_text() if SCHEMA_SQL.exists() else FALLBACK_SCHEMA)
    yield pg
    pg.stop()
    shutil.rmtree(pg.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def vllm():
    base = os.environ.get("APPLIANCE_VLLM_BASE_URL")
    key = os.environ.get("APPLIANCE_VLLM_API_KEY", "testkey")
    if base:
        yield {"api_base": base.rstrip("/"), "api_key": key}
        return
    python = os.environ.get("APPLIANCE_VLLM_PYTHON")
    if not python:
        pytest.skip("APPLIANCE_VLLM_PYTHON (or APPLIANCE_VLLM_BASE_URL) is unset")
    model = ROOT / "build" / "models" / "tiny-llama"
    if not model.exists():
        subprocess.run([python, str(ROOT / "tests" / "fixtures" / "make_tiny_model.py"), str(model)], check=True)
    port = free_port(18001, 18099)
    log = Path(tempfile.mkstemp(prefix="gw-vllm-", suffix=".log")[1])
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    with open(log, "w") as output:   # the server writes to its own copy of the descriptor
        proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                                 "--served-model-name", "tiny-code", "--host", "127.0.0.1", "--port", str(port),
                                 "--max-model-len", "1024", "--api-key", key],
                                stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc=proc, log=log)
        yield {"api_base": f"http://127.0.0.1:{port}/v1", "api_key": key}
    finally:
        stop(proc)


KEYS = {
    "alice": "sk-test-alice",
    "bob": "sk-test-bob",
    "old": "sk-test-old",
    "gone": "sk-test-gone",
    "slow": "sk-test-slow",
}


def keys_document():
    from llm_appliance.gateway.auth import hash_key

    return {"users": [
        {"name": "alice", "key_sha256": hash_key(KEYS["alice"]), "models": ["code", "chat"]},
        {"name": "bob", "key_sha256": hash_key(KEYS["bob"]), "models": ["chat"]},
        {"name": "old", "key_sha256": hash_key(KEYS["old"]), "expires": "2020-01-01"},
        {"name": "gone", "key_sha256": hash_key(KEYS["gone"]), "revoked": True},
        {"name": "slow", "key_sha256": hash_key(KEYS["slow"]), "models": ["code"], "rpm": 3},
    ]}


def gateway_config(vllm, master_key):
    def entry(alias):
        return {"model_name": alias,
                "litellm_params": {"model": "hosted_vllm/tiny-code", "api_base": vllm["api_base"],
                                   "api_key": vllm["api_key"], "timeout": 120, "stream_timeout": 120}}

    return {
        "model_list": [entry("code"), entry("chat"), entry("tiny-code")],
        "router_settings": {"num_retries": 1, "timeout": 120},
        "litellm_settings": {"callbacks": ["llm_appliance.gateway.usage_logger.usage_logger"],
                             "telemetry": False, "drop_params": True},
        # Text-completion streams carry vLLM's token counts only when usage is asked for.
        "general_settings": {"master_key": master_key, "always_include_stream_usage": True,
                             "custom_auth": "llm_appliance.gateway.auth.user_api_key_auth"},
    }


@pytest.fixture(scope="session")
def gateway(vllm, postgres):
    python = os.environ.get("APPLIANCE_LITELLM_PYTHON")
    if not python:
        pytest.skip("APPLIANCE_LITELLM_PYTHON is unset")
    if subprocess.run([python, "-c", "import llm_appliance.gateway"], capture_output=True, check=False).returncode:
        pytest.fail(f"{python} lacks the appliance's package: install it there as the gateway's venv has it, "
                    "e.g. pip install --no-deps --no-index build/package/llm_appliance-*.whl")
    import yaml

    work = Path(tempfile.mkdtemp(prefix="gw-litellm-"))
    keys = work / "keys.json"
    keys.write_text(json.dumps(keys_document()))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(vllm, "sk-master-test")))
    port = free_port(18200, 18299)
    log = work / "litellm.log"
    env = dict(
        os.environ,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_MODE="PRODUCTION",
        LLM_APPLIANCE_KEYS_FILE=str(keys),
        LLM_APPLIANCE_USAGE_DSN=postgres.dsn,
        LLM_APPLIANCE_SPOOL_DIR=str(work / "spool"),
        LLM_APPLIANCE_USAGE_FLUSH_S="0.5",
    )
    env.pop("DATABASE_URL", None)
    with open(log, "w") as output:   # the proxy writes to its own copy of the descriptor
        # As the unit runs it: LiteLLM behind the appliance's door, its configuration from CONFIG_FILE_PATH.
        env["CONFIG_FILE_PATH"] = str(config)
        proc = subprocess.Popen([python, "-m", "uvicorn", "llm_appliance.gateway.door:app",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log"],
                                stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, proc=proc, log=log)
        yield {"url": f"http://127.0.0.1:{port}", "work": work, "keys": keys, "log": log, "proc": proc}
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
