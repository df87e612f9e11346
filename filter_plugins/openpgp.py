"""Ansible adapter over llm_appliance.openpgp (runs on the controller)."""

from ansible.errors import AnsibleFilterError

from llm_appliance.openpgp import key_fingerprints


def openpgp_fingerprints(key):
    """{{ armored_key_text | openpgp_fingerprints }} -> {"primary": [FPR, ...], "subkeys": [FPR, ...]}.

    Version 4 fingerprints, 40 upper-case hex digits, computed without gpg; anything that is not
    an OpenPGP public key (or a key of another version) fails the task with the reason.
    """
    if not isinstance(key, (bytes, bytearray)):
        key = str(key)
    try:
        return key_fingerprints(key)
    except ValueError as exc:
        raise AnsibleFilterError("openpgp_fingerprints: %s" % exc) from None


class FilterModule:
    """OpenPGP filters."""

    def filters(self):
        return {"openpgp_fingerprints": openpgp_fingerprints}
