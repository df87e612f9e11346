"""The chat as people meet it: headless Chromium (Debian's) on the controller opens the chat page
through nginx over TLS, trusting the CA the play made, signs in as the administrator, sees the
gateway's models, sends a message and gets a reply from the real engine. A new sign-up lands in
`pending` and cannot chat. Screenshots go to build/artifacts/.

Environment overrides (to run it outside molecule): EDGE_TEST_HTTPS_PORT, EDGE_TEST_CA (a CA file
on the controller), EDGE_TEST_MODELS (comma-separated), EDGE_TEST_ADMIN_EMAIL/PASSWORD."""
import base64
import hashlib
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium (requirements/browser-tests.in) is not installed")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "build" / "artifacts"
CHAT_NAME = "chat.demo.internal"
PORT = int(os.environ.get("EDGE_TEST_HTTPS_PORT", "443"))
ORIGIN = "https://%s%s" % (CHAT_NAME, "" if PORT == 443 else ":%d" % PORT)
ADMIN_EMAIL = os.environ.get("EDGE_TEST_ADMIN_EMAIL", "admin@demo.internal")
ADMIN_PASSWORD = os.environ.get("EDGE_TEST_ADMIN_PASSWORD", "demo-admin-password")
CA_ON_HOST = "/etc/llm-appliance/ca/ca.crt"
# The real engine on CPU: the first reply may take a while.
REPLY_TIMEOUT = 300

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="Debian's chromium and chromium-driver are not installed")


@pytest.fixture(scope="module")
def ca_file(host, tmp_path_factory):
    """The CA clients trust: the controller's copy that the play handed back (checked against the host's)."""
    if os.environ.get("EDGE_TEST_CA"):
        return os.environ["EDGE_TEST_CA"]
    on_host = host.file(CA_ON_HOST).content_string
    handed_back = ROOT / "build" / "edge" / "demo-ca.crt"
    assert handed_back.read_text() == on_host, "the controller's CA copy differs from the host's"
    return str(handed_back)


@pytest.fixture(scope="module")
def served_models(host):
    if os.environ.get("EDGE_TEST_MODELS"):
        return os.environ["EDGE_TEST_MODELS"].split(",")
    # What the gateway serves to Open WebUI's key, asked through nginx like any client.
    cmd = host.run("curl -sf --max-time 30 --cacert %s --resolve api.demo.internal:443:127.0.0.1 "
                   "-H 'Authorization: Bearer sk-demo-open-webui-service-key' https://api.demo.internal/v1/models",
                   CA_ON_HOST)
    assert cmd.rc == 0, "the gateway does not list models for Open WebUI's key: %s" % cmd.stderr
    models = [m["id"] for m in json.loads(cmd.stdout)["data"]]
    assert models
    return models


def certutil():
    """certutil from libnss3-tools, or Debian's package unpacked under .cache (not installed)."""
    if shutil.which("certutil"):
        return shutil.which("certutil")
    cache = ROOT / ".cache" / "nss-tools"
    binary = cache / "root" / "usr" / "bin" / "certutil"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "libnss3-tools"], cwd=cache, capture_output=True, check=False)
        debs = list(cache.glob("libnss3-tools_*.deb"))
        if not debs:
            return None
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(cache / "root")], check=True)
    return str(binary)


def leaf_spki_hash(ca_file):
    """Connect with the CA as the only trust anchor (fails unless the chain is right); return the
    base64 SHA-256 of the server certificate's public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with (socket.create_connection(("127.0.0.1", PORT), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname=CHAT_NAME) as tls):
        der = tls.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture()
def browser(ca_file):
    """A fresh headless Chromium that trusts the appliance's CA and resolves the names to 127.0.0.1."""
    home = tempfile.mkdtemp(prefix="chat-browser-")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1280,900", "--user-data-dir=%s/profile" % home,
            "--host-resolver-rules=MAP %s 127.0.0.1" % CHAT_NAME]
    tool = certutil()
    if tool:
        # Chromium on Linux trusts what $HOME/.pki/nssdb trusts: the CA goes there, nothing is pinned.
        nssdb = pathlib.Path(home, ".pki", "nssdb")
        nssdb.mkdir(parents=True)
        subprocess.run([tool, "-d", "sql:%s" % nssdb, "-N", "--empty-password"], check=True)
        subprocess.run([tool, "-d", "sql:%s" % nssdb, "-A", "-n", "appliance-ca", "-t", "C,,", "-i", ca_file],
                       check=True)
    else:
        # No certutil: accept exactly the key whose chain was just verified against the CA.
        args.append("--ignore-certificate-errors-spki-list=%s" % leaf_spki_hash(ca_file))
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in args:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"), env=dict(os.environ, HOME=home))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(home, ignore_errors=True)


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def wait(driver, seconds=60):
    return WebDriverWait(driver, seconds, poll_frequency=0.5)


def sign_in(driver, email, password):
    driver.get(ORIGIN + "/auth")
    wait(driver).until(EC.element_to_be_clickable((By.ID, "email"))).send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def dismiss_release_notes(driver):
    for button in driver.find_elements(By.XPATH, "//button[contains(., \"Okay, Let's Go\")]"):
        if button.is_displayed():
            button.click()


