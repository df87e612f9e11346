"""ansible-playbook from the controller's venv, as the tests that run plays against the scenario's
container need it."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_playbook(playbook, *args, inventory=None, timeout=900, env=None):
    """Run REPO/playbook with the molecule inventory (or `inventory`) and the project's ansible.cfg;
    return the completed process (output captured, exit status not checked)."""
    environment = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **(env or {}))
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i",
         inventory or os.environ["MOLECULE_INVENTORY_FILE"], str(REPO / playbook), *args],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout, check=False)
