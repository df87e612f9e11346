"""Three hosts, one appliance: the front routes one model over its replicas on two GPU hosts.

Requests spread over both replicas (the usage rows' deployment column), a GPU host whose engine
stops costs no non-streaming request, the engines speak TLS with certificates from the internal CA,
and the GPU hosts' firewalls admit the front alone to the engine ports. Traffic stays on the
scenario's own Docker network.
"""
import collections
import json
import threading
import time
import uuid

import pytest
import testinfra

testinfra_hosts = ["cluster-front"]

FRONT, GPU1, GPU2 = "172.30.77.10", "172.30.77.11", "172.30.77.12"
ENGINE_PORT = 8001
ALICE = "sk-demo-alice-0123456789"
# The report's role may read the usage rows (the gateway's may only insert them).
PSQL = "PGPASSWORD=demo-report-db-password psql -w -h 127.0.0.1 -U llm_report -d llm_appliance -At -c"
UNIT = "vllm-tiny-code.service"
ENGINE_KEY = "demo-vllm-engine-key"
CA = "/etc/llm-appliance/ca/ca.crt"


def gpu_host(name):
    return testinfra.get_host("docker://" + name)


def completion(host, agent, stream=False):
    body = {"model": "code", "prompt": "def add(a, b):", "max_tokens": 4, "stream": stream}
    cmd = host.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 120 -H 'Authorization: Bearer %s' "
                   "-H 'Content-Type: application/json' -A %s -d %s http://127.0.0.1:4000/v1/completions",
                   ALICE, agent, json.dumps(body))
    return int(cmd.stdout or 0)


def deployments(host, agent, expected, timeout=60):
    """The engine address of each usage row of this test, once all have arrived."""
    deadline = time.time() + timeout
    while True:
        out = host.run(PSQL + " %s", f"SELECT deployment FROM usage_events WHERE user_agent = '{agent}'").stdout
        rows = [line for line in out.splitlines() if line]
        if len(rows) >= expected or time.time() > deadline:
            return collections.Counter(row.split("//")[1].split(":")[0] for row in rows)
        time.sleep(1)


