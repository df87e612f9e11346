"""Preflight refuses bad input before any host is touched.

The playbook runs for real against this machine (connection local); the only thing it does
to a host is gather facts, so a refused run leaves nothing behind.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def run_preflight(inventory_dir, *extra_args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(REPO / "playbooks/preflight.yml"), "-i", str(inventory_dir), *extra_args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture()
def local_site(tmp_path):
    """A copy of the demo site whose one host is this machine."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "inventory/demo/group_vars", site / "group_vars")
    (site / "hosts.yml").write_text(json.dumps({
        "all": {"hosts": {"controller": {"ansible_connection": "local",
                                         "ansible_python_interpreter": sys.executable}}}}))
    return site


def test_demo_site_passes_on_a_supported_system(local_site):
    result = run_preflight(local_site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "changed=0" in result.stdout


def test_unsupported_system_stops_with_the_supported_list(local_site):
    result = run_preflight(local_site, "-e", json.dumps({"preflight_supported_systems": {"Ubuntu": ["22", "24"]}}))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "which llm-appliance does not support" in output
    assert "Supported systems: Ubuntu 22/24" in output
    assert "Nothing was changed on the host" in output
    # Preflight stopped the play at once: the vault check never ran.
    assert "Find vault variables" not in output


def test_missing_vault_variable_is_named(local_site):
    vault = local_site / "group_vars/all/vault.yml"
    kept = [line for line in vault.read_text().splitlines() if not line.startswith("vault_postgresql_report_password")]
    vault.write_text("\n".join(kept) + "\n")
    result = run_preflight(local_site)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Missing or placeholder vault variable(s) for controller: vault_postgresql_report_password." in output
    assert "ansible-vault encrypt" in output


def test_placeholder_secret_is_refused(local_site):
    vault = local_site / "group_vars/all/vault.yml"
    vault.write_text(vault.read_text().replace("demo-webui-db-password", "CHANGE-ME"))
    result = run_preflight(local_site)
    assert result.returncode != 0
    assert "vault variable(s) for controller: vault_postgresql_open_webui_password." in result.stdout + result.stderr


def test_secrets_stay_out_of_the_output(local_site):
    result = run_preflight(local_site, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-gateway-db-password" not in result.stdout + result.stderr
