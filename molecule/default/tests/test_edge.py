"""Chat and edge on the appliance: nginx is the only door (TLS 1.2+, both names, the internal CA
handed back to the controller, onboarding page, JSON access log, failover between gateway
instances, a broken reload that keeps serving), Open WebUI runs hardened on loopback with its
data in PostgreSQL, and nothing else listens beyond loopback."""
import json
import pathlib
import re
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CHAT, API = "chat.demo.internal", "api.demo.internal"
CA = "/etc/llm-appliance/ca/ca.crt"
GATEWAY_KEY = "sk-demo-open-webui-service-key"
ADMIN = {"email": "admin@demo.internal", "password": "demo-admin-password"}


def https(host, name, path, *args):
    """curl through nginx on 127.0.0.1 with the name's SNI, trusting only the appliance's CA.
    Returns (status, body, command); status 0 when no HTTP answer came (a refused handshake)."""
    host.run("rm -f /tmp/edge-body")
    extra = " %s" * len(args)  # testinfra quotes each argument on its own
    cmd = host.run("curl -sS -o /tmp/edge-body -w '%%{http_code}' --max-time 30 --cacert %s --resolve %s:443:127.0.0.1"
                   + extra + " https://%s%s", CA, name, *args, name, path)
    body = host.run("cat /tmp/edge-body 2>/dev/null").stdout
    return int(cmd.stdout or 0), body, cmd


# --- Listening sockets of the appliance's units. The container shares this machine's network, so
# `ss` also shows the machine's own sockets; a socket's cgroup names the unit that owns it
# (.../system.slice/<unit>), which sorts them out without reading other users' /proc entries.

def appliance_listeners(host):
    """(address, port, unit) of every listening TCP and UDP socket owned by a systemd unit."""
    rows = []
    for line in host.run("ss -H -tulne").stdout.splitlines():
        cgroup = re.search(r"cgroup:(\S*/system\.slice/\S+)", line)
        if not cgroup:
            continue
        address, _, port = line.split()[4].rpartition(":")
        # Template units sit one slice deeper (system-postgresql.slice/postgresql@15-main.service).
        rows.append((address.strip("[]").split("%")[0], int(port), cgroup.group(1).rsplit("/", 1)[-1]))
    return rows


def loopback(address):
    return address == "::1" or address.startswith("127.")


def test_only_nginx_listens_beyond_loopback(host):
    exposed = {(port, unit) for address, port, unit in appliance_listeners(host) if not loopback(address)}
    assert exposed <= {(80, "nginx.service"), (443, "nginx.service"), (22, "ssh.service")}, exposed
    assert (443, "nginx.service") in exposed


def test_services_listen_on_loopback(host):
    by_unit = {}
    for address, port, unit in appliance_listeners(host):
        by_unit.setdefault(unit, set()).add((address, port))
    expected = {"open-webui.service": 8080, "postgresql@15-main.service": 5432, "litellm@1.service": 4000,
                "litellm@2.service": 4001, "redis-server.service": 6379}
    for unit, port in expected.items():
        assert port in {p for _, p in by_unit.get(unit, ())}, (unit, by_unit.get(unit))
    for unit, sockets in by_unit.items():
        if unit != "nginx.service":
            assert all(loopback(address) for address, _ in sockets), (unit, sockets)


# --- nginx and TLS.

def test_nginx_running_enabled_and_config_valid(host):
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0


def test_both_names_answer_with_the_internal_ca(host):
    for name in (CHAT, API):
        status, body, cmd = https(host, name, "/edge-health")
        assert (status, body.strip()) == (200, "ok"), cmd.stderr


