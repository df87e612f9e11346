"""Check a stored model: against the controller's SHA-256 manifest when there is one,
and always for a readable config.json and whole weight files.

    llm-appliance-model-verify NAME DIRECTORY

Prints "verified" (checked now), "unchanged" (checked before, nothing moved since) or
"checked" (no manifest: completeness only). Exits 1 naming the model and file otherwise.
"""
import json
import os
import sys

from llm_appliance.model_dir import inspect_model_dir
from llm_appliance.model_manifest import MANIFEST_NAME, verify_copy


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: llm-appliance-model-verify NAME DIRECTORY", file=sys.stderr)
        return 2
    name, directory = argv
    manifest_path = os.path.join(directory, MANIFEST_NAME)
    try:
        if os.path.exists(manifest_path):
            with open(manifest_path, encoding="utf-8") as handle:
                print(verify_copy(directory, json.load(handle), name))
        else:
            inspect_model_dir(directory, name)
            print("checked")
    except (ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
