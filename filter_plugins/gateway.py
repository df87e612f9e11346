"""Ansible adapters over llm_appliance.gateway: the inventory's users judged by the gateway's own parser."""

from llm_appliance.gateway.auth import inventory_user_problems


def litellm_user_problems(users):
    """{{ litellm_users | litellm_user_problems }}: one line per problem, empty when all are usable."""
    return inventory_user_problems(users)


class FilterModule:
    def filters(self):
        return {"litellm_user_problems": litellm_user_problems}
