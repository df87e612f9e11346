"""nginx as the edge role configures it, run for real on high ports with stand-in upstreams:
TLS 1.2+ only, names, streaming without buffering, websockets, limits, failover between gateway
instances, JSON access log, and a broken reload that leaves the old configuration serving."""
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from tests.edge.conftest import API_NAME, CHAT_NAME, HERE, make_pki

HTTPS_PORT, HTTP_PORT = 19543, 19580
GATEWAYS = (19511, 19512)
CHAT_PORT = 19513
BALANCED_PORT = 19514


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("nothing listens on %d" % port)


@pytest.fixture()
def upstreams(tmp_path):
    log = tmp_path / "upstreams.log"
    procs = {}
    for port, name in ((GATEWAYS[0], "gw1"), (GATEWAYS[1], "gw2"), (CHAT_PORT, "chat")):
        procs[name] = subprocess.Popen([sys.executable, str(HERE / "fake_gateway.py"), str(port), str(log), name])
    for port in GATEWAYS + (CHAT_PORT,):
        wait_port(port)
    yield procs, log
    for proc in procs.values():
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The certificates, pages, logs and state of the edge under test: one set for the module, so
    that the configuration (whose paths name them) is rendered once per set of variables."""
    root = tmp_path_factory.mktemp("edge")
    for d in ("www", "log", "state"):
        (root / d).mkdir()
    (root / "www" / "index.html").write_text("onboarding\n")
    make_pki(root / "pki")
    return root


@pytest.fixture()
def edge(request, site, render, nginx_bin, upstreams):
    """nginx with the rendered configuration; yields (nginx -p prefix args, paths). A test's
    `edge_vars` mark adds variables to the rendering."""
    marker = request.node.get_closest_marker("edge_vars")
    pki = site / "pki"
    out = render(edge_tls_dir=str(pki), edge_www_dir=str(site / "www"), edge_log_dir=str(site / "log"),
                 edge_nginx_state_dir=str(site / "state"), edge_listen_ipv4="127.0.0.1", edge_listen_ipv6="",
                 edge_https_port=HTTPS_PORT, edge_http_port=HTTP_PORT,
                 edge_gateway_upstreams=["127.0.0.1:%d" % p for p in GATEWAYS],
                 edge_chat_upstream="127.0.0.1:%d" % CHAT_PORT, edge_api_max_body_size="1m",
                 # Not the appliance's own port: a demo on this machine may hold it.
                 edge_gateway_balanced_port=BALANCED_PORT,
                 # Workers as root when the test runs as root: nobody could not read tmp_path.
                 edge_nginx_user="root" if os.geteuid() == 0 else "nobody", **(marker.kwargs if marker else {}))
    conf = out / "nginx.conf"
    base = [nginx_bin, "-c", str(conf), "-e", str(site / "log" / "startup.log"),
            "-g", "pid %s;" % (site / "nginx.pid")]
    test = subprocess.run(base + ["-t"], capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stderr
    subprocess.run(base, check=True)
    wait_port(HTTPS_PORT)
    yield {"base": base, "conf": conf, "log": site / "log", "pid": site / "nginx.pid", "pki": pki}
    pid = int((site / "nginx.pid").read_text())
    os.kill(pid, signal.SIGQUIT)
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)


def curl(edge, name, path, *args, port=HTTPS_PORT, scheme="https"):
    cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20",
           "--cacert", str(edge["pki"] / "ca.crt"), "--resolve", "%s:%d:127.0.0.1" % (name, port), *args,
           "%s://%s:%d%s" % (scheme, name, port, path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    body, _, status = proc.stdout.rpartition("\n")
    return int(status or 0), body, proc


def test_api_name_reaches_the_gateway(edge):
    status, body, _ = curl(edge, API_NAME, "/v1/models", "-H", "Authorization: Bearer k")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "tiny-llama"


def test_api_root_serves_the_onboarding_page(edge):
    status, body, _ = curl(edge, API_NAME, "/")
    assert (status, body.strip()) == (200, "onboarding")


def test_chat_name_reaches_the_chat_server(edge, upstreams):
    _, log = upstreams
    status, _, _ = curl(edge, CHAT_NAME, "/some/page")
    assert status == 200
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["instance"] == "chat"
    assert last["headers"]["Host"] == CHAT_NAME
    assert last["headers"]["X-Forwarded-Proto"] == "https"


def test_tls_1_1_is_refused_1_2_and_1_3_accepted(edge):
    for version, ok in (("--tlsv1.1", False), ("--tlsv1.2", True), ("--tlsv1.3", True)):
        maximum = {"--tlsv1.1": "1.1", "--tlsv1.2": "1.2", "--tlsv1.3": "1.3"}[version]
        status, _, proc = curl(edge, API_NAME, "/edge-health", version, "--tls-max", maximum)
        assert (status == 200) == ok, (version, proc.stderr)


def test_unknown_name_gets_no_handshake(edge):
    context = ssl.create_default_context(cafile=str(edge["pki"] / "ca.crt"))
    with (socket.create_connection(("127.0.0.1", HTTPS_PORT)) as raw, pytest.raises(ssl.SSLError),
          context.wrap_socket(raw, server_hostname="other.demo.internal")):
        pass


def test_port_80_redirects_to_https(edge):
    status, _, proc = curl(edge, CHAT_NAME, "/x?y=1", "-D", "-", port=HTTP_PORT, scheme="http")
    assert status == 301
    assert "Location: https://%s/x?y=1" % CHAT_NAME in proc.stdout


def test_streaming_is_not_buffered(edge):
    """The stand-in sends one event every 0.5 s: each must arrive as it is sent."""
    cmd = ["curl", "-sSN", "--cacert", str(edge["pki"] / "ca.crt"),
           "--resolve", "%s:%d:127.0.0.1" % (API_NAME, HTTPS_PORT), "-H", "Content-Type: application/json",
           "-d", json.dumps({"model": "tiny-llama", "stream": True, "messages": []}),
           "https://%s:%d/v1/chat/completions" % (API_NAME, HTTPS_PORT)]
    start = time.monotonic()
    arrivals = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 7
    assert arrivals[0] < 1.0, arrivals
    assert arrivals[-1] - arrivals[0] > 2.0, arrivals


def test_websocket_upgrade_is_passed_on(edge, upstreams):
    _, log = upstreams
    curl(edge, CHAT_NAME, "/ws/socket.io/", "--http1.1", "-H", "Upgrade: websocket", "-H", "Connection: Upgrade",
         "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["headers"]["Upgrade"] == "websocket"
    assert last["headers"]["Connection"].lower() == "upgrade"


def test_request_body_over_the_limit_is_refused(edge, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * (2 * 1024 * 1024))
    status, _, _ = curl(edge, API_NAME, "/v1/chat/completions", "--data-binary", "@%s" % big)
    assert status == 413


def test_one_gateway_instance_down_loses_no_request(edge, upstreams):
    procs, log = upstreams
    procs["gw1"].terminate()
    procs["gw1"].wait()
    statuses = [curl(edge, API_NAME, "/v1/chat/completions", "-H", "Content-Type: application/json",
                     "-d", json.dumps({"model": "tiny-llama", "messages": []}))[0] for _ in range(6)]
    assert statuses == [200] * 6
    served = [json.loads(line)["instance"] for line in log.read_text().splitlines()
              if json.loads(line)["method"] == "POST"]
    assert served[-6:] == ["gw2"] * 6


def test_access_log_is_json_without_credentials(edge):
    curl(edge, API_NAME, "/v1/models", "-H", "Authorization: Bearer secret-key-123")
    lines = (edge["log"] / "access.json.log").read_text().splitlines()
    entry = json.loads(lines[-1])
    assert entry["host"] == API_NAME and entry["uri"] == "/v1/models" and entry["status"] == 200
    assert entry["upstream"].startswith("127.0.0.1:")
    assert entry["tls"] in ("TLSv1.2", "TLSv1.3")
    assert "secret-key-123" not in "\n".join(lines)


def test_broken_reload_leaves_the_old_configuration_serving(edge):
    conf = edge["conf"]
    good = conf.read_text()
    conf.write_text(good.replace("proxy_pass http://llm_gateway;", "proxy_pass http://no_such_upstream"))
    try:
        check = subprocess.run(edge["base"] + ["-t"], capture_output=True, text=True, check=False)
        assert check.returncode != 0  # what the role's handler runs before any reload
        # Even a reload forced past the check: the master refuses the new file and keeps serving.
        subprocess.run(edge["base"] + ["-s", "reload"], capture_output=True, check=False)
        time.sleep(1)
        status, _, _ = curl(edge, API_NAME, "/v1/models")
        assert status == 200
    finally:
        conf.write_text(good)


SECURITY_HEADERS = ("strict-transport-security", "x-content-type-options", "x-frame-options", "referrer-policy",
                    "content-security-policy", "permissions-policy", "cross-origin-opener-policy")


def headers_of(proc):
    """The last response's headers (curl -D -) as a lower-cased name -> [values] dict."""
    found, in_block = {}, False
    for line in proc.stdout.splitlines():
        line = line.rstrip("\r")
        if line.startswith("HTTP/"):
            found, in_block = {}, True
        elif in_block and not line:
            in_block = False
        elif in_block:
            name, _, value = line.partition(":")
            found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name, path", [(CHAT_NAME, "/"), (CHAT_NAME, "/_app/x.js"), (API_NAME, "/"),
                                        (API_NAME, "/v1/models")])
