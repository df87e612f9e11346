"""What a client is told when a model call fails: a status and one line, never LiteLLM's internals.

LiteLLM's own messages carry exception class names ("litellm.InternalServerError:
OpenAIException - Connection error"), upstream addresses and the router's notes ("Received Model
Group=code Available Model Group Fallbacks=None"). A model that is down, restarting or cooling down
answers 503 with Retry-After and a line naming the model, so IDE clients back off instead of
reporting a server bug; any other upstream failure is a 502 naming the model; an upstream 4xx (a
prompt longer than the context, say) keeps its status and the engine's own sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Class names (LiteLLM's, OpenAI's, httpx's) and phrases that mean: no engine answered.
UNAVAILABLE_CLASSES = frozenset({
    "APIConnectionError", "ServiceUnavailableError", "ConnectError", "ConnectionError", "RemoteProtocolError",
    "ReadError",
})
UNAVAILABLE_PHRASES = ("connection error", "connection refused", "all connection attempts failed", "cannot connect",
                       "connect call failed",
                       "no deployments available", "cooldown", "server disconnected", "service unavailable")
TIMEOUT_CLASSES = frozenset({"Timeout", "APITimeoutError", "ReadTimeout", "TimeoutError"})
# Raised by LiteLLM's request checks on what the client sent (a field it refuses, say): the client's fault.
REQUEST_CLASSES = frozenset({"ValueError", "TypeError", "KeyError", "JSONDecodeError", "ValidationError"})

_LITELLM_PREFIX = re.compile(r"^(litellm\.)?[A-Za-z]+Error:\s*")
_PROVIDER_PREFIX = re.compile(r"^[A-Za-z_]+Exception\s*-\s*")
_ROUTER_NOTES = re.compile(r"\s*(Received Model Group|Available Model Group Fallbacks|LiteLLM Retried|"
                           r"model_group=|Traceback \(most recent call last\)|Clientside passthrough|"
                           r"Relevant Issue).*", re.S)
_URL = re.compile(r"https?://\S+")
# "message": "..." in a JSON body, or 'message': '...' in a Python dict's text.
_MESSAGE_FIELD = re.compile(r"""['"]message['"]\s*:\s*(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)')""")
_RETRY_IN = re.compile(r"try again in (\d+(?:\.\d+)?) ?s", re.I)


@dataclass(frozen=True)
class ClientError:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def upstream_sentence(message: str) -> str:
    """The engine's own words from a LiteLLM message, without class names, addresses or router notes."""
    text = message.strip()
    for _ in range(3):  # "litellm.BadRequestError: Hosted_vllmException - ..." has two layers
        text = _PROVIDER_PREFIX.sub("", _LITELLM_PREFIX.sub("", text)).strip()
    text = _ROUTER_NOTES.sub("", text)
    text = _URL.sub("<upstream>", text)
    # JSON bodies of the engine: keep the message field when there is one.
    found = _MESSAGE_FIELD.search(text)
    if found:
        text = found.group("dq") if found.group("dq") is not None else found.group("sq")
    return " ".join(text.split())[:300]


def client_error(status: int | None, class_name: str, message: str, model: str | None,
                 retry_after_s: int) -> ClientError | None:
    """The answer for a failed model call; None leaves LiteLLM's (the gateway's own 4xx refusals)."""
    alias = (model or "the model")[:100]
    lowered = message.lower()
    cooldown = _RETRY_IN.search(message)
    if (class_name in UNAVAILABLE_CLASSES or status in (502, 503)
            or any(phrase in lowered for phrase in UNAVAILABLE_PHRASES)):
        wait = max(1, round(float(cooldown.group(1)))) if cooldown else retry_after_s
        return ClientError(503, f"Model {alias} is not available right now (starting, restarting or busy); "
                                f"retry in {wait} s.", {"Retry-After": str(wait)})
    if class_name in TIMEOUT_CLASSES or status in (408, 504):
        return ClientError(504, f"Model {alias} did not answer in time; retry later or ask for fewer tokens.")
    # LiteLLM's checks of the request body answer 500 with this sentence: the client's fault.
    if (status is None and class_name in REQUEST_CLASSES) or message.startswith("Rejected Request:"):
        return ClientError(400, upstream_sentence(message) or "The request is not valid for this API.")
    if status is None or status >= 500:
        return ClientError(502, f"Model {alias} failed to answer this request; the operators can find it in "
                                "the gateway's log.")
    return ClientError(status, upstream_sentence(message) or f"Model {alias} refused the request.")
