#!/usr/bin/python
"""Make a set of paths on the host as declared, in one module run.

The roles declare a few dozen directories and small files; one `file`, `copy` or `template` task
each costs one or two module runs even when nothing changes, and those runs were most of a no-op
converge. This module takes them all at once: absent paths first, then directories, then files.
Links and files to touch come last.
It is called by the action plugin of the same name, which renders templates on the controller."""
from __future__ import annotations

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_appliance.core.plugins.module_utils.diff_text import text_for_diff

DOCUMENTATION = r"""
module: files
short_description: Absent paths, directories and files with exact content, owner, group and mode
description:
  - Runs through the action plugin of the same name; it renders C(template) and reads C(src) on the
    controller and hands this module the content.
  - Supports check mode and diff mode. A file is replaced atomically, after C(validate) accepted it.
options:
  absent:
    description: Paths to remove (a directory with what it holds).
    type: list
    elements: path
    default: []
  directories:
    description: Directories to make (with missing parents) and their owner, group and mode.
    type: list
    elements: dict
    default: []
  links:
    description:
      - Symbolic links (C(path) pointing to C(src)); a file or another link in their place is replaced.
    type: list
    elements: dict
    default: []
  touch:
    description:
      - Files that must exist (made empty when missing; what they hold is left alone), with their
        owner, group and mode. Log files, for example.
    type: list
    elements: dict
    default: []
  files:
    description:
      - Files with their exact content, owner, group and mode, and an optional C(validate) command
        (C(%s) is the new file) that must accept the content before it replaces the old one.
      - C(secret) keeps the content out of the diff.
    type: list
    elements: dict
    default: []
"""

RETURN = r"""
changed_paths:
  description: The paths that changed (or would change in check mode), in the order given.
  type: list
  elements: str
  returned: always
"""

ATTRIBUTES = dict(owner=dict(type="str"), group=dict(type="str"), mode=dict(type="raw"))


def set_attributes(module, path, spec, diffs):
    """Owner, group and mode as declared; the difference goes into the diff."""
    attribute_diff = dict(before_header=path, after_header=path, before={}, after={})
    wanted = module.load_file_common_arguments({key: spec.get(key) for key in ATTRIBUTES}, path=path)
    changed = module.set_fs_attributes_if_different(wanted, False, diff=attribute_diff)
    if changed:
        diffs.append(attribute_diff)
    return changed


def remove(module, path, diffs):
    if not os.path.lexists(path):
        return False
    kind = "directory" if os.path.isdir(path) and not os.path.islink(path) else "file"
    diffs.append(dict(before_header=path, after_header=path, before=dict(path=path, state=kind),
                      after=dict(path=path, state="absent")))
    if not module.check_mode:
        if kind == "directory":
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return True


def make_directory(module, spec, diffs):
    path = spec["path"]
    if os.path.lexists(path) and not os.path.isdir(path):
        module.fail_json(msg=f"{path} should be a directory but is a file: remove it or choose another path")
    if not os.path.isdir(path):
        diffs.append(dict(before_header=path, after_header=path, before=dict(path=path, state="absent"),
                          after=dict(path=path, state="directory")))
        if module.check_mode:
            return True
        os.makedirs(path)
        set_attributes(module, path, spec, [])
        return True
    return set_attributes(module, path, spec, diffs)


def touch(module, spec, diffs):
    path = spec["path"]
    if os.path.isdir(path):
        module.fail_json(msg=f"{path} should be a file but is a directory: remove it or choose another path")
    if os.path.lexists(path):
        return set_attributes(module, path, spec, diffs)
    diffs.append(dict(before_header=path, after_header=path, before=dict(path=path, state="absent"),
                      after=dict(path=path, state="file")))
    if not module.check_mode:
        with open(path, "ab"):
            pass
        set_attributes(module, path, spec, [])
    return True


def link(module, spec, diffs):
    path, target = spec["path"], spec["src"]
    if os.path.islink(path) and os.readlink(path) == target:
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        module.fail_json(msg=f"{path} should be a link to {target} but is a directory: remove it or choose another")
    before = os.readlink(path) if os.path.islink(path) else ("file" if os.path.lexists(path) else "absent")
    diffs.append(dict(before_header=path, after_header=path, before=dict(path=path, state=before),
                      after=dict(path=path, state=f"link to {target}")))
    if not module.check_mode:
        staged = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.link")
        os.symlink(target, staged)
        os.replace(staged, path)
    return True


def write_file(module, spec, diffs):
    dest = spec["dest"]
    content = spec["content"].encode("utf-8")
    if os.path.isdir(dest):
        module.fail_json(msg=f"{dest} should be a file but is a directory: remove it or choose another path")
    before = None
    if os.path.lexists(dest):
        with open(dest, "rb") as current:
            before = current.read()
    if before == content:
        return set_attributes(module, dest, spec, diffs)
    # The new text is added by the action plugin: this module's output hides every value of its
    # no_log content parameter, so it cannot show it.
    diffs.append(dict(before_header=dest, after_header=dest, content_of=dest,
                      before="" if before is None else text_for_diff(before, spec["secret"])))
    if module.check_mode:
        return True
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory):
        module.fail_json(msg=f"cannot write {dest}: the directory {directory} does not exist "
                             "(declare it under directories)")
    handle, staged = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dest)}.")
    try:
        with os.fdopen(handle, "wb") as new:
            new.write(content)
        if spec.get("validate"):
            if "%s" not in spec["validate"]:
                module.fail_json(msg=f"validate of {dest} must contain %s (the new file): {spec['validate']}")
            rc, out, err = module.run_command(spec["validate"] % staged)
            if rc != 0:
                module.fail_json(msg=f"{dest} was not replaced: {spec['validate']} rejected the new content",
                                 rc=rc, stdout=out, stderr=err)
        module.atomic_move(staged, dest)
    finally:
        if os.path.lexists(staged):
            os.unlink(staged)
    set_attributes(module, dest, spec, [])
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            absent=dict(type="list", elements="path", default=[]),
            directories=dict(type="list", elements="dict", default=[],
                             options=dict(path=dict(type="path", required=True), **ATTRIBUTES)),
            files=dict(type="list", elements="dict", default=[],
                       options=dict(dest=dict(type="path", required=True),
                                    content=dict(type="str", required=True, no_log=True),
                                    validate=dict(type="str"), secret=dict(type="bool", default=False),
                                    **ATTRIBUTES)),
            links=dict(type="list", elements="dict", default=[],
                       options=dict(path=dict(type="path", required=True), src=dict(type="path", required=True))),
            touch=dict(type="list", elements="dict", default=[],
                       options=dict(path=dict(type="path", required=True), **ATTRIBUTES)),
        ),
        supports_check_mode=True,
    )
    diffs = []
    changed_paths = []
    # In this order; each step says whether it changed (or would change) the path it was given.
    steps = (("absent", None, remove), ("directories", "path", make_directory), ("files", "dest", write_file),
             ("links", "path", link), ("touch", "path", touch))
    for option, path_key, make in steps:
        for spec in module.params[option]:
            if make(module, spec, diffs):
                changed_paths.append(spec if path_key is None else spec[path_key])
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