def wait_healthy(host, address, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        url = "https://%s:%d/health" % (address, ENGINE_PORT)
        if host.run("curl -sf --max-time 5 --cacert %s %s", CA, url).rc == 0:
            return
        time.sleep(3)
    raise AssertionError("engine at %s did not come back" % address)


def test_each_gpu_host_serves_its_replica_on_its_cluster_address():
    for name, address in (("cluster-gpu1", GPU1), ("cluster-gpu2", GPU2)):
        gpu = gpu_host(name)
        assert gpu.service(UNIT).is_running
        sockets = {s for s in gpu.socket.get_listening_sockets() if s.endswith(":%d" % ENGINE_PORT)}
        assert sockets == {"tcp://%s:%d" % (address, ENGINE_PORT)}, sockets
        plan = json.loads(gpu.file("/etc/llm-appliance/plan.json").content_string)
        assert [m["name"] for m in plan["models"]] == ["tiny-code"] and plan["address"] == address


def test_requests_spread_over_both_replicas(host):
    agent = "cluster-spread-" + uuid.uuid4().hex[:8]
    # A replica at random for each: all 20 on one replica would happen once in half a million runs.
    statuses = [completion(host, agent) for _ in range(20)]
    assert statuses == [200] * 20
    used = deployments(host, agent, 20)
    assert set(used) == {GPU1, GPU2}, used


def test_a_gpu_host_lost_under_load_costs_no_request(host):
    """A bounded load (4 clients, 60 completions) while one GPU host's engine is stopped and
    started again: every non-streaming request is answered (retried on the other replica), new
    streams go to the healthy one, and the host is back in the rotation afterwards."""
    gpu1 = gpu_host("cluster-gpu1")
    agent = "cluster-failover-" + uuid.uuid4().hex[:8]
    statuses = []

    def client():
        for _ in range(15):
            statuses.append(completion(host, agent))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(5)
        gpu1.run("systemctl stop %s", UNIT)
        # New streams, once the gateway has seen the replica fail (and left it out for its cooldown).
        time.sleep(5)
        streams = [completion(host, agent + "-stream", stream=True) for _ in range(4)]
        time.sleep(5)
    finally:
        gpu1.run("systemctl start %s", UNIT)
    for thread in clients:
        thread.join()
    print("failover: %d requests, %s; streams while stopped: %s"
          % (len(statuses), dict(collections.Counter(statuses)), dict(collections.Counter(streams))))
    assert statuses == [200] * 60, collections.Counter(statuses)
    assert streams == [200] * 4
    used = deployments(host, agent, 60)
    print("failover: answered by %s" % dict(used))
    assert GPU2 in used
    wait_healthy(host, GPU1)
    # Back in the rotation once its cooldown has passed.
    time.sleep(35)
    agent = "cluster-back-" + uuid.uuid4().hex[:8]
    assert [completion(host, agent) for _ in range(12)] == [200] * 12
    assert GPU1 in deployments(host, agent, 12)


@pytest.mark.parametrize("target", [GPU1, GPU2])
def test_engines_speak_tls_with_the_internal_cas_certificate_for_their_address(host, target):
    wait_healthy(host, target)
    url = "https://%s:%d/v1/models" % (target, ENGINE_PORT)
    models = host.run("curl -sS --fail --max-time 10 --cacert %s -H %s %s", CA,
                      "Authorization: Bearer " + ENGINE_KEY, url)
    assert models.rc == 0 and "tiny-code" in models.stdout, models.stderr
    # Without the engine key: refused; in plain http: no answer at all.
    assert host.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 10 --cacert %s %s", CA, url).stdout == "401"
    plain = host.run("curl -sS --max-time 10 %s", "http://%s:%d/health" % (target, ENGINE_PORT))
    assert plain.rc != 0, plain.stdout
    # Signed by the CA that stays on the controller, for the address the gateway uses.
    served = host.run("openssl s_client -connect %s -CAfile %s -verify_ip %s -verify_return_error </dev/null",
                      "%s:%d" % (target, ENGINE_PORT), CA, target)
    assert served.rc == 0 and "Verify return code: 0 (ok)" in served.stdout, served.stdout + served.stderr
    gpu = gpu_host("cluster-gpu1" if target == GPU1 else "cluster-gpu2")
    key = gpu.file("/etc/llm-appliance/vllm/tls/engine.key")
    assert (key.user, key.group, key.mode) == ("root", "vllm", 0o640)
    assert not gpu.file("/etc/llm-appliance/ca/ca.key").exists


@pytest.mark.parametrize("target", [GPU1, GPU2])
def test_engine_ports_admit_the_front_alone(host, target):
    wait_healthy(host, target)
    url = "https://%s:%d/health" % (target, ENGINE_PORT)
    other = gpu_host("cluster-gpu2" if target == GPU1 else "cluster-gpu1")
    refused = other.run("curl -sS --max-time 5 %s", url)
    # Dropped by the input filter: the connection times out (curl 28) rather than being refused.
    assert refused.rc == 28, (refused.rc, refused.stderr)
    # nft lists a one-element set without braces.
    assert "tcp dport %d ip saddr %s accept" % (ENGINE_PORT, FRONT) in gpu_host(
        "cluster-gpu1" if target == GPU1 else "cluster-gpu2").check_output("nft list table inet llm_appliance")


# What a client on a GPU host gets from PostgreSQL at the front: the server's first answer to a
# startup message, in plain TCP and after TLS, the server's certificate checked against the internal
# CA for the name or address asked for, as libpq's sslmode=verify-full does (python3 alone: no
# client is installed there).
PG_PROBE = r"""
import socket, ssl, struct, sys
def startup():
    body = struct.pack("!I", 196608) + b"user\0llm_gpu_sampler\0database\0llm_appliance\0\0"
    return struct.pack("!I", len(body) + 4) + body
def answer(sock):
    kind = sock.recv(1)
    length = struct.unpack("!I", sock.recv(4))[0]
    data = sock.recv(length - 4)
    if kind == b"R":
        return "auth %d %s" % (struct.unpack("!I", data[:4])[0], data[4:].split(b"\0")[0].decode())
    return "error " + data.decode(errors="replace")
sock = socket.create_connection((sys.argv[1], 5432), timeout=10)
if sys.argv[2] == "tls":
    sock.sendall(struct.pack("!II", 8, 80877103))
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context(cafile="/etc/llm-appliance/ca/ca.crt")
    try:
        sock = context.wrap_socket(sock, server_hostname=sys.argv[3])
    except ssl.SSLCertVerificationError as exc:
        sys.exit("certificate refused: %s" % exc.verify_message)
sock.sendall(startup())
print(answer(sock))
"""


def test_the_database_admits_the_gpu_hosts_over_verified_tls_with_scram_only(host):
    sockets = {s for s in host.socket.get_listening_sockets() if s.endswith(":5432")}
    assert "tcp://%s:5432" % FRONT in sockets
    gpu1 = gpu_host("cluster-gpu1")
    plain = gpu1.check_output("python3 -c %s %s plain", PG_PROBE, FRONT)
    assert plain.startswith("error ") and "no encryption" in plain, plain
    # Over TLS the server asks for SCRAM (authentication request 10, SASL; -PLUS binds it to the channel).
    assert gpu1.check_output("python3 -c %s %s tls %s", PG_PROBE, FRONT, FRONT).startswith("auth 10 SCRAM-SHA-256")
    # Its certificate is the internal CA's for the front's address, and for nothing else.
    other = gpu1.run("python3 -c %s %s tls %s", PG_PROBE, FRONT, "db.elsewhere.internal")
    assert other.rc != 0 and "certificate refused" in other.stderr and "mismatch" in other.stderr, other.stderr
