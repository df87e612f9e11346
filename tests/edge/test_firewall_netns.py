"""The firewall role's ruleset, loaded for real into a private network namespace (never into
this machine's own): ssh and https only from the configured networks, nothing else."""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

NS = "llmfw%d" % (os.getpid() % 100000)
HOST_IF, NS_IF = "vfwh%d" % (os.getpid() % 100000), "vfwn%d" % (os.getpid() % 100000)
# Private ranges this machine does not use (checked before the namespace is made).
ALLOWED, OTHER = "10.199.71.1", "10.199.72.1"      # this side of the veth pair
NS_ALLOWED, NS_OTHER = "10.199.71.2", "10.199.72.2"  # the appliance's side
PORTS = (22, 80, 443, 4000, 5432, 8080)

LISTENER = """
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
                                reason="needs root, iproute2 and nft to make a network namespace")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture()
def namespace(render):
    # `nobody` stands for a service's user: its connections out may reach 10.199.71.0/24 only.
    out = render(firewall_ssh_networks=["10.199.71.1/32", "2001:db8::1/128"],
                 firewall_https_networks=["10.199.71.0/24", "2001:db8::/64"],
                 firewall_service_users=["nobody", "no-such-service-user"],
                 firewall_service_egress_networks=["10.199.71.0/24"])
    ruleset = out / "llm-appliance.nft"
    if "10.199.7" in sh("ip", "-4", "addr").stdout + sh("ip", "-4", "route").stdout:
        pytest.skip("this machine already uses 10.199.7x.0/24")
    sh("ip", "netns", "add", NS)
    listener = None
    try:
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS)
        for address in (ALLOWED, OTHER):
            sh("ip", "addr", "add", address + "/24", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        for args in (("addr", "add", NS_ALLOWED + "/24", "dev", NS_IF), ("addr", "add", NS_OTHER + "/24", "dev", NS_IF),
                     ("link", "set", NS_IF, "up"), ("link", "set", "lo", "up")):
            sh("ip", "netns", "exec", NS, "ip", *args)
        loaded = sh("ip", "netns", "exec", NS, "nft", "-f", str(ruleset), check=False)
        assert loaded.returncode == 0, loaded.stderr
        # Loading twice replaces the table (what a second play run does).
        assert sh("ip", "netns", "exec", NS, "nft", "-f", str(ruleset), check=False).returncode == 0
        listener = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", LISTENER, *map(str, PORTS)],
                                    stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # duplicate address detection and the like
        yield ruleset
    finally:
        if listener:
            listener.kill()
            listener.wait()
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", NS, check=False)


def reachable(source, destination, port):
    with socket.socket() as s:
        s.settimeout(1.5)
        s.bind((source, 0))
        try:
            s.connect((destination, port))
            return True
        except (TimeoutError, ConnectionRefusedError, OSError):
            return False


def test_ruleset_has_one_table_and_a_drop_policy(namespace):
    listed = sh("ip", "netns", "exec", NS, "nft", "list", "ruleset").stdout
    assert listed.count("table inet llm_appliance") == 1
    assert "policy drop" in listed


def test_https_and_redirect_from_client_networks_only(namespace):
    assert reachable(ALLOWED, NS_ALLOWED, 443)
    assert reachable(ALLOWED, NS_ALLOWED, 80)
    assert not reachable(OTHER, NS_OTHER, 443)
    assert not reachable(OTHER, NS_OTHER, 80)


def test_ssh_from_admin_networks_only(namespace):
    assert reachable(ALLOWED, NS_ALLOWED, 22)
    assert not reachable(OTHER, NS_OTHER, 22)


@pytest.mark.parametrize("port", [4000, 5432, 8080])
def test_every_other_port_is_dropped(namespace, port):
    assert not reachable(ALLOWED, NS_ALLOWED, port)
    assert not reachable(OTHER, NS_OTHER, port)


@pytest.fixture()
def outside_listener(namespace):
    """A listener on this side of the veth pair, at both addresses: what the appliance may call out to."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def connects_out(user, destination, port):
    """From inside the appliance's namespace, as this user (the distribution's python: the venv's may
    lie where other users cannot enter)."""
    probe = sh("ip", "netns", "exec", NS, "runuser", "-u", user, "--", "/usr/bin/python3", "-c",
               "import socket; socket.create_connection((%r, %d), 2); print('ok')" % (destination, port),
               check=False)
    return probe.stdout.strip() == "ok"


def test_services_reach_only_the_site_networks(outside_listener):
    assert connects_out("nobody", ALLOWED, outside_listener)
    assert not connects_out("nobody", OTHER, outside_listener)
    chain = sh("ip", "netns", "exec", NS, "nft", "list", "chain", "inet", "llm_appliance", "output").stdout
    dropped = re.search(r"counter packets (\d+) bytes \d+ drop comment \"service egress outside the site\"", chain)
    assert dropped and int(dropped.group(1)) > 0, chain


def test_the_host_itself_is_not_restricted_outward(outside_listener):
    assert connects_out("root", OTHER, outside_listener)
    assert connects_out("root", ALLOWED, outside_listener)


def test_a_user_that_is_not_on_the_host_is_named_and_skipped(namespace):
    text = namespace.read_text()
    assert "(not on this host: no-such-service-user)" in text
    assert "elements = { 65534 }" in text


def test_loopback_inside_the_host_stays_open(namespace):
    probe = sh("ip", "netns", "exec", NS, sys.executable, "-c",
               "import socket; s=socket.create_connection(('127.0.0.1', 5432), 2); print('ok')", check=False)
    assert probe.stdout.strip() == "ok", probe.stderr
