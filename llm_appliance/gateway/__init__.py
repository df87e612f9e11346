"""The gateway's extensions to LiteLLM's proxy: key checks (auth), usage rows (usage_logger), key minting (keys)."""
