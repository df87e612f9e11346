"""Python core of the appliance: pure logic that the Ansible plugins and scripts wrap."""
