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


def test_refusal_says_why_a_known_system_is_refused(local_site):
    extra = {"preflight_supported_systems": {"Ubuntu": ["24"]},
             "preflight_unsupported_reasons": {"Debian-12": "its Python cannot run the engine"}}
    result = run_preflight(local_site, "-e", json.dumps(extra))
    assert result.returncode != 0
    assert "which llm-appliance does not support: its Python cannot run the engine." in result.stdout + result.stderr


def test_ubuntu_2204_is_refused_for_its_python():
    defaults = (REPO / "roles/preflight/defaults/main.yml").read_text()
    assert "Ubuntu-22: >-\n    its Python is 3.10, and vLLM 0.32 requires Python 3.11" in defaults


@pytest.fixture()
def example_site(tmp_path):
    """inventory/example (4x H100 declared, CUDA engine) with this machine as its GPU host."""
    site = tmp_path / "example"
    shutil.copytree(REPO / "inventory/example", site)
    vault = site / "group_vars/all/vault.yml"
    vault.write_text(vault.read_text().replace("CHANGE-ME", "test-secret"))
    controller = {"controller": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    (site / "hosts.yml").write_text(json.dumps({"all": {"children": {
        group: {"hosts": controller} for group in ("gpu_hosts", "gateway_hosts", "chat_hosts", "db_hosts")}}}))
    return site


def test_preflight_plans_the_example_catalog(example_site):
    result = run_preflight(example_site)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "qwen-coder (completion): GPUs [0, 1], TP 2, port 8001" in output
    assert "vLLM 0.32.0 (CUDA 13.0) needs NVIDIA driver 580.65.06 or newer: branch 580, driver 580.95.05" in output
    assert "changed=0" in output


def test_catalog_that_cannot_fit_stops_preflight(example_site):
    gpus = {"driver_version": "580.95.05", "nvlink_groups": [],
            "gpus": [{"index": 0, "name": "NVIDIA L4", "memory_total_mib": 23034}]}
    result = run_preflight(example_site, "-e", json.dumps({"appliance_gpus": gpus}))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "The plan does not work, nothing was changed: model qwen-coder" in output
    # Stopped in preflight: no play after it ran.
    assert "PLAY [Prepare the hosts]" not in output


@pytest.mark.parametrize("extra, found", [
    ({"nvidia_driver_branch": "570"}, "but nvidia_driver_branch is 570: set nvidia_driver_branch to 580 or newer"),
    ({"appliance_gpus": {"driver_version": "575.51.03", "nvlink_groups": [[0, 1, 2, 3]], "gpus": [
        {"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_reserved_mib": 470}
        for i in range(4)]}},
     "but the host's GPUs report driver 575.51.03: upgrade the driver"),
])
def test_engine_that_needs_a_newer_driver_is_refused(example_site, extra, found):
    result = run_preflight(example_site, "-e", json.dumps(extra))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "vLLM 0.32.0 is built for CUDA 13.0, which needs NVIDIA driver 580.65.06 or newer" in output
    assert found in output
    assert "Nothing was changed." in output


def test_a_renamed_variable_stops_the_run_naming_its_replacement(local_site):
    (local_site / "group_vars/all/old.yml").write_text("edge_domain: old.internal\n")
    result = run_preflight(local_site)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "The inventory sets edge_domain, no longer read: edge_domain: set appliance_domain" in output
    assert "Nothing was changed on the host" in output


def test_an_unusable_user_entry_stops_the_run_naming_user_and_field(local_site):
    # main.yml is read after gateway.yml: its litellm_users wins.
    main = local_site / "group_vars/all/main.yml"
    main.write_text(main.read_text() + """
litellm_users:
  - name: carol
    key_sha256: "%s"
    expires: "31.12.2026"
  - name: dave
    key_sha256: "%s"
    rpm: lots
    colour: blue
""" % ("a" * 64, "b" * 64))
    result = run_preflight(local_site)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "litellm_users[0] (user carol): expires must be a date as YYYY-MM-DD, got '31.12.2026'" in output
    assert "litellm_users[1] (user dave): unknown field(s) colour" in output
    assert "(user dave): rpm must be a whole number" in output
    assert "nothing was changed" in output
