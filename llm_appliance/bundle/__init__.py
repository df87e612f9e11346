"""The offline bundle: everything a site without internet installs the appliance from.

`appliance-bundle` (make bundle) builds it on a connected machine: a signed apt repository of the
Debian packages the roles install, NVIDIA's driver packages when given, every component's
wheelhouse, optionally the model weights, and a manifest of every file's size and SHA-256.
"""


class BundleError(Exception):
    """A bundle that cannot be built as asked; the message names the input and the fix."""
