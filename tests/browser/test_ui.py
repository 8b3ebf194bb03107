"""`kring ui` in a real browser: filing and reading live across relays, banners,
refusals in words, community and organisation administration, and the local
server's security checks."""

import http.client
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from playwright.sync_api import expect

from axe_playwright_python.sync_playwright import Axe

from conftest import (ADMIN, COMMUNITY, FILER, LOW, LOW_CLEARANCE, MAX_LABEL, NEWCOMER, READER,
                      VICTIM, base_of)

# Screenshots go to KRING_UI_SCREENSHOTS, a directory relative to the repository root.
SHOTS = os.environ.get("KRING_UI_SCREENSHOTS")
if SHOTS:
    SHOTS = str(Path(__file__).resolve().parents[2] / SHOTS)
LIVE = 15_000  # ms: bound on waiting for a live update (the device syncs every second)


def shot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def request(fed, user, method, path, headers=None, body=None):
    url = urlparse(fed.uis[user])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def session_cookie(page):
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "kring_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    return f"kring_session={cookie['value']}"


def file_notice(page, title, label=MAX_LABEL):
    page.get_by_role("link", name="New notice").click()
    page.get_by_label("Community").select_option(COMMUNITY)
    page.get_by_label("Label").fill(label)
    page.get_by_label("Category").select_option("cyber")
    page.get_by_label("Title").fill(title)
    page.get_by_label("Body").fill("Seen at the embassy gate: a phishing wave aimed at staff.")
    page.get_by_role("button", name="File notice").click()


def test_without_a_session_every_request_is_401(fed):
    port = urlparse(fed.uis[FILER]).port
    for path in ["/", "/new", "/admin", "/static/live.js"]:
        status, body = request(fed, FILER, "GET", path, {"Host": f"127.0.0.1:{port}"})
        assert status == 401, path
        assert body == b"", path


def test_a_foreign_host_and_a_foreign_origin_are_refused(fed, sessions):
    page = sessions[FILER]
    cookie = session_cookie(page)
    port = urlparse(fed.uis[FILER]).port
    status, _ = request(fed, FILER, "GET", "/", {"Host": f"evil.example:{port}", "Cookie": cookie})
    assert status == 421
    status, _ = request(fed, FILER, "GET", "/", {"Host": f"127.0.0.1:{port}", "Cookie": cookie})
    assert status == 200
    form = f"community={COMMUNITY}&label={MAX_LABEL}&category=cyber&title=forged&body=forged"
    status, _ = request(fed, FILER, "POST", "/new", {
        "Host": f"127.0.0.1:{port}", "Cookie": cookie, "Origin": "http://evil.example",
        "Content-Type": "application/x-www-form-urlencoded"}, form)
    assert status == 403
    assert "forged" not in fed.kring(FILER, "notice", "list").stdout


def test_a_notice_filed_in_one_ui_appears_live_in_another_on_another_relay(fed, sessions):
    reader = sessions[READER]
    reader.goto(base_of(fed.uis[READER]) + "/")
    reader.evaluate("window.kringNotReloaded = true")
    filer = sessions[FILER]
    title = f"Phishing wave {time.time_ns()}"
    file_notice(filer, title)
    expect(filer.locator("#status")).to_contain_text("Status:")
    expect(filer.locator("#status")).to_contain_text("Ordered by the hub", timeout=LIVE)
    # The reader's inbox shows it without a reload.
    expect(reader.get_by_role("link", name=title)).to_be_visible(timeout=LIVE)
    assert reader.evaluate("window.kringNotReloaded === true"), "the page was reloaded"
    expect(reader.locator("#banner-top")).to_have_text(MAX_LABEL)
    shot(reader, "inbox")
    reader.get_by_role("link", name=title).click()
    expect(reader.locator("#banner-top")).to_have_text(MAX_LABEL)
    expect(reader.locator("#banner-bottom")).to_have_text(MAX_LABEL)
    shot(reader, "notice")
    # Reply from the notice view; it reaches the filer's notice page live.
    filer.goto(base_of(fed.uis[FILER]) + "/")
    filer.get_by_role("link", name=title).click()
    reader.get_by_label("Body").fill("Same here at the ministry.")
    reader.get_by_role("button", name="Send reply").click()
    expect(filer.locator("#replies")).to_contain_text("Re:", timeout=LIVE)
    # The command line keeps working on a profile whose UI is running.
    assert title in fed.kring(FILER, "notice", "list").stdout