def api(path, token=None, body=None, ca_file=None):
    """Call Open WebUI's API through nginx (same TLS door as the browser)."""
    request = urllib.request.Request(ORIGIN + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Host": CHAT_NAME})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    context = ssl.create_default_context(cafile=ca_file)
    # Resolve the name to 127.0.0.1 the way the browser does, keeping SNI and certificate checks.
    original = socket.getaddrinfo
    socket.getaddrinfo = lambda host, *a, **k: original("127.0.0.1" if host == CHAT_NAME else host, *a, **k)
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    finally:
        socket.getaddrinfo = original


def test_chat_page_is_served_over_tls_with_the_generated_ca(ca_file):
    context = ssl.create_default_context(cafile=ca_file)
    with (socket.create_connection(("127.0.0.1", PORT), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname=CHAT_NAME) as tls):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_admin_signs_in_sees_the_models_and_gets_a_reply(browser, served_models, psql):
    recorded_chats = ("SELECT count(*) FROM usage_events WHERE user_id = '%s' AND key_alias = 'open-webui' "
                      "AND call_type = 'chat' AND status = 'success'" % ADMIN_EMAIL)
    recorded_before = int(psql(recorded_chats, database="llm_appliance"))
    sign_in(browser, ADMIN_EMAIL, ADMIN_PASSWORD)
    chat_input = wait(browser).until(EC.element_to_be_clickable((By.ID, "chat-input")))
    time.sleep(1)
    dismiss_release_notes(browser)

    selector = wait(browser).until(EC.element_to_be_clickable((By.ID, "model-selector-model-button")))
    # A new chat starts on the inventory's chat model (open_webui_default_model).
    assert selector.text.strip() == "chat", selector.text
    selector.click()
    time.sleep(1)
    menu = browser.find_element(By.TAG_NAME, "body").text
    for model in served_models:
        assert model in menu, "model %s not offered in the chat" % model
    screenshot(browser, "chat-models.png")
    selector.send_keys(Keys.ESCAPE)
    time.sleep(0.5)

    chat_input = browser.find_element(By.ID, "chat-input")
    chat_input.click()
    chat_input.send_keys("Hello, appliance. Reply with one short sentence.")
    wait(browser).until(EC.element_to_be_clickable((By.ID, "send-message-button"))).click()

    def finished_reply(driver):
        try:
            replies = driver.find_elements(By.CSS_SELECTOR, ".chat-assistant #response-content-container")
            done = (driver.find_elements(By.ID, "send-message-button")
                    or driver.find_elements(By.ID, "voice-input-button"))
            text = replies[-1].text.strip() if replies else ""
            streaming = driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Stop']")
        except StaleElementReferenceException:
            return False  # the page re-rendered while the reply streamed in: look again
        return text if text and done and not streaming else False

    try:
        reply = wait(browser, REPLY_TIMEOUT).until(finished_reply)
    finally:
        screenshot(browser, "chat-reply.png")
    # An engine's refusal shows in the same place as a reply: it must not be one.
    assert reply and "Error" not in reply and "Exception" not in reply, reply

    # The gateway recorded the chat under the signed-in person, through the chat's service key.
    deadline = time.time() + 30
    while time.time() < deadline:
        recorded = int(psql(recorded_chats, database="llm_appliance"))
        if recorded > recorded_before:
            break
        time.sleep(1)
    assert recorded > recorded_before, "no usage row for %s after the chat" % ADMIN_EMAIL


def test_new_sign_up_waits_pending_and_cannot_chat(browser, ca_file):
    email = "newcomer-%d@demo.internal" % int(time.time())
    password = "newcomer-password-123"
    browser.get(ORIGIN + "/auth")
    wait(browser).until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Sign up']"))).click()
    wait(browser).until(EC.element_to_be_clickable((By.ID, "name"))).send_keys("New Comer")
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(password)
    for confirm in browser.find_elements(By.ID, "confirm-password"):
        confirm.send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    try:
        wait(browser).until(lambda d: "pending" in d.find_element(By.TAG_NAME, "body").text.lower())
    finally:
        screenshot(browser, "chat-signup-pending.png")
    assert not browser.find_elements(By.ID, "chat-input")

    status, signed_in = api("/api/v1/auths/signin", body={"email": email, "password": password}, ca_file=ca_file)
    assert status == 200 and signed_in["role"] == "pending"
    status, _ = api("/api/chat/completions", token=signed_in["token"], ca_file=ca_file,
                    body={"model": "any", "messages": [{"role": "user", "content": "hi"}]})
    assert status in (401, 403)
    status, _ = api("/api/models", token=signed_in["token"], ca_file=ca_file)
    assert status in (401, 403)

    # Leave the user list as it was.
    status, admin = api("/api/v1/auths/signin", body={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                        ca_file=ca_file)
    assert status == 200
    request = urllib.request.Request(ORIGIN + "/api/v1/users/%s" % signed_in["id"], method="DELETE")
    request.add_header("Authorization", "Bearer " + admin["token"])
    original = socket.getaddrinfo
    socket.getaddrinfo = lambda host, *a, **k: original("127.0.0.1" if host == CHAT_NAME else host, *a, **k)
    try:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca_file), timeout=30).close()
    finally:
        socket.getaddrinfo = original
