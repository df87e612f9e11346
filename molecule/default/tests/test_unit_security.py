"""systemd-analyze security rates every unit the appliance runs or configures at 2.0 or below
(10 is fully exposed): the appliance's own units and the distribution's nginx, PostgreSQL and
Redis with the appliance's drop-ins."""
import re

import pytest

MOST = 2.0
FIXED_UNITS = ("nginx.service", "postgresql@15-main.service", "postgresql.service", "llm-appliance-pg-backup.service",
               "redis-server.service", "open-webui.service")


def exposure(host, unit, offline=False):
    offline_flag = "--offline=true " if offline else ""
    cmd = host.run("systemd-analyze security --no-pager " + offline_flag + "%s", unit)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", cmd.stdout)
    assert found, cmd.stdout[-500:] + cmd.stderr
    return float(found.group(1))


def appliance_units(host):
    listed = host.run("systemctl list-units --no-legend --plain --all 'litellm@*.service' 'vllm-*.service' "
                      "'llm-appliance-*.service'").stdout
    return sorted({line.split()[0] for line in listed.splitlines() if line.strip()} | set(FIXED_UNITS))


def test_the_check_reads_a_bare_units_exposure(host, tmp_path_factory):
    """The figure is parsed from systemd-analyze itself: a unit without a sandbox rates far above."""
    host.run("printf '[Service]\\nExecStart=/bin/true\\n' > /run/exposure-probe.service")
    try:
        assert exposure(host, "/run/exposure-probe.service", offline=True) > 9
    finally:
        host.run("rm -f /run/exposure-probe.service")


def test_every_unit_is_rated_2_or_below(host):
    units = appliance_units(host)
    assert {"litellm@1.service", "nginx.service"} <= set(units), units
    assert any(unit.startswith("vllm-") for unit in units), units
    rated = {unit: exposure(host, unit) for unit in units}
    over = {unit: level for unit, level in rated.items() if level > MOST}
    assert not over, rated


@pytest.mark.parametrize("unit", ["nginx.service", "postgresql@15-main.service"])
def test_nginx_and_postgresql_run_without_root(host, unit):
    user = host.run("systemctl show -P User %s", unit).stdout.strip()
    assert user in ("www-data", "postgres")
    main_pid = host.run("systemctl show -P MainPID %s", unit).stdout.strip()
    owner = host.run("ps -o user= -p %s", main_pid).stdout.strip()
    assert owner == user, (unit, owner)