# A second nginx, configured as the appliance's must not be (TLS 1.1 allowed, no
# ssl_reject_handshake), shows that each probe below sees the fault it guards against.
WEAK_NGINX = """error_log /tmp/weak-nginx.err;
# As root, nginx hands its temporary directories to its worker user: the appliance's, not nobody.
user www-data;
pid /tmp/weak-nginx.pid;
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:8443 ssl default_server;
        server_name _;
        ssl_certificate /etc/nginx/llm-appliance-tls/server.crt;
        ssl_certificate_key /etc/nginx/llm-appliance-tls/server.key;
        ssl_protocols TLSv1.1 TLSv1.2;
        ssl_ciphers DEFAULT:@SECLEVEL=0;
        return 200;
    }
}
"""


@pytest.fixture(scope="module")
def weak_nginx(host):
    host.run("cat > /tmp/weak-nginx.conf <<'EOF'\n%sEOF" % WEAK_NGINX)
    started = host.run("nginx -c /tmp/weak-nginx.conf")
    assert started.rc == 0, started.stderr
    yield 8443
    host.run("kill $(cat /tmp/weak-nginx.pid)")


def tls11_negotiated(host, port):
    """Offer TLS 1.1 only, with the client's own floor lowered (OpenSSL 3 refuses 1.1 by itself)."""
    out = host.run("openssl s_client -connect 127.0.0.1:%s -servername %s -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' "
                   "</dev/null 2>&1", str(port), API).stdout
    # s_client prints the session's protocol either way; a cipher is named only after a handshake.
    cipher = re.search(r"^New, \S+, Cipher is (\S+)", out, re.M)
    return "Protocol  : TLSv1.1" in out and bool(cipher) and cipher.group(1) != "(NONE)"


def certificate_for_unknown_name(host, port):
    out = host.run("openssl s_client -connect 127.0.0.1:%s -servername other.demo.internal </dev/null 2>&1",
                   str(port)).stdout
    return "BEGIN CERTIFICATE" in out and "no peer certificate available" not in out


def test_tls_below_1_2_is_refused(host, weak_nginx):
    assert tls11_negotiated(host, weak_nginx), "the probe cannot see TLS 1.1 being accepted"
    assert not tls11_negotiated(host, 443)
    status, _, _ = https(host, API, "/edge-health", "--tlsv1.2", "--tls-max", "1.2")
    assert status == 200


def test_unknown_name_gets_no_certificate(host, weak_nginx):
    assert certificate_for_unknown_name(host, weak_nginx), "the probe cannot see a certificate being served"
    assert not certificate_for_unknown_name(host, 443)
    # The names the appliance serves still get theirs.
    assert https(host, API, "/edge-health")[0] == 200


def test_port_80_redirects_to_https(host):
    cmd = host.run("curl -sS -o /dev/null -w '%%{http_code} %%{redirect_url}' -H 'Host: %s' http://127.0.0.1/x", CHAT)
    assert cmd.stdout == "301 https://%s/x" % CHAT


def test_the_ca_lives_on_the_controller_and_only_its_certificate_on_the_host(host):
    on_host = host.file(CA)
    assert on_host.mode == 0o644
    assert host.run("ls /etc/llm-appliance/ca").stdout.split() == ["ca.crt"]
    # Older releases' directory (with the CA's key) is gone.
    assert not host.file("/etc/llm-appliance/edge-ca").exists
    assert host.run("find /etc /var /opt /root -xdev -name ca.key 2>/dev/null").stdout.strip() == ""
    assert (ROOT / "build" / "edge" / "demo-ca.crt").read_text() == on_host.content_string
    controller_key = ROOT / "build" / "ca" / "demo" / "ca.key"
    assert "BEGIN ENCRYPTED PRIVATE KEY" in controller_key.read_text()
    constraints = host.run("openssl x509 -in %s -noout -ext nameConstraints", CA).stdout
    assert "Permitted" in constraints and "DNS:demo.internal" in constraints


