"""Python core of the appliance: pure logic that the Ansible plugins and host commands wrap."""

# A wheel built for hosts carries "+<digest of the sources>" after this (roles/appliance_package),
# so that pip replaces the installed copy whenever the code changed.
__version__ = "1.0.0"
