"""Fixtures of the browser suite: a federation of two relays (bz, nctv), a community
ui@bz with liaison@bz (its admin) and liaison@nctv, `kring ui` for three users and
Debian's chromium driven by Playwright.

Every process started here is stopped at the end of the session; every wait is
bounded. Binaries come from KRING_BIN_DIR (run.sh builds them).
"""

import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

BIN = Path(os.environ.get("KRING_BIN_DIR", Path(__file__).resolve().parents[2] / "target" / "debug"))
CHROMIUM = os.environ.get("KRING_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RELAYS = ["bz", "nctv"]
COMMUNITY = "ui@bz"
MAX_LABEL = "NL:DEP-VERTROUWELIJK"
FILER, READER, ADMIN = "liaison@bz", "liaison@nctv", "admin@bz"
NEWCOMER, VICTIM = "admin@nctv", "victim@bz"
# A user whose clearance is below a community's maximum label.
LOW, LOW_CLEARANCE = "stagiair@bz", "NL:DEP-VERTROUWELIJK"


def wait_until(what, predicate, timeout=60.0, interval=0.25):
    """Polls `predicate` until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def free_base_port(count):
    """A base port with `count` free UDP ports from it."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65000:
            continue
        socks = []
        try:
            for p in range(base, base + count):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise AssertionError("no free ports")


class Federation:
    def __init__(self, root):
        self.root = Path(root)
        self.procs = []
        self.logs = []

    def profile(self, user):
        return str(self.root / "users" / user)

    def kring(self, user, *args, check=True, timeout=60):
        r = subprocess.run(
            [str(BIN / "kring"), "--profile", self.profile(user), *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"kring {' '.join(args)} as {user}: {r.returncode}\n{r.stderr}")
        return r

    def spawn(self, name, argv):
        log = open(self.root / f"{name}.log", "w")
        self.logs.append(log)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs.append(p)
        return p

    def ui(self, user):
        """Starts `kring ui` for `user`; returns (process, the printed login address)."""
        p = self.spawn(f"ui-{user}", [str(BIN / "kring"), "--profile", self.profile(user),
                                      "ui", "--no-browser"])
        lines = queue.Queue()
        threading.Thread(target=lambda: lines.put(p.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=60).strip()
        except queue.Empty as e:
            raise AssertionError(f"kring ui for {user} printed no address") from e
        assert line.startswith("http://127.0.0.1:") and "/login?token=" in line, line
        return p, line

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="session")
def fed():
    root = tempfile.mkdtemp(prefix="kring-browser-")
    f = Federation(root)
    try:
        base = free_base_port(4)
        subprocess.run([str(BIN / "kring-certs-dev"), "init", "--out", root, "--base-port", str(base)],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([str(BIN / "kring-certs-dev"), "issue-user", "--dir", root, "--user", VICTIM,
                        "--clearance", "NL:DEP-VERTROUWELIJK"],
                       check=True, capture_output=True, timeout=60)
        subprocess.run([str(BIN / "kring-certs-dev"), "issue-user", "--dir", root, "--user", LOW,
                        "--clearance", LOW_CLEARANCE],
                       check=True, capture_output=True, timeout=60)
        for relay in RELAYS:
            f.spawn(f"relay-{relay}", [str(BIN / "kring-relay"), "--config",
                                       str(Path(root) / "relays" / relay / "relay.toml")])
        for user in (FILER, READER, ADMIN, NEWCOMER, VICTIM, LOW):
            wait_until(f"{user}'s home relay", lambda u=user: f.kring(u, "keys", "publish", check=False).returncode == 0)
        f.kring(FILER, "community", "create", "ui", "--max-label", MAX_LABEL)
        f.kring(FILER, "community", "add", COMMUNITY, READER)
        f.kring(READER, "notice", "list")
        f.uis = {user: f.ui(user)[1] for user in (FILER, READER, ADMIN)}
        yield f
    finally:
        f.stop()
        if os.environ.get("KRING_BROWSER_KEEP"):
            print(f"federation kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def sessions(fed, browser):
    """A logged-in page per user (the single-use address is spent here)."""
    pages = {}
    contexts = []
    for user, url in fed.uis.items():
        ctx = browser.new_context(viewport={"width": 1100, "height": 760})
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_url("**/")
        pages[user] = page
    yield pages
    for ctx in contexts:
        ctx.close()


def base_of(url):
    return url.split("/login")[0]