def test_server_certificate_names_and_key(host):
    text = host.run("openssl x509 -in /etc/nginx/llm-appliance-tls/server.crt -noout -ext subjectAltName").stdout
    assert "DNS:%s" % CHAT in text and "DNS:%s" % API in text
    assert host.run("openssl verify -CAfile %s /etc/nginx/llm-appliance-tls/server.crt", CA).rc == 0
    # nginx runs as www-data from the start and reads the key at every reload: its group, no one else.
    key = host.file("/etc/nginx/llm-appliance-tls/server.key")
    assert (key.mode, key.user, key.group) == (0o640, "root", "www-data")
    assert host.run("runuser -u open-webui -- cat /etc/nginx/llm-appliance-tls/server.key").rc != 0


def test_onboarding_page(host):
    status, page, _ = https(host, API, "/")
    assert status == 200
    assert "https://%s/v1" % API in page and "https://%s/" % CHAT in page
    assert '<code id="chat-model">chat</code>' in page and '<code id="code-model">code</code>' in page
    assert "YOUR_KEY" in page
    fingerprint = host.run("openssl x509 -in %s -noout -fingerprint -sha256", CA).stdout.split("=", 1)[1].strip()
    assert fingerprint in page
    status, served_ca, _ = https(host, API, "/ca.crt")
    assert status == 200 and served_ca == host.file(CA).content_string


def test_access_log_is_json(host):
    https(host, API, "/edge-health-not-logged-probe")
    last = host.file("/var/log/nginx/access.json.log").content_string.strip().splitlines()[-1]
    entry = json.loads(last)
    assert entry["host"] == API and entry["uri"] == "/edge-health-not-logged-probe" and entry["status"] == 404


def test_broken_config_on_reload_keeps_the_old_one_serving(host):
    conf = "/etc/nginx/nginx.conf"
    assert host.run("cp -p %s /tmp/nginx.conf.good", conf).rc == 0
    try:
        host.run("sed -i 's/proxy_pass http:\\/\\/llm_gateway;/proxy_pass http:\\/\\/nowhere/' %s", conf)
        assert host.run("nginx -t").rc != 0  # what the role's reload handler runs first
        host.run("systemctl reload nginx")
        time.sleep(1)
        status, _, _ = https(host, CHAT, "/edge-health")
        assert status == 200
    finally:
        host.run("cp -p /tmp/nginx.conf.good %s && systemctl reload nginx", conf)
    assert host.run("nginx -t").rc == 0


def gateway_units(host):
    return [u for u in ("litellm@1", "litellm@2") if host.run("systemctl cat %s.service", u).rc == 0]


def test_api_survives_restarting_one_gateway_instance(host):
    if len(gateway_units(host)) < 2:
        pytest.skip("the gateway's two instances are not deployed")
    host.run("systemctl restart --no-block litellm@1.service")
    statuses = []
    for _ in range(20):
        statuses.append(https(host, API, "/v1/models", "-H", "Authorization: Bearer %s" % GATEWAY_KEY)[0])
        time.sleep(0.5)
    # Leave both instances serving for the tests that follow.
    for _ in range(120):
        if host.run("curl -sf -o /dev/null http://127.0.0.1:4000/health/liveliness").rc == 0:
            break
        time.sleep(1)
    assert statuses == [200] * 20


# --- Firewall: rendered and checked, not loaded in the demo (shared network namespace).

def test_ruleset_written_and_valid(host):
    ruleset = host.file("/etc/nftables.d/llm-appliance.nft")
    assert ruleset.exists and ruleset.mode == 0o644
    assert "policy drop" in ruleset.content_string
    assert host.run("unshare --user --map-root-user --net nft -c -f /etc/nftables.d/llm-appliance.nft").rc == 0


# --- Open WebUI.

def test_open_webui_running_hardened_on_loopback(host):
    service = host.service("open-webui")
    assert service.is_running and service.is_enabled
    assert host.run("systemctl show -p User --value open-webui").stdout.strip() == "open-webui"
    score = host.run("systemd-analyze security open-webui.service").stdout
    exposure = float(re.search(r"Overall exposure level for open-webui.service: ([0-9.]+)", score).group(1))
    assert exposure <= 2.0, score


