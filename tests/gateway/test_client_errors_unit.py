"""What clients are told when a model call fails (messages as LiteLLM 1.100.5 words them)."""

import pytest

from llm_appliance.gateway.errors import client_error, upstream_sentence

CONNECTION = ("litellm.InternalServerError: InternalServerError: Hosted_vllmException - Connection error.. "
              "Received Model Group=code\nAvailable Model Group Fallbacks=None LiteLLM Retried: 2 times, "
              "LiteLLM Max Retries: 2")
COOLDOWN = ("litellm.RouterRateLimitError: No deployments available for selected model, Try again in 30 seconds. "
            "Passed model=code. pre-call-checks=False, cooldown_list=[('code@http://127.0.0.1:8001/v1', {})]")
TOO_LONG = ("litellm.BadRequestError: Hosted_vllmException - {\"error\":{\"message\":\"This model's maximum "
            "context length is 2048 tokens. However, your request has 4100 input tokens.\",\"type\":"
            "\"BadRequestError\",\"code\":400}} Received Model Group=code\nAvailable Model Group Fallbacks=None")
INTERNALS = ("Exception", "Hosted_vllm", "127.0.0.1", "Model Group", "Traceback", "litellm")


@pytest.mark.parametrize("status,cls,message", [
    (500, "InternalServerError", CONNECTION),
    (429, "RouterRateLimitError", COOLDOWN),
    (None, "APIConnectionError", "Connection refused"),
    (500, "InternalServerError", "litellm.InternalServerError: InternalServerError: Hosted_vllmException - Cannot "
     "connect to host 127.0.0.1:8001 ssl:<ssl.SSLContext object at 0x7f> [Connect call failed ('127.0.0.1', 8001)]. "
     "Received Model Group=code"),
    (503, "ServiceUnavailableError", "upstream busy"),
])
def test_a_model_that_is_down_is_503_with_retry_after_and_names_the_model(status, cls, message):
    answer = client_error(status, cls, message, "code", retry_after_s=15)
    assert answer.status == 503 and "Model code" in answer.message
    assert answer.headers["Retry-After"] == ("30" if "Try again" in message else "15")
    assert not any(word in answer.message for word in INTERNALS)


def test_other_failures_are_502_or_504_without_internals():
    broken = client_error(500, "InternalServerError", "litellm.InternalServerError: CUDA error at "
                          "http://10.0.0.5:8001/v1 Traceback ...", "chat", 15)
    assert broken.status == 502 and "Model chat" in broken.message and "Retry-After" not in broken.headers
    slow = client_error(408, "Timeout", "litellm.Timeout: APITimeoutError - Request timed out", "chat", 15)
    assert slow.status == 504
    for answer in (broken, slow):
        assert not any(word in answer.message for word in INTERNALS)


def test_a_request_litellm_refuses_is_400_without_its_configuration_advice():
    answer = client_error(None, "ValueError", "Rejected Request: api_base is not allowed in request body. Clientside "
                          "passthrough requires explicit admin opt-in via `general_settings...`", "code", 15)
    assert (answer.status, answer.message) == (400, "Rejected Request: api_base is not allowed in request body.")
    as_answered = client_error(500, "", "Rejected Request: api_base is not allowed in request body. Clientside "
                               "passthrough requires explicit admin opt-in", "code", 15)
    assert (as_answered.status, as_answered.message) == (400, answer.message)


def test_an_upstream_refusal_keeps_its_status_and_the_engines_sentence():
    answer = client_error(400, "BadRequestError", TOO_LONG, "code", 15)
    assert answer.status == 400
    assert answer.message.startswith("This model's maximum context length is 2048 tokens.")
    assert not any(word in answer.message for word in INTERNALS)
    assert upstream_sentence("litellm.NotFoundError: Hosted_vllmException - no such thing at "
                             "http://127.0.0.1:8001/v1") == "no such thing at <upstream>"
