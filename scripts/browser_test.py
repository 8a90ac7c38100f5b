#!/usr/bin/env python3
"""The privacy center in a real browser: headless Chromium driven through
WebDriver (Debian's chromium and chromium-driver, Selenium from PyPI).

Starts `consentvault serve` (scripts/served_vault.py); a business is
registered and acts over the API; a customer uses only the pages: she signs
up, stores her data, connects, approves a request with narrowing, sees the
business's read by its name marked verified by the page's own proof check,
revokes, sees the next read refused, reads the business's message in her
inbox and replies, takes offers on her contact page, signs out, signs in and
erases her account. Also: a form posted without its CSRF token changes nothing; a
second customer's session can neither see nor act on her grant; the session
of an erased customer is refused.

Screenshots of every page at 390 and 1280 px go to
<CARGO_TARGET_DIR or target>/screenshots/. Exits non-zero on any failure.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import served_vault
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

PASSWORD = "correct horse battery staple"
WIDTHS = (390, 1280)


def check(condition, what):
    if not condition:
        raise SystemExit("failed: " + what)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(base, method, path, token=None, body=None, cookie=None, form=None):
    """(status, headers, text) of one request; redirects are not followed."""
    data, content_type = None, None
    if body is not None:
        data, content_type = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, content_type = urllib.parse.urlencode(form, doseq=True).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(base + path, data=data, method=method)
    if content_type:
        request.add_header("content-type", content_type)
    if token:
        request.add_header("authorization", "Bearer " + token)
    if cookie:
        request.add_header("cookie", "cv_session=" + cookie)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def api(base, method, path, token=None, body=None):
    status, _, text = http(base, method, path, token, body)
    return status, (json.loads(text) if text else None)


def client_token(base, credentials):
    body = {"grant_type": "client_credentials", **credentials}
    status, answer = api(base, "POST", "/v1/token", body=body)
    check(status == 200, f"token: {status} {answer}")
    return answer["access_token"]


def customer_token(base, customer_id):
    status, answer = api(base, "POST", "/v1/token",
                         body={"grant_type": "password", "username": customer_id, "password": PASSWORD})
    check(status == 200, f"customer token: {status} {answer}")
    return answer["access_token"]


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CONSENTVAULT_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(os.environ.get("CONSENTVAULT_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(1280, 900)
    return driver


def shoot(driver, shots, name):
    """Screenshots of the current page at each width, whole page height."""
    for width in WIDTHS:
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height + 120, 600), 4000))
        driver.save_screenshot(str(shots / f"{name}-{width}.png"))
        # No control may stick out of a phone's screen.
        wide = driver.execute_script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth")
        check(not wide, f"{name} scrolls sideways at {width} px")
    driver.set_window_size(1280, 900)


def next_page(driver, act):
    """Runs `act` (a click that navigates) and waits until a new document has
    replaced this one and finished loading: the old one carries a mark the
    new one lacks. Errors while the browser is between documents are waited
    out."""
    driver.execute_script("window.consentvaultOldPage = true")
    act()
    loaded = "return window.consentvaultOldPage === undefined && document.readyState === 'complete'"
    WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(lambda d: d.execute_script(loaded))


def submit(driver, form_selector):
    """Submits the form and waits for the page it leads to."""
    button = driver.find_element(By.CSS_SELECTOR, form_selector + " button[type=submit]")
    next_page(driver, button.click)


def main():
    target = Path(os.environ.get("CARGO_TARGET_DIR", served_vault.ROOT / "target"))
    shots = target / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="consentvault-browser-"))
    server, base, data_dir = served_vault.start(work)
    driver = None
    try:
        admin = client_token(base, json.loads((data_dir / "admin-credentials.json").read_text()))
        status, business = api(base, "POST", "/v1/admin/businesses", admin,
                               {"name": "Acme Pizza", "purposes": ["order-fulfilment", "marketing"]})
        check(status == 201, f"business: {status} {business}")
        acme = client_token(base, {"client_id": business["client_id"], "client_secret": business["client_secret"]})

        driver = browser(work / "profile")
        wait = WebDriverWait(driver, 20)
        driver.get(base + "/")
        check(driver.current_url.endswith("/sign-in"), "signed out, / leads to the sign-in page")
        shoot(driver, shots, "sign-in")
        driver.get(base + "/sign-up")
        shoot(driver, shots, "sign-up")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "password_again").send_keys(PASSWORD)
        submit(driver, "form[action='/sign-up']")
        customer_id = driver.find_element(By.CSS_SELECTOR, ".account code").text
        check(re.fullmatch(r"[0-9a-f]{32}", customer_id), f"her customer id is shown: {customer_id!r}")
        check("Welcome" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "welcomed")

        # Her data, through inputs typed from the catalogue.
        driver.get(base + "/data")
        check(driver.find_element(By.ID, "field-email").get_attribute("type") == "email", "an e-mail input")
        driver.find_element(By.ID, "field-email").send_keys("ada@example.org")
        submit(driver, "form[action='/data/email']")
        driver.find_element(By.ID, "field-phone").send_keys("+44 20 7946 0000")
        submit(driver, "form[action='/data/phone']")
        check(driver.find_element(By.ID, "field-phone").get_attribute("value") == "+44 20 7946 0000", "phone saved")
        shoot(driver, shots, "data")

        # She connects to the business from the directory.
        driver.get(base + "/businesses")
        shoot(driver, shots, "businesses")
        submit(driver, f"form[action='/businesses/{business['business_id']}/connect']")
        check("Connected" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "connected")

        # The business asks, over the API.
        status, connected = api(base, "GET", "/v1/relationships", acme)
        pairwise = connected["items"][0]["pairwise_id"]
        status, asked = api(base, "POST", "/v1/access-requests", acme, {
            "pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email", "phone"],
            "duration_days": 90, "justification": "Send our monthly offers", "benefit": "10% off every order"})
        check(status == 201, f"request: {status} {asked}")
        request_id = asked["request_id"]

        driver.get(base + "/")
        check("Acme Pizza" in driver.page_source, "home names the business waiting for her")
        shoot(driver, shots, "home")
        driver.get(base + "/requests")
        page = driver.find_element(By.TAG_NAME, "main").text
        check("Acme Pizza" in page and "Send our monthly offers" in page and "10% off every order" in page,
              "the request shows who asks, why and what she gets")
        check(business["business_id"] not in page, "no bare business id where she looks")
        shoot(driver, shots, "requests")
        driver.find_element(By.ID, f"{request_id}-field-phone").click()  # narrowing: not the phone
        submit(driver, f"form[action='/requests/{request_id}/approve']")
        check("Approved" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "approved")

        # The business reads what the narrowed grant allows.
        status, read = api(base, "GET", f"/v1/subjects/{pairwise}/data?purpose=marketing&fields=email,phone", acme)
        check(status == 200 and read["data"] == {"email": "ada@example.org"}, f"read: {status} {read}")
        check(read["withheld"] == [{"field": "phone", "reason": "field_not_granted"}], "phone withheld")

        # The access log names the business, and the page verifies the proof.
        driver.get(base + "/access-log")
        entry = f"li[data-index='{read['audit_index']}']"
        wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, entry + " .proof"), "verified"))
        check("Acme Pizza" in driver.find_element(By.CSS_SELECTOR, entry).text, "the read by the business's name")
        check(driver.find_element(By.CSS_SELECTOR, entry + " .proof").text == "verified", "verified, not failed")
        check("signature verified" in driver.find_element(By.ID, "checkpoint-status").text, "checkpoint verified")
        shoot(driver, shots, "access-log")

        # Objections, sharing and the receipt.
        driver.get(base + "/objections")
        shoot(driver, shots, "objections")
        driver.get(base + "/sharing")
        check("Acme Pizza" in driver.page_source, "sharing by business name")
        shoot(driver, shots, "sharing")
        status, grants = api(base, "GET", "/v1/me/grants", customer_token(base, customer_id))
        grant = grants["items"][0]
        check(grant["business_name"] == "Acme Pizza", "the API names the business beside its id")
        session = driver.get_cookie("cv_session")["value"]
        status, headers, text = http(base, "GET", f"/sharing/{grant['grant_id']}/receipt", cookie=session)
        check(status == 200 and json.loads(text)["records"][0]["receipt"]["grantId"] == grant["grant_id"], "receipt download")

        # A form without its CSRF token changes nothing.
        status, _, _ = http(base, "POST", "/objections", cookie=session, form={"purposes": ["marketing"]})
        check(status == 403, f"a form without its token is refused: {status}")
        status, objections = api(base, "GET", "/v1/me/objections", customer_token(base, customer_id))
        check(objections["purposes"] == [], f"and changed nothing: {objections}")

        # Another customer's session can neither see nor act on her grant.
        status, other = api(base, "POST", "/v1/customers", body={"password": PASSWORD})
        status, headers, _ = http(base, "POST", "/sign-in",
                                  form={"customer_id": other["customer_id"], "password": PASSWORD})
        check(status == 303, f"the other customer signs in: {status}")
        other_session = re.search(r"cv_session=([^;]+)", headers["set-cookie"]).group(1)
        status, _, other_page = http(base, "GET", "/sharing", cookie=other_session)
        check(status == 200 and "Acme Pizza" not in other_page, "her sharing is not in his page")
        other_csrf = re.search(r'name="csrf" value="([^"]+)"', other_page).group(1)
        status, _, _ = http(base, "POST", f"/sharing/{grant['grant_id']}/revoke", cookie=other_session,
                            form={"csrf": other_csrf})
        check(status == 404, f"he cannot revoke her grant: {status}")
        status, _, _ = http(base, "GET", f"/sharing/{grant['grant_id']}/receipt", cookie=other_session)
        check(status == 404, f"nor fetch her receipt: {status}")

        # She revokes; the business's next read is refused, and she sees it.
        driver.get(base + "/sharing")
        next_page(driver, driver.find_element(By.LINK_TEXT, "Revoke").click)
        shoot(driver, shots, "revoke")
        submit(driver, f"form[action='/sharing/{grant['grant_id']}/revoke']")
        check("Revoked" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "revoked")
        status, refused = api(base, "GET", f"/v1/subjects/{pairwise}/data?purpose=marketing&fields=email", acme)
        check(status == 403 and refused["code"] == "no_consent", f"refused after the revoke: {status} {refused}")
        driver.get(base + "/access-log")
        denied = f"li[data-index='{refused_index(base, customer_id)}']"
        wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, denied + " .proof"), "verified"))
        check("was refused" in driver.find_element(By.CSS_SELECTOR, denied).text, "the refused read is shown")

        # The business writes to her through the vault; she reads it in her
        # inbox, beside the vault's notice of its request, and replies.
        status, sent = api(base, "POST", f"/v1/subjects/{pairwise}/messages", acme,
                           {"kind": "service", "title": "Your order is on its way",
                            "body": "The courier left at 18:40.\nRing twice."})
        check(status == 201 and sent["status"] == "delivered", f"message: {status} {sent}")
        message_id = sent["message_id"]
        driver.get(base + "/inbox")
        item = driver.find_element(By.ID, f"m-{message_id}").text
        check("Acme Pizza" in item and "Your order is on its way" in item and "Ring twice." in item,
              f"the message by the business's name: {item!r}")
        check("Acme Pizza asks you for access" in driver.find_element(By.TAG_NAME, "main").text,
              "the notice of its request, in words")
        check(business["business_id"] not in driver.find_element(By.TAG_NAME, "main").text, "no bare id in the inbox")
        shoot(driver, shots, "inbox")
        driver.find_element(By.ID, f"reply-{message_id}").send_keys("Thank you, see you at eight.")
        submit(driver, f"form[action='/inbox/{message_id}/reply']")
        check("reply is sent" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "reply sent")
        driver.find_element(By.CSS_SELECTOR, "details.write summary").click()
        driver.find_element(By.ID, "write-body").send_keys("The pizza was cold.")
        submit(driver, "form[action='/inbox/write']")
        check("message is sent" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "feedback sent")
        status, replies = api(base, "GET", f"/v1/subjects/{pairwise}/replies", acme)
        bodies = [reply["text"]["body"] for reply in replies["items"]]
        check(status == 200 and bodies == ["The pizza was cold.", "Thank you, see you at eight."],
              f"the business reads her reply and feedback: {status} {replies}")
        check("ada@example.org" not in json.dumps(replies), "and never her address")

        # Offers are refused until she takes them on her contact page.
        offer = {"kind": "offers", "title": "Two for one", "body": "Tuesdays only."}
        status, refused_offer = api(base, "POST", f"/v1/subjects/{pairwise}/messages", acme, offer)
        check(status == 403 and refused_offer["reason"] == "not_accepted", f"offer refused: {status} {refused_offer}")
        status, mine = api(base, "GET", "/v1/me/relationships", customer_token(base, customer_id))
        relationship_id = mine["items"][0]["relationship_id"]
        driver.get(base + "/contact")
        check("Acme Pizza" in driver.find_element(By.TAG_NAME, "main").text, "preferences by business name")
        shoot(driver, shots, "contact")
        driver.find_element(By.ID, f"kind-{relationship_id}-offers").click()
        submit(driver, f"form[action='/contact/{relationship_id}']")
        check("contact preferences are saved" in driver.find_element(By.CSS_SELECTOR, ".notice").text, "saved")
        status, taken = api(base, "POST", f"/v1/subjects/{pairwise}/messages", acme, offer)
        check(status == 201, f"the offer is delivered once she takes offers: {status} {taken}")

        driver.get(base + "/export")
        shoot(driver, shots, "export")
        driver.get(base + "/password")
        shoot(driver, shots, "password")

        # Sign out; the old session opens nothing.
        driver.get(base + "/")
        submit(driver, "form.sign-out")
        check(driver.current_url.endswith("/sign-in"), "signed out")
        status, headers, _ = http(base, "GET", "/", cookie=session)
        check(status == 303 and headers["location"].endswith("/sign-in"), "a signed-out session is refused")

        # Sign in again, and erase.
        driver.find_element(By.ID, "customer_id").send_keys(customer_id)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        submit(driver, "form[action='/sign-in']")
        session = driver.get_cookie("cv_session")["value"]
        driver.get(base + "/erase")
        shoot(driver, shots, "erase")
        driver.find_element(By.ID, "confirm").click()
        submit(driver, "form[action='/erase']")
        receipt = json.loads(driver.find_element(By.CSS_SELECTOR, "pre.json").text)
        check(receipt["erased"] is True and receipt["checkpoint"], "the erasure receipt is shown")
        shoot(driver, shots, "erased")
        status, headers, _ = http(base, "GET", "/", cookie=session)
        check(status == 303 and headers["location"].endswith("/sign-in"), "an erased customer's session is refused")
    finally:
        if driver is not None:
            driver.quit()
        served_vault.stop(server)
    shutil.rmtree(work, ignore_errors=True)
    print(f"browser: the privacy center works end to end; screenshots in {shots}")


def refused_index(base, customer_id):
    """The audit index of the customer's latest read (the refused one)."""
    status, log = api(base, "GET", "/v1/me/access-log", customer_token(base, customer_id))
    return max(item["audit_index"] for item in log["items"])


if __name__ == "__main__":
    main()
