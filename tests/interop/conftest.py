"""Fixtures of the interop suite: a demo federation with notices of every label and
TLP case, Kring's exports, `kring taxii serve` and medallion.

Every process started here is stopped at the end of the session; every wait is
bounded. Binaries come from KRING_BIN_DIR (run.sh builds them).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BIN = Path(os.environ.get("KRING_BIN_DIR", Path(__file__).resolve().parents[2] / "target" / "debug"))
RELAYS = ["bz", "nctv", "aivd", "post-a"]
COMMUNITY = "intel@bz"
TAXII_USER, TAXII_PASSWORD = "platform", "interop-secret"
EXPORTER, SERVER, FILER = "liaison@bz", "analist@aivd", "liaison@nctv"

# (label, expected in an export up to --max-label M when label is within M): every
# TLP colour goes to the organisation's own platform, marked; RED never does;
# unmarked counts as AMBER.
NOTICES = [
    ("NL:ONGERUBRICEERD;TLP=CLEAR", True),
    ("NL:ONGERUBRICEERD;TLP=GREEN", True),
    ("NL:ONGERUBRICEERD;TLP=AMBER", True),
    ("NL:ONGERUBRICEERD;TLP=AMBER+STRICT", True),
    ("NL:ONGERUBRICEERD;TLP=RED", False),
    ("NL:ONGERUBRICEERD", True),
    ("NL:DEP-VERTROUWELIJK;TLP=CLEAR", True),
    ("NL:STG-CONFIDENTIEEL;TLP=CLEAR", True),
    ("NL:STG-CONFIDENTIEEL;INFO=EXERCISE;TLP=CLEAR", True),
    ("NL:STG-GEHEIM;TLP=CLEAR", True),
    ("NL:STG-GEHEIM;TLP=RED", False),
    ("NATO:NATO-RESTRICTED;TLP=CLEAR", True),
    ("NATO:NATO-CONFIDENTIAL;TLP=CLEAR", True),
    ("EU:RESTREINT-UE;TLP=CLEAR", True),
    ("EU:SECRET-UE;TLP=CLEAR", True),
]
# The accreditations exports are made for, lowest first.
MAX_LABELS = [
    "NL:ONGERUBRICEERD",
    "NL:DEP-VERTROUWELIJK",
    "NL:STG-CONFIDENTIEEL",
    "NL:STG-GEHEIM",
]
# Rank of each label's level in NL terms (equivalences of the policy crate).
RANK = {
    "ONGERUBRICEERD": 0, "DEP-VERTROUWELIJK": 1, "STG-CONFIDENTIEEL": 2, "STG-GEHEIM": 3,
    "NATO-RESTRICTED": 1, "NATO-CONFIDENTIAL": 2, "RESTREINT-UE": 1, "SECRET-UE": 3,
}


def rank(label):
    level = label.split(";")[0].split(":")[1]
    return RANK[level]


def title_of(label):
    return f"Interop notice {label}"


def wait_until(what, predicate, timeout=60.0, interval=0.25):
    """Polls `predicate` until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - report the last failure below
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_base_port(n=4):
    """A port P with P..P+n-1 free for TCP and UDP."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind(("127.0.0.1", p))
                    except OSError:
                        ok = False
        if ok:
            return base
    raise RuntimeError("no free port range")


class Processes:
    """Processes of the session, stopped at its end (TERM, then KILL)."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, stdout_to_log=False):
        err = open(log, "ab")
        p = subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=err if stdout_to_log else subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def first_line(self, p, what, timeout=60.0):
        """The first stdout line of `p` (bounded), or fails with its log."""
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            if p.poll() is not None and not sel.select(0):
                raise AssertionError(f"{what} exited with {p.returncode}")
            if sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"{what} closed stdout (exit {p.poll()})")
                buf += chunk
                if b"\n" in buf:
                    # Keep draining, so the process never blocks on a full pipe.
                    threading.Thread(target=p.stdout.read, daemon=True).start()
                    return buf.split(b"\n", 1)[0].decode()
        raise AssertionError(f"{what} printed nothing within {timeout} s")

    def stop(self, p, timeout=10.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout)

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


class Federation:
    def __init__(self, root, procs):
        self.root = root
        self.dir = root / "federation"
        self.procs = procs
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def profile(self, user):
        return self.dir / "users" / user

    def kring(self, user, *args, input=None, check=True, timeout=120):
        r = subprocess.run(
            [str(BIN / "kring"), "--profile", str(self.profile(user)), *map(str, args)],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"kring {' '.join(map(str, args))} as {user}: exit {r.returncode}\n{r.stderr}"
            )
        return r

    def export(self, max_label, fmt, out):
        return self.kring(
            EXPORTER, "notice", "export", "--max-label", max_label, "--format", fmt, "--out", out
        )

    def notices(self, user):
        r = self.kring(user, "notice", "list", "--community", COMMUNITY, "--json")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def indicator(n):
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{n:08x}-1b2c-4d3e-8f40-123456789abc",
        "created": "2025-03-01T12:00:00.000Z",
        "modified": "2025-03-01T12:00:00.000Z",
        "name": f"Phishing domain {n}",
        "description": "Domain of a phishing wave against ministries.",
        "pattern": f"[domain-name:value = 'phish{n}.example']",
        "pattern_type": "stix",
        "valid_from": "2025-03-01T12:00:00Z",
    }


@pytest.fixture(scope="session")
def procs():
    p = Processes()
    yield p
    p.stop_all()