def test_security_headers_on_every_route(edge, name, path):
    status, _, proc = curl(edge, name, path, "-D", "-", "-H", "Authorization: Bearer k")
    assert status == 200
    headers = headers_of(proc)
    missing = [h for h in SECURITY_HEADERS if h not in headers]
    assert not missing, (name, path, missing)
    assert headers["x-content-type-options"] == ["nosniff"]
    assert headers["x-frame-options"] == ["SAMEORIGIN"]
    assert "frame-ancestors 'self'" in headers["content-security-policy"][0]


def test_security_headers_on_the_apis_own_error_answers(edge):
    """nginx drops server-level headers in a location that adds one of its own (Retry-After)."""
    # Keyless requests: 1 r/s with a burst of 10; these come faster than that.
    for _ in range(20):
        status, _, proc = curl(edge, API_NAME, "/v1/models", "-D", "-")
        if status == 429:
            break
    assert status == 429
    headers = headers_of(proc)
    assert headers.get("retry-after") == ["1"]
    assert headers.get("x-content-type-options") == ["nosniff"], headers


def test_an_upstreams_own_security_header_is_not_sent_twice(edge):
    # The stand-in sends none; nginx must send exactly one of each.
    status, _, proc = curl(edge, CHAT_NAME, "/page", "-D", "-")
    assert status == 200
    assert all(len(values) == 1 for name, values in headers_of(proc).items() if name in SECURITY_HEADERS)


