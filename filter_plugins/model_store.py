"""Ansible adapters over llm_appliance.model_dir and model_manifest (controller side)."""
import os

from ansible.errors import AnsibleFilterError

from llm_appliance.model_dir import ModelDirError, inspect_model_dir
from llm_appliance.model_manifest import make_manifest

CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "llm-appliance", "model-sha256")


def appliance_model_dir(path, model_name="model", trust_pickle=False):
    """Config, file list and weight size of the model directory at `path` on the controller."""
    try:
        return inspect_model_dir(str(path), str(model_name), bool(trust_pickle))
    except ModelDirError as exc:
        raise AnsibleFilterError(str(exc)) from None


def appliance_model_manifest(path, model_name="model", trust_pickle=False):
    """SHA-256 manifest of the model directory at `path` on the controller (cached by size and mtime);
    pickle files are left out unless trusted."""
    try:
        return make_manifest(str(path), str(model_name), CACHE_DIR, bool(trust_pickle))
    except (ModelDirError, OSError) as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {
            "appliance_model_dir": appliance_model_dir,
            "appliance_model_manifest": appliance_model_manifest,
        }