@pytest.fixture(scope="session")
def fed(procs, tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    f = Federation(root, procs)
    base = free_base_port(len(RELAYS))
    subprocess.run(
        [str(BIN / "kring-certs-dev"), "init", "--out", str(f.dir), "--base-port", str(base)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for relay in RELAYS:
        p = procs.start(
            [BIN / "kring-relay", "--config", f.dir / "relays" / relay / "relay.toml"],
            f.logs / f"{relay}.log",
        )
        procs.first_line(p, f"relay {relay}")
    for user in [EXPORTER, SERVER, FILER]:
        f.kring(user, "keys", "publish")
    f.kring(EXPORTER, "community", "create", "intel", "--max-label", "NL:STG-GEHEIM")
    f.kring(EXPORTER, "community", "add", COMMUNITY, SERVER, FILER)
    # The filer's notices: one per label, the first ones with STIX indicators.
    for i, (label, _) in enumerate(NOTICES):
        args = [
            "notice", "file", "--community", COMMUNITY, "--label", label,
            "--category", "cyber", "--title", title_of(label),
            "--body", f"Phishing wave {i}.\nSee the indicators.",
        ]
        if i % 3 == 0:
            stix = root / f"stix-{i}.json"
            stix.write_text(json.dumps({
                "type": "bundle",
                "id": f"bundle--{i:08x}-1b2c-4d3e-8f40-123456789abc",
                "objects": [indicator(i)],
            }))
            args += ["--stix-file", stix]
        f.kring(FILER, *args)
    titles = {title_of(label) for label, _ in NOTICES}
    for user in [EXPORTER, SERVER]:
        wait_until(
            f"{user} to receive every notice",
            lambda u=user: titles <= {n["title"] for n in f.notices(u)},
        )
    return f


def expected_titles(max_label):
    return sorted(
        title_of(label)
        for label, leaves in NOTICES
        if leaves and rank(label) <= rank(max_label)
    )


@pytest.fixture(scope="session")
def exports(fed):
    """STIX bundles and MISP feeds for every accreditation in MAX_LABELS."""
    out = {}
    for max_label in MAX_LABELS:
        name = max_label.replace(":", "_")
        bundle = fed.root / f"export-{name}.json"
        fed.export(max_label, "stix", bundle)
        feed = fed.root / f"misp-{name}"
        fed.export(max_label, "misp", feed)
        out[max_label] = (bundle, feed)
    return out


@pytest.fixture(scope="session")
def taxii(fed, procs):
    """`kring taxii serve` as SERVER: (url, user, password)."""
    users = fed.root / "taxii-users"
    fed.kring(SERVER, "taxii", "passwd", users, TAXII_USER, input=TAXII_PASSWORD + "\n")
    p = procs.start(
        [
            BIN / "kring", "--profile", fed.profile(SERVER), "taxii", "serve",
            "--listen", "127.0.0.1:0", "--max-label", "NL:STG-GEHEIM", "--users", users,
        ],
        fed.logs / "taxii.log",
    )
    url = procs.first_line(p, "kring taxii serve")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/taxii2/"), url
    return url, TAXII_USER, TAXII_PASSWORD


def read_all(collection, **filters):
    """Every object of a taxii2-client collection, paged 4 at a time."""
    from taxii2client.v21 import as_pages

    objects = []
    for envelope in as_pages(collection.get_objects, per_request=4, **filters):
        objects.extend(envelope.get("objects", []))
    return objects


def read_manifest(collection, **filters):
    from taxii2client.v21 import as_pages

    records = []
    for envelope in as_pages(collection.get_manifest, per_request=4, **filters):
        records.extend(envelope.get("objects", []))
    return records


@pytest.fixture(scope="session")
def medallion(taxii, procs, fed):
    """medallion serving the same collection, built from what Kring's TAXII serves:
    (url, user, password)."""
    from taxii2client.v21 import Server

    url, user, password = taxii
    server = Server(url, user=user, password=password)
    root = server.api_roots[0]
    collections = []
    for c in root.collections:
        objects = read_all(c)
        manifest = read_manifest(c)
        collections.append({
            "id": c.id,
            "title": c.title,
            "description": c.description,
            "can_read": True,
            "can_write": False,
            "media_types": ["application/stix+json;version=2.1"],
            # medallion's memory backend reads an object's "version" property as its
            # version timestamp, so it cannot hold extension definitions (whose
            # "version" is the extension's, e.g. 1.0.0): they are left out of its
            # objects (not of its manifest), and comparisons leave them out too.
            "objects": [o for o in objects if o["type"] != "extension-definition"],
            "manifest": manifest,
        })
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = {
        "/discovery": {
            "title": "medallion",
            "description": "the same collections as Kring",
            "default": f"{base}/kring/",
            "api_roots": [f"{base}/kring/"],
        },
        "kring": {
            "information": {
                "title": "Kring communities",
                "description": "One collection per community",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 1048576,
            },
            "status": [],
            "collections": collections,
        },
    }
    data_file = fed.root / "medallion-data.json"
    data_file.write_text(json.dumps(data))
    config = fed.root / "medallion.json"
    config.write_text(json.dumps({
        "backend": {
            "module_class": "MemoryBackend",
            "module": "medallion.backends.memory_backend",
            "filename": str(data_file),
        },
        "users": {user: password},
        "taxii": {"max_page_size": 100},
    }))
    medallion_bin = Path(sys.executable).parent / "medallion"
    if not medallion_bin.exists():
        medallion_bin = shutil.which("medallion")
    p = procs.start(
        [medallion_bin, "--host", "127.0.0.1", "--port", port, config],
        fed.logs / "medallion.log",
        stdout_to_log=True,
    )
    import requests

    wait_until(
        "medallion to answer",
        lambda: requests.get(
            f"{base}/taxii2/",
            auth=(user, password),
            headers={"Accept": "application/taxii+json;version=2.1"},
            timeout=2,
        ).status_code == 200 and p.poll() is None,
        timeout=30,
    )
    return f"{base}/taxii2/", user, password
