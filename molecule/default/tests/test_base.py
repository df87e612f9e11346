"""The base role: packages, time sync, journald, users, trees, CA certificates, sysctl."""
import glob
import os

from conftest import CUDA_CHECK_UNITS


def test_systemd_is_running(host):
    assert host.run("systemctl is-system-running").stdout.strip() in {"running", "degraded"}
    failed = host.run("systemctl list-units --state=failed --no-legend --plain").stdout
    unexpected = [line for line in failed.splitlines() if line.split()[0] not in CUDA_CHECK_UNITS]
    assert unexpected == [], failed


def test_base_packages_installed(host):
    for name in ("acl", "chrony", "curl", "jq", "python3-venv", "rsync"):
        assert host.package(name).is_installed, name


def test_chrony_configured_and_enabled(host):
    conf = host.file("/etc/chrony/conf.d/llm-appliance.conf")
    assert conf.contains("server ntp.demo.invalid iburst")
    assert host.service("chrony").is_enabled


def test_journald_limits(host):
    conf = host.file("/etc/systemd/journald.conf.d/50-llm-appliance.conf")
    assert conf.mode == 0o644
    assert conf.contains("^SystemMaxUse=2G$")
    assert conf.contains("^MaxRetentionSec=1month$")
    # journald read the drop-in: its effective configuration reports the limit.
    assert "SystemMaxUse=2G" in host.run("systemd-analyze cat-config systemd/journald.conf").stdout


def test_service_users(host):
    for name in ("vllm", "litellm", "open-webui"):
        user = host.user(name)
        assert user.exists, name
        # Its own group for its secrets; the shared one only as a supplementary group.
        assert user.group == name
        assert set(user.groups) == {name, "llm-appliance"}
        assert user.shell == "/usr/sbin/nologin"
        assert user.uid < 1000, "service users are system users"
        home = host.file("/var/lib/llm-appliance/" + name)
        assert home.is_directory and home.user == name and home.group == name and home.mode == 0o750


def test_directory_trees(host):
    expected = {
        "/opt/llm-appliance": ("root", "root", 0o755),
        "/opt/llm-appliance/venvs": ("root", "root", 0o755),
        "/etc/llm-appliance": ("root", "llm-appliance", 0o750),
        "/var/lib/llm-appliance": ("root", "root", 0o755),
    }
    for path, (user, group, mode) in expected.items():
        f = host.file(path)
        assert f.is_directory, path
        assert (f.user, f.group, f.mode) == (user, group, mode), path


def test_extra_ca_certificates_trusted(host):
    """Every CA the controller trusts (the demo passes this machine's own) is in the host's bundle."""
    controller_cas = sorted(glob.glob("/usr/local/share/ca-certificates/*.crt"))
    assert controller_cas, "the demo inventory passes this machine's extra CAs; none found here"
    bundle = host.file("/etc/ssl/certs/ca-certificates.crt").content_string
    for path in controller_cas:
        name = os.path.basename(path)[: -len(".crt")]
        installed = host.file("/usr/local/share/ca-certificates/llm-appliance-%s.crt" % name)
        assert installed.exists and installed.mode == 0o644
        with open(path, encoding="ascii") as handle:
            pem_body = "".join(line.strip() for line in handle if not line.startswith("-----"))
        assert pem_body[:64] in bundle.replace("\n", ""), name


def test_sysctl_file(host):
    conf = host.file("/etc/sysctl.d/60-llm-appliance.conf")
    assert conf.contains("^net.core.somaxconn=4096$")
    assert conf.contains("^vm.swappiness=1$")