def test_open_webui_environment_is_private(host):
    env = host.file("/etc/llm-appliance/open-webui.env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    content = env.content_string
    for line in ("ENABLE_PERSISTENT_CONFIG=False", "ENABLE_OLLAMA_API=False", "DEFAULT_USER_ROLE=pending",
                 "ENABLE_FORWARD_USER_INFO_HEADERS=True", "OPENAI_API_BASE_URLS=http://127.0.0.1:4080/v1",
                 "OFFLINE_MODE=true", "ENABLE_CODE_EXECUTION=False", "BYPASS_EMBEDDING_AND_RETRIEVAL=True"):
        assert line in content.splitlines(), line


def test_open_webui_ready_and_its_data_in_postgresql(host, psql):
    assert host.run("curl -sf http://127.0.0.1:8080/health/db").rc == 0
    assert psql('SELECT count(*) FROM "user" WHERE role = \'admin\'', database="open_webui") == "1"
    assert host.file("/var/lib/llm-appliance/open-webui/data/webui.db").exists is False


def test_open_webui_signups_open_and_pending(host):
    config = json.loads(host.run("curl -sf http://127.0.0.1:8080/api/config").stdout)
    assert config["features"]["enable_signup"] is True


def test_admin_from_the_vault_signs_in(host):
    cmd = host.run("curl -sf -H 'Content-Type: application/json' -d %s http://127.0.0.1:8080/api/v1/auths/signin",
                   json.dumps(ADMIN))
    assert cmd.rc == 0
    assert json.loads(cmd.stdout)["role"] == "admin"


def _headers(host, name, path):
    """The answer's headers (lower-cased name -> values) through nginx."""
    cmd = host.run("curl -sS -o /dev/null -D - --max-time 30 --cacert %s --resolve %s:443:127.0.0.1 https://%s%s",
                   CA, name, name, path)
    found = {}
    for line in cmd.stdout.splitlines()[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            found.setdefault(key.strip().lower(), []).append(value.strip())
    return found


def test_the_chat_and_the_api_send_security_headers_once(host):
    """The real chat behind nginx: nginx's headers, each once (the chat's own copies are dropped)."""
    for name, path in ((CHAT, "/"), (CHAT, "/api/config"), (API, "/"), (API, "/v1/models")):
        headers = _headers(host, name, path)
        for header in ("strict-transport-security", "x-content-type-options", "x-frame-options", "referrer-policy",
                       "content-security-policy", "permissions-policy", "cross-origin-opener-policy"):
            assert len(headers.get(header, [])) == 1, (name, path, header, headers.get(header))
        assert headers["x-frame-options"] == ["SAMEORIGIN"]


def test_nginx_runs_as_www_data_with_one_capability(host):
    main_pid = host.run("systemctl show -P MainPID nginx.service").stdout.strip()
    users = set(host.run("ps -o user= --ppid %s -p %s", main_pid, main_pid).stdout.split())
    assert users == {"www-data"}, users
    status = host.file("/proc/%s/status" % main_pid).content_string
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    assert effective == 1 << 10  # CAP_NET_BIND_SERVICE alone


def test_logrotate_makes_nginx_write_to_the_new_log(host):
    log = "/var/log/nginx/access.json.log"
    rotated = host.run("logrotate -f /etc/logrotate.d/nginx")
    assert rotated.rc == 0, rotated.stderr
    https(host, API, "/?after-rotation")
    for _ in range(20):
        if "after-rotation" in host.file(log).content_string:
            break
        time.sleep(0.2)
    assert "after-rotation" in host.file(log).content_string
    assert host.file(log).user == "www-data"


def test_nginx_t_as_root_leaves_nginx_its_temporary_directories(host):
    """Operators run `nginx -t` as root; nginx then hands its temporary directories to its
    configured user, which must be the one it runs as."""
    assert host.run("nginx -t").rc == 0
    for name in ("body", "proxy"):
        assert host.file("/var/lib/nginx/" + name).user == "www-data", name