def test_an_attachment_filed_on_the_command_line_is_downloaded_in_another_ui(fed, sessions, tmp_path):
    content = os.urandom(300_000)
    path = tmp_path / "kaart.pdf"
    path.write_bytes(content)
    title = f"With a map {time.time_ns()}"
    fed.kring(FILER, "notice", "file", "--community", COMMUNITY, "--label", MAX_LABEL,
              "--category", "cyber", "--title", title, "--body", "See the map.",
              "--attach", str(path))
    reader = sessions[READER]
    reader.goto(base_of(fed.uis[READER]) + "/")
    reader.get_by_role("link", name=title).click(timeout=LIVE)
    attachments = reader.locator("#attachments")
    expect(attachments).to_contain_text("kaart.pdf")
    expect(attachments).to_contain_text("300000 bytes")
    with reader.expect_download() as info:
        attachments.get_by_role("link", name="kaart.pdf").click()
    download = info.value
    assert download.suggested_filename == "kaart.pdf"
    assert Path(download.path()).read_bytes() == content
    # The same address without a session gets nothing.
    status, body = request(fed, READER, "GET", urlparse(reader.url).path + "/attachment/0",
                           headers={"Host": urlparse(fed.uis[READER]).netloc})
    assert status == 401 and body == b""


def test_a_file_chosen_in_the_new_notice_form_reaches_another_ui(fed, sessions, tmp_path):
    path = tmp_path / "foto.jpg"
    content = os.urandom(120_000)
    path.write_bytes(content)
    filer = sessions[FILER]
    title = f"With a photo {time.time_ns()}"
    filer.get_by_role("link", name="New notice").click()
    filer.get_by_label("Community").select_option(COMMUNITY)
    filer.get_by_label("Label").fill(MAX_LABEL)
    filer.get_by_label("Category").select_option("cyber")
    filer.get_by_label("Title").fill(title)
    filer.get_by_label("Body").fill("Photo of the gate.")
    filer.get_by_label("Attachments").set_input_files(str(path))
    filer.get_by_role("button", name="File notice").click()
    expect(filer.locator("#attachments")).to_contain_text("foto.jpg", timeout=LIVE)
    reader = sessions[READER]
    reader.goto(base_of(fed.uis[READER]) + "/")
    reader.get_by_role("link", name=title).click(timeout=LIVE)
    with reader.expect_download() as info:
        reader.locator("#attachments").get_by_role("link", name="foto.jpg").click()
    assert Path(info.value.path()).read_bytes() == content


def test_a_refused_label_is_explained_before_anything_is_sent(fed, sessions):
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + "/")
    file_notice(page, "Too high for this community", label="NL:STG-GEHEIM")
    alert = page.locator("#refusal")
    expect(alert).to_contain_text("nothing was sent")
    expect(alert).to_contain_text(f"maximum label {MAX_LABEL}")
    shot(page, "refused-label")
    assert "Too high" not in fed.kring(FILER, "notice", "list").stdout


