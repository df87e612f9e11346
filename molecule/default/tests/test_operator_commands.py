"""The README's playbook commands, run as an operator runs them: from a plain shell in the
checkout with the controller's venv activated (no Makefile variables, no molecule inventory),
against the converged demo. Each documented tag works alone and changes nothing; so does the
`--check --diff` run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


def documented_tags():
    """The tags of the README's sentence "Plays, each runnable alone with its tag: `a`, `b`, ..."."""
    readme = (REPO / "README.md").read_text()
    sentence = re.search(r"Plays, each runnable alone with its tag:(.*?)\(`ansible-playbook", readme, re.S)
    assert sentence, "README.md no longer lists the plays' tags"
    return re.findall(r"`([a-z_]+)`", sentence.group(1))


def run_as_operator(*args):
    """ansible-playbook from a shell that only activated the venv (`. .venv/bin/activate`)."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(["ansible-playbook", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def changed_tasks(output):
    """The tasks that reported a change, for the failure message."""
    found, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:") and task:
            found.append(task)
    return found


def recap_changed(output):
    match = re.search(r"^appliance\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", output, re.M)
    assert match, "no clean recap for the appliance:\n" + output[-3000:]
    return int(match.group(1))


def test_readme_documents_the_plays_tags():
    assert documented_tags() == ["preflight", "base", "gpu", "database", "report", "models", "serving",
                                 "gateway", "chat", "edge", "firewall", "monitoring"]


@pytest.mark.parametrize("tag", documented_tags())
def test_documented_tag_runs_alone_and_changes_nothing(tag):
    result = run_as_operator("site.yml", "-i", "inventory/demo", "--tags", tag)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert recap_changed(output) == 0, changed_tasks(output)


def test_check_diff_on_the_converged_appliance_predicts_no_change():
    result = run_as_operator("site.yml", "-i", "inventory/demo", "--check", "--diff")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert recap_changed(output) == 0, changed_tasks(output)
