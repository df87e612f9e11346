"""Where a re-converge with nothing to change spends its time: `site.yml` against a converged
host, run through ansible-runner's Python API, timed from its event stream.

    python bench/converge_profile.py [--inventory inventory/demo] [--top 10] [-- extra ansible args]

Prints the wall time, the changed count, the time per role (tasks outside roles under "(play)")
and the slowest tasks. Figures, not assertions: run it on a converged host (make demo, or after
the molecule scenario's converge).
"""
import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

import ansible_runner

REPO = Path(__file__).resolve().parents[1]


def profile(inventory, extra_args):
    durations = []  # (seconds, role, task, host)
    changed: collections.Counter[str] = collections.Counter()
    items: collections.Counter[str] = collections.Counter()  # loop items: one module run each

    def on_event(event):
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_item_on_ok"):
            if event["event"] == "runner_item_on_ok":
                items[data.get("role") or "(play)"] += 1
            elif data.get("duration") is not None:
                durations.append((float(data["duration"]), data.get("role") or "(play)", data.get("task", "?"),
                                  data.get("host", "?")))
            if event["event"] == "runner_on_ok" and data.get("res", {}).get("changed"):
                changed[data.get("host", "?")] += 1
        return True

    with tempfile.TemporaryDirectory(prefix="converge-profile-") as private:
        env = {key: value for key, value in os.environ.items() if key.startswith(("ANSIBLE_", "APPLIANCE_"))}
        # ansible-runner starts ansible-playbook from PATH: the one beside this Python (the venv's).
        env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        start = time.monotonic()
        runner = ansible_runner.run(private_data_dir=private, project_dir=str(REPO), playbook=str(REPO / "site.yml"),
                                    inventory=str(REPO / inventory), envvars=env, cmdline=" ".join(extra_args),
                                    event_handler=on_event, quiet=True)
        wall = time.monotonic() - start
    return runner, wall, durations, changed, items


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default="inventory/demo", help="relative to the checkout")
    parser.add_argument("--top", type=int, default=10, help="how many of the slowest tasks to print")
    parser.add_argument("extra", nargs="*", help="more ansible-playbook arguments, after --")
    args = parser.parse_args(argv)
    runner, wall, durations, changed, items = profile(args.inventory, args.extra)
    print(f"no-op converge of site.yml on {args.inventory}: {wall:.1f} s wall, status {runner.status}, "
          f"changed={sum(changed.values())}")
    per_role: collections.Counter[str] = collections.Counter()
    tasks_per_role: collections.Counter[str] = collections.Counter()
    for seconds, role, _, _ in durations:
        per_role[role] += seconds
        tasks_per_role[role] += 1
    print(f"\n{'role':28} {'seconds':>8} {'tasks':>6} {'items':>6}")
    for role, seconds in per_role.most_common():
        print(f"{role:28} {seconds:8.1f} {tasks_per_role[role]:6d} {items[role]:6d}")
    print(f"\n{'slowest tasks':90} {'seconds':>8}")
    for seconds, role, task, _host in sorted(durations, reverse=True)[:args.top]:
        print(f"{(role + ' : ' + task)[:90]:90} {seconds:8.1f}")
    if runner.status != "successful":
        print(runner.stdout.read()[-3000:] if runner.stdout else "", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
