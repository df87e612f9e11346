"""Mint a gateway key for a user: the key (shown once), its sha256 for the inventory, client settings."""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys

PREFIX = "sk-llm-"


def mint() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def inventory_entry(user: str, key: str, models: list[str], rpm: int, tpm: int, parallel: int,
                    expires: str | None) -> str:
    lines = [
        f"  - name: {user}",
        f"    key_sha256: {sha256(key)}",
        f"    models: [{', '.join(models)}]",
        f"    rpm: {rpm}",
        f"    tpm: {tpm}",
        f"    max_parallel_requests: {parallel}",
    ]
    if expires:
        lines.append(f'    expires: "{expires}"')
    lines.append("    revoked: false")
    return "\n".join(lines)


def client_settings(base_url: str, key: str, code_model: str, chat_model: str) -> str:
    base_url = base_url.rstrip("/")
    continue_cfg = {
        "models": [
            {"name": chat_model, "provider": "openai", "model": chat_model, "apiBase": base_url,
             "apiKey": key, "roles": ["chat", "edit"]},
            {"name": code_model, "provider": "openai", "model": code_model, "apiBase": base_url,
             "apiKey": key, "roles": ["autocomplete"]},
        ]
    }
    return "\n".join([
        "# Continue (config.json / config.yaml models section):",
        json.dumps(continue_cfg, indent=2),
        "",
        "# Cline: API Provider 'OpenAI Compatible'",
        f"#   Base URL: {base_url}",
        f"#   API Key:  {key}",
        f"#   Model ID: {chat_model}",
        "",
        "# OpenAI SDK (Python):",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base_url}", api_key="{key}")',
        f'print(client.chat.completions.create(model="{chat_model}", '
        'messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)',
        "",
        "# Environment for tools that read it:",
        f"export OPENAI_BASE_URL={base_url}",
        f"export OPENAI_API_KEY={key}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("user")
    parser.add_argument("--url", required=True, help="the site's gateway URL, e.g. https://llm.example.org/v1")
    parser.add_argument("--models", default="code,chat", help="comma-separated aliases the key may use")
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--tpm", type=int, default=200000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--expires", default=None, help="YYYY-MM-DD, last valid day")
    parser.add_argument("--code-model", default="code")
    parser.add_argument("--chat-model", default="chat")
    args = parser.parse_args(argv)
    key = mint()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = sys.stdout
    out.write(f"Key for {args.user} (shown once, give it to the user only):\n  {key}\n\n")
    out.write("Add to litellm_users in the inventory (only the hash is stored):\n")
    out.write(inventory_entry(args.user, key, models, args.rpm, args.tpm, args.parallel, args.expires) + "\n\n")
    out.write(client_settings(args.url, key, args.code_model, args.chat_model) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