def test_a_community_admin_adds_and_removes_a_member(fed, sessions):
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + f"/members/{COMMUNITY}")
    members = page.locator("#members")
    expect(members).to_contain_text(READER)
    # Clearances and home relays are shown with the members.
    expect(members.get_by_role("row").filter(has_text=READER)).to_contain_text("NL:STG-GEHEIM")
    page.get_by_label("User (name@relay)").fill(NEWCOMER)
    page.get_by_role("button", name="Check").click()
    # The decision comes first; nothing is committed until it is confirmed.
    expect(page.locator("#add-check")).to_contain_text(f"{NEWCOMER} may join")
    assert NEWCOMER not in fed.kring(FILER, "community", "members", COMMUNITY).stdout
    shot(page, "add-check")
    page.get_by_role("button", name=f"Add {NEWCOMER}", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("was added")
    expect(members).to_contain_text(NEWCOMER)
    shot(page, "members")
    page.get_by_role("button", name=f"Remove {NEWCOMER}", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("was removed")
    expect(members).not_to_contain_text(NEWCOMER)


def test_a_user_below_the_maximum_label_may_not_join_and_nothing_is_committed(fed, sessions):
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + "/communities")
    page.get_by_label("Name").fill("hoog")
    page.get_by_label("Maximum label").fill("NL:STG-GEHEIM")
    page.get_by_role("button", name="Create community").click()
    expect(page.get_by_role("status")).to_contain_text("was created")
    expect(page.get_by_role("heading", level=1)).to_have_text("Members of hoog@bz")
    page.get_by_label("User (name@relay)").fill(LOW)
    page.get_by_role("button", name="Check").click()
    check = page.locator("#add-check")
    expect(check).to_contain_text(f"{LOW} may not join")
    expect(check).to_contain_text(LOW_CLEARANCE)
    expect(page.get_by_role("button", name=f"Add {LOW}")).to_have_count(0)
    shot(page, "may-not-join")
    assert LOW not in fed.kring(FILER, "community", "members", "hoog@bz").stdout


def test_a_notice_is_forwarded_into_another_community_with_its_provenance(fed, sessions):
    fed.kring(FILER, "community", "create", "doorsturen", "--max-label", "NL:STG-GEHEIM")
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + "/")
    title = f"Forward me {time.time_ns()}"
    file_notice(page, title)
    expect(page.locator("#status")).to_contain_text("Ordered by the hub", timeout=LIVE)
    page.get_by_label("Forward to").select_option("doorsturen@bz")
    page.get_by_label("Comment (optional)").fill("For the wider circle.")
    page.get_by_role("button", name="Forward notice").click()
    expect(page.locator("#provenance")).to_contain_text(f"Forwarded from {COMMUNITY}")
    expect(page.locator("article .meta").first).to_contain_text("doorsturen@bz")
    expect(page.locator("article .body")).to_contain_text("For the wider circle.")
    expect(page.locator("#banner-top")).to_have_text(MAX_LABEL)
    shot(page, "forwarded")
    # A label lower than the original's is refused, naming the rule, and nothing is sent.
    page.goto(base_of(fed.uis[FILER]) + f"/community/{COMMUNITY}")
    page.get_by_role("link", name=title).click()
    page.get_by_label("Forward to").select_option("doorsturen@bz")
    page.get_by_label("Label (optional").fill("NL:ONGERUBRICEERD")
    page.get_by_role("button", name="Forward notice").click()
    expect(page.get_by_role("alert")).to_contain_text("lower")


def test_search_by_text_finds_only_matching_notices(fed, sessions):
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + "/")
    marker = f"zoekterm{time.time_ns()}"
    file_notice(page, f"Needle {marker}")
    file_notice(page, f"Haystack {time.time_ns()}")
    page.goto(base_of(fed.uis[FILER]) + "/")
    page.get_by_role("search").get_by_label("Text").fill(marker)
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#list").get_by_role("link")
    expect(rows).to_have_count(1)
    expect(rows).to_have_text(f"Needle {marker}")


def test_the_main_pages_pass_axe_core(fed, sessions):
    axe = Axe()
    options = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
    checked = []
    for user, paths in [(FILER, ["/", "/new", "/communities", f"/members/{COMMUNITY}"]),
                        (ADMIN, ["/admin"])]:
        page = sessions[user]
        for path in paths:
            page.goto(base_of(fed.uis[user]) + path)
            checked.append(path)
            results = axe.run(page, options=options)
            assert results.violations_count == 0, f"{path}:\n{results.generate_report()}"
    page = sessions[FILER]
    page.goto(base_of(fed.uis[FILER]) + "/")
    page.locator("#list").get_by_role("link").first.click()
    results = axe.run(page, options=options)
    assert results.violations_count == 0, f"notice page:\n{results.generate_report()}"
    assert len(checked) == 5


def test_an_org_admin_revokes_a_user(fed, sessions):
    page = sessions[ADMIN]
    page.goto(base_of(fed.uis[ADMIN]) + "/admin")
    expect(page.locator("#verdict")).to_contain_text("audit chain intact")
    shot(page, "organisation")
    page.get_by_label("User (name@relay)").fill(VICTIM)
    page.get_by_label("Reason").fill("laptop lost on a trip")
    page.get_by_role("button", name="Revoke…").click()
    expect(page.get_by_role("alert")).to_contain_text("is final")
    page.get_by_role("button", name=f"Revoke {VICTIM} now").click()
    expect(page.locator("#revoked")).to_contain_text(f"{VICTIM} is revoked")
    r = fed.kring(VICTIM, "notice", "list", check=False)
    assert r.returncode != 0, "a revoked user's device is cut off"


def test_kring_ui_refuses_a_non_loopback_address(fed):
    r = fed.kring(FILER, "ui", "--no-browser", "--listen", "0.0.0.0:0", check=False)
    assert r.returncode == 2, r.stderr
    assert "loopback" in r.stderr
    assert r.stdout == ""
