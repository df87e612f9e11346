"""Controller side of the llm_appliance.core.files module: renders each file's template (from the role's
templates/, as ansible.builtin.template does) or reads its source (from files/), then makes every
declared path in one module run on the host.

    - name: Write the gateway's configuration
      llm_appliance.core.files:
        directories:
          - {path: /etc/llm-appliance/litellm, owner: root, group: litellm, mode: "0750"}
        files:
          - {dest: /etc/llm-appliance/litellm/config.yaml, template: config.yaml.j2, mode: "0640"}
          - {dest: /etc/llm-appliance/litellm/instance-1.env, content: "PORT=4001\\n"}
          - {dest: /etc/example, template: example.j2, vars: {item: 1}, validate: "example -t %s"}
        links:
          - {path: /usr/local/sbin/example, src: /opt/example/bin/example}
        touch:
          - {path: /var/log/example.log, owner: www-data, group: adm, mode: "0640"}
        absent: [/etc/llm-appliance/litellm/old.sql]

A file entry takes exactly one of template, src and content; `vars` are extra variables for its
template; `secret: true` keeps its content out of the diff."""
from __future__ import annotations

import os

from ansible._internal._templating import _template_vars
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template
from ansible_collections.llm_appliance.core.plugins.module_utils.diff_text import text_for_diff

FILE_KEYS = {"dest", "template", "src", "content", "vars", "owner", "group", "mode", "validate", "secret"}
SOURCES = ("template", "src", "content")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("absent", "directories", "files", "links", "touch"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            files = [self._file_entry(index, entry, task_vars) for index, entry in enumerate(args.get("files") or [])]
        except AnsibleError as error:
            raise AnsibleActionFail(str(error)) from error
        module_args = dict(absent=args.get("absent") or [], directories=args.get("directories") or [], files=files,
                           links=args.get("links") or [], touch=args.get("touch") or [])
        result.update(self._execute_module(module_name="llm_appliance.core.files", module_args=module_args,
                                           task_vars=task_vars))
        new_text = {entry["dest"]: text_for_diff(entry["content"].encode("utf-8"), entry.get("secret", False))
                    for entry in files}
        for diff in result.get("diff") or []:
            if "content_of" in diff:
                diff["after"] = new_text[diff.pop("content_of")]
        return result

    def _file_entry(self, index, entry, task_vars):
        if not isinstance(entry, dict) or "dest" not in entry:
            raise AnsibleActionFail(f"files[{index}] needs a dest: {entry!r}")
        unknown = set(entry) - FILE_KEYS
        sources = [key for key in SOURCES if key in entry]
        if unknown:
            raise AnsibleActionFail(f"files[{index}] ({entry['dest']}): unknown keys {sorted(unknown)}; "
                                    f"allowed: {sorted(FILE_KEYS)}")
        if len(sources) != 1:
            raise AnsibleActionFail(f"files[{index}] ({entry['dest']}) needs exactly one of template, src, content")
        if "template" in entry:
            content = self._render(entry["template"], entry["dest"], entry.get("vars") or {}, task_vars)
        elif "src" in entry:
            content = self._loader.get_text_file_contents(self._find_needle("files", entry["src"]))
        else:
            content = str(entry["content"])
        module_entry = {key: entry[key] for key in ("dest", "owner", "group", "mode", "validate", "secret")
                        if key in entry}
        module_entry["content"] = content
        return module_entry

    def _render(self, template, dest, extra_vars, task_vars):
        """As ansible.builtin.template renders: the role's templates/ on the search path, ansible_managed
        and template_* variables set, trim_blocks on."""
        source = self._find_needle("templates", template)
        searchpath = [*task_vars.get("ansible_search_path", []), self._loader._basedir, os.path.dirname(source)]
        searchpath = [path for base in searchpath for path in (os.path.join(base, "templates"), base)]
        template_vars = {**task_vars, **extra_vars}
        template_vars.update(_template_vars.generate_ansible_template_vars(
            path=template, fullpath=source, dest_path=dest,
            include_ansible_managed="ansible_managed" not in template_vars))
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=template_vars)
        rendered = templar.template(trust_as_template(self._loader.get_text_file_contents(source)),
                                    escape_backslashes=False, overrides=dict(trim_blocks=True))
        return "" if rendered is None else rendered
