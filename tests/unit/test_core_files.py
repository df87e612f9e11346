"""llm_appliance.core.files (collections/ansible_collections/llm_appliance/core), run by
ansible-playbook on this machine with the local connection: what it makes, what it reports, and
what it leaves alone in check mode or when a validation refuses the new content."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Declare the paths
      llm_appliance.core.files:
        absent: ["{{ root }}/old"]
        directories:
          - {path: "{{ root }}/etc/sub", mode: "0750"}
        files:
          - {dest: "{{ root }}/etc/sub/rendered.conf", template: unit.j2, vars: {item: {name: code, port: 8001}},
             mode: "0640"}
          - {dest: "{{ root }}/etc/plain.txt", content: "{{ plain }}", mode: "0644", validate: "{{ validate }}"}
          - {dest: "{{ root }}/etc/secret.env", content: "KEY=sk-not-to-be-shown\\n", mode: "0600", secret: true}
        touch:
          - {path: "{{ root }}/etc/app.log", mode: "0640"}
      register: declared

    - name: Hand the result to the test
      ansible.builtin.copy:
        content: "{{ declared | to_json }}"
        dest: "{{ root }}/../result.json"
        mode: "0644"
      check_mode: false
"""


@pytest.fixture
def site(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "unit.j2").write_text(
        "# {{ item.name }}\n{% if item.port %}\nPORT={{ item.port }}\n{% endif %}\nWHO={{ who }}\n")
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    root = tmp_path / "host"
    root.mkdir()
    (root / "old").mkdir()
    (root / "old" / "file").write_text("left from an older release\n")

    def run(*args, plain="one\n", validate="test -s %s"):
        extra = {"root": str(root), "plain": plain, "validate": validate, "who": "world",
                 "ansible_python_interpreter": sys.executable}
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        result = subprocess.run([str(ANSIBLE_PLAYBOOK), str(tmp_path / "site.yml"), "-i", "localhost,",
                                 "-e", json.dumps(extra), *args], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        output = result.stdout + result.stderr
        declared = json.loads((tmp_path / "result.json").read_text()) if result.returncode == 0 else None
        return result.returncode, output, declared

    return root, run


def test_makes_everything_once_and_then_reports_no_change(site):
    root, run = site
    rc, output, declared = run()
    assert rc == 0, output
    assert declared["changed"] is True
    assert declared["changed_paths"] == [f"{root}/old", f"{root}/etc/sub", f"{root}/etc/sub/rendered.conf",
                                         f"{root}/etc/plain.txt", f"{root}/etc/secret.env", f"{root}/etc/app.log"]
    assert not (root / "old").exists()
    assert (root / "etc/sub/rendered.conf").read_text() == "# code\nPORT=8001\nWHO=world\n"
    assert oct((root / "etc/sub/rendered.conf").stat().st_mode & 0o777) == "0o640"
    assert oct((root / "etc/sub").stat().st_mode & 0o777) == "0o750"
    assert oct((root / "etc/secret.env").stat().st_mode & 0o777) == "0o600"
    assert (root / "etc/app.log").read_text() == ""

    (root / "etc/app.log").write_text("a line nginx wrote\n")
    rc, output, declared = run()
    assert rc == 0, output
    assert declared["changed"] is False and declared["changed_paths"] == []
    assert (root / "etc/app.log").read_text() == "a line nginx wrote\n", "touch must leave the content alone"


def test_check_mode_predicts_the_changes_and_makes_nothing(site):
    root, run = site
    rc, output, declared = run("--check", "--diff")
    assert rc == 0, output
    assert declared["changed"] is True and len(declared["changed_paths"]) == 6
    assert (root / "old" / "file").exists()
    assert not (root / "etc").exists()
    assert "+PORT=8001" in output, "the diff shows the rendered text"
    assert "sk-not-to-be-shown" not in output and "(secret content not shown)" in output


def test_mode_and_content_drift_are_put_back(site):
    root, run = site
    assert run()[0] == 0
    (root / "etc/sub/rendered.conf").chmod(0o666)
    (root / "etc/plain.txt").write_text("edited by hand\n")
    rc, output, declared = run("--diff")
    assert rc == 0, output
    assert declared["changed_paths"] == [f"{root}/etc/sub/rendered.conf", f"{root}/etc/plain.txt"]
    assert oct((root / "etc/sub/rendered.conf").stat().st_mode & 0o777) == "0o640"
    assert (root / "etc/plain.txt").read_text() == "one\n"
    assert "-edited by hand" in output and "+one" in output


def test_a_refused_validation_keeps_the_old_file_and_names_it(site):
    root, run = site
    assert run()[0] == 0
    rc, output, _ = run(plain="two\n", validate="grep -q one %s")
    assert rc != 0
    assert f"{root}/etc/plain.txt was not replaced: grep -q one %s rejected the new content" in output
    assert (root / "etc/plain.txt").read_text() == "one\n"
    assert [path.name for path in (root / "etc").iterdir() if path.name.startswith(".")] == [], "no staged file left"


def test_an_entry_without_exactly_one_source_is_refused_before_the_host_is_touched(site, tmp_path):
    root, run = site
    playbook = tmp_path / "site.yml"
    playbook.write_text(PLAYBOOK.replace('content: "{{ plain }}"', 'content: "{{ plain }}", template: unit.j2'))
    rc, output, _ = run()
    assert rc != 0
    assert f"files[1] ({root}/etc/plain.txt) needs exactly one of template, src, content" in output
    assert (root / "old" / "file").exists()
