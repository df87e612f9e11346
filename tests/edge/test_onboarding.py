"""The onboarding page: this site's URLs and models in ready settings for Continue, Cline and the
OpenAI SDK, how to get a key, and the CA to trust when the play made one."""
import html
import re

import yaml

from tests.edge.conftest import API_NAME, CHAT_NAME


def block(page, element_id):
    match = re.search(r'<pre id="%s">(.*?)</pre>' % element_id, page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def test_internal_ca_page(render):
    page = (render(edge_onboarding_chat_model="chat-32b", edge_onboarding_code_model="coder-7b",
                   edge_ca_fingerprint="AA:BB:CC") / "index.html").read_text()
    assert "https://%s/v1" % API_NAME in page
    assert 'href="https://%s/"' % CHAT_NAME in page
    assert "AA:BB:CC" in page and 'href="/ca.crt"' in page
    assert "Ask the appliance operators for a personal API key" in page

    continue_config = yaml.safe_load(block(page, "continue-config"))
    chat, autocomplete = continue_config["models"]
    assert (chat["model"], chat["roles"]) == ("chat-32b", ["chat", "edit", "apply"])
    assert (autocomplete["model"], autocomplete["roles"]) == ("coder-7b", ["autocomplete"])
    for model in (chat, autocomplete):
        assert model["provider"] == "openai" and model["apiBase"] == "https://%s/v1" % API_NAME
        assert model["requestOptions"]["caBundlePath"]

    sdk = block(page, "openai-python")
    compile(sdk, "onboarding-sdk", "exec")
    assert 'base_url="https://%s/v1"' % API_NAME in sdk and 'model="chat-32b"' in sdk
    assert "NODE_EXTRA_CA_CERTS" in page  # Cline in VS Code


def test_operator_certificate_page_has_no_ca_steps(render):
    page = (render(edge_tls_cert_file="/x/cert.pem", edge_tls_key_file="/x/key.pem") / "index.html").read_text()
    assert "/ca.crt" not in page and "caBundlePath" not in page
    assert "organisation's PKI" in page


def test_text_is_escaped(render):
    page = (render(edge_onboarding_key_instructions="Mail <ops@example.internal> & wait") / "index.html").read_text()
    assert "Mail &lt;ops@example.internal&gt; &amp; wait" in page