@pytest.mark.edge_vars(edge_upload_timeout="2s", edge_page_timeout="2s")
def test_uploads_and_pages_are_cut_early_conversations_are_not(edge):
    """Per route: an upload whose answer takes longer than the upload timeout gets 504 at that
    timeout; a conversation that is silent as long is waited for."""
    started = time.monotonic()
    status, _, _ = curl(edge, CHAT_NAME, "/api/v1/files/?delay=4", "-d", "x")
    assert status == 504
    assert time.monotonic() - started < 3.5
    status, _, _ = curl(edge, CHAT_NAME, "/_app/immutable/x.js?delay=4")
    assert status == 504
    status, body, _ = curl(edge, CHAT_NAME, "/api/chat/completions?delay=4", "-d", "{}")
    assert status == 200, body
    status, body, _ = curl(edge, API_NAME, "/v1/chat/completions?delay=4", "-H", "Authorization: Bearer k",
                           "-H", "Content-Type: application/json", "-d", json.dumps({"model": "tiny-llama"}))
    assert status == 200, body


@pytest.mark.edge_vars(edge_upload_timeout="2s")
def test_a_stalled_upload_body_is_cut_at_the_upload_timeout(edge):
    """A client that announces a body and stops sending it holds an upload slot only that long."""
    context = ssl.create_default_context(cafile=str(edge["pki"] / "ca.crt"))
    with socket.create_connection(("127.0.0.1", HTTPS_PORT)) as raw, \
            context.wrap_socket(raw, server_hostname=CHAT_NAME) as tls:
        tls.sendall(("POST /api/v1/files/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n\r\npart"
                     % CHAT_NAME).encode())
        tls.settimeout(10)
        started = time.monotonic()
        answer = tls.recv(4096).decode(errors="replace")
        waited = time.monotonic() - started
    # nginx closes the connection (408 is logged, not always sent) within the timeout.
    assert answer == "" or answer.startswith("HTTP/1.1 408"), answer
    assert 1.5 < waited < 5, waited
