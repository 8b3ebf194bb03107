"""`kring taxii serve` read by taxii2-client, written to by it, and answering like
medallion (the OASIS reference server) serving the same collection."""

import json
import subprocess
import uuid
from datetime import datetime

import pytest
import requests
from taxii2client.v21 import Server

from conftest import (
    BIN, COMMUNITY, EXPORTER, FILER, SERVER, TAXII_PASSWORD, TAXII_USER, expected_titles,
    read_all, read_manifest, wait_until,
)

TAXII = "application/taxii+json;version=2.1"
CLASSIFICATION_EXTENSION = "extension-definition--818c3a17-78f9-4429-967c-79384e68c335"
TLP_GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def collection_of(url, user, password):
    server = Server(url, user=user, password=password)
    [root] = server.api_roots
    [c] = [c for c in root.collections if c.title == COMMUNITY]
    return c


def test_collections_and_paged_objects_match_the_export(taxii, exports):
    c = collection_of(*taxii)
    assert c.can_read and c.can_write
    assert c.id == collection_of(*taxii).id, "the collection id is stable"
    objects = read_all(c)
    ids = [o["id"] for o in objects]
    assert len(ids) == len(set(ids)), "every object once across pages"
    reports = sorted(o["name"] for o in objects if o["type"] == "report")
    # The service's --max-label is NL:STG-GEHEIM: what the export to it holds.
    assert reports == expected_titles("NL:STG-GEHEIM")
    bundle = json.loads(exports["NL:STG-GEHEIM"][0].read_text())
    assert set(ids) == {o["id"] for o in bundle["objects"]}
    manifest = read_manifest(c)
    assert [m["id"] for m in manifest] == ids
    dates = [m["date_added"] for m in manifest]
    assert dates == sorted(dates)


def test_filters(taxii):
    c = collection_of(*taxii)
    reports = read_all(c, type="report")
    assert reports and all(o["type"] == "report" for o in reports)
    one = c.get_objects(id=reports[0]["id"])["objects"]
    assert [o["id"] for o in one] == [reports[0]["id"]]
    manifest = read_manifest(c)
    middle = manifest[len(manifest) // 2]["date_added"]
    later = read_all(c, added_after=middle)
    assert {o["id"] for o in later} == {m["id"] for m in manifest if m["date_added"] > middle}
    assert c.get_object(reports[0]["id"])["objects"][0]["id"] == reports[0]["id"]


def test_credentials_and_media_types_are_enforced(taxii):
    url, user, password = taxii
    with pytest.raises(requests.exceptions.HTTPError, match="401"):
        Server(url, user=user, password="wrong").refresh()
    r = requests.get(url, auth=(user, "wrong"), headers={"Accept": TAXII}, timeout=10)
    assert r.status_code == 401 and r.json()["http_status"] == "401"
    r = requests.get(url, auth=(user, password), headers={"Accept": "application/json"}, timeout=10)
    assert r.status_code == 406
    assert r.headers["Content-Type"] == TAXII
    c = collection_of(*taxii)
    r = requests.post(
        c.url + "objects/",
        auth=(user, password),
        headers={"Accept": TAXII, "Content-Type": "application/json"},
        data=json.dumps({"objects": []}),
        timeout=10,
    )
    assert r.status_code == 415


def envelope(title, label):
    marking = f"marking-definition--{uuid.uuid4()}"
    ind = f"indicator--{uuid.uuid4()}"
    now = "2025-03-02T09:00:00.000Z"
    return {
        "objects": [
            {
                "type": "identity", "spec_version": "2.1",
                "id": "identity--6d74a693-3caa-4022-aee2-ad866e6e6a48",
                "created": "2025-01-01T00:00:00.000Z", "modified": "2025-01-01T00:00:00.000Z",
                "name": "Kring", "identity_class": "system",
            },
            {
                "type": "marking-definition", "spec_version": "2.1", "id": marking,
                "created": now, "created_by_ref": "identity--6d74a693-3caa-4022-aee2-ad866e6e6a48",
                "name": label,
                "extensions": {CLASSIFICATION_EXTENSION: {
                    "extension_type": "property-extension", "label": label,
                }},
            },
            {
                "type": "indicator", "spec_version": "2.1", "id": ind,
                "created": now, "modified": now, "name": "C2 server",
                "pattern": "[ipv4-addr:value = '192.0.2.7']", "pattern_type": "stix",
                "valid_from": "2025-03-02T09:00:00Z",
                "object_marking_refs": [marking, TLP_GREEN],
            },
            {
                "type": "report", "spec_version": "2.1", "id": f"report--{uuid.uuid4()}",
                "created": now, "modified": now, "name": title,
                "description": "Posted by the organisation's platform.",
                "published": now, "object_refs": [ind],
                "object_marking_refs": [marking, TLP_GREEN],
            },
        ]
    }, ind


def test_a_posted_envelope_becomes_a_notice_another_member_reads(fed, taxii):
    c = collection_of(*taxii)
    title = f"From the platform {uuid.uuid4()}"
    body, ind = envelope(title, "NL:STG-CONFIDENTIEEL")
    status = c.add_objects(body)
    assert status.status == "complete" and status.success_count == len(body["objects"])

    def arrived():
        return [n for n in fed.notices(FILER) if n["title"] == title]

    [notice] = wait_until("the posted notice at another member", arrived, timeout=60)
    assert notice["sender"] == SERVER
    assert notice["label"] == "NL:STG-CONFIDENTIEEL;TLP=GREEN"
    assert notice["body"] == "Posted by the organisation's platform."
    assert ind in {o["id"] for o in notice["stix"]}


def test_posts_without_an_allowed_classification_are_refused(taxii):
    url, user, password = taxii
    c = collection_of(*taxii)
    body, _ = envelope("too high", "NL:STG-ZEER-GEHEIM")
    r = requests.post(
        c.url + "objects/", auth=(user, password),
        headers={"Accept": TAXII, "Content-Type": TAXII}, data=json.dumps(body), timeout=30,
    )
    assert r.status_code == 403 and r.json()["http_status"] == "403", r.text
    body, _ = envelope("unmarked", "NL:STG-CONFIDENTIEEL")
    body["objects"] = [o for o in body["objects"] if o["type"] != "marking-definition"]
    for o in body["objects"]:
        o.pop("object_marking_refs", None)
    r = requests.post(
        c.url + "objects/", auth=(user, password),
        headers={"Accept": TAXII, "Content-Type": TAXII}, data=json.dumps(body), timeout=30,
    )
    assert r.status_code == 422 and "classification marking" in r.json()["description"], r.text


def test_medallion_answers_alike(taxii, medallion):
    kring, reference = collection_of(*taxii), collection_of(*medallion)
    assert (kring.id, kring.title) == (reference.id, reference.title)
    for filters in [{}, {"type": "report"}, {"type": "indicator,identity"}]:
        a = [o for o in read_all(kring, **filters) if o["type"] != "extension-definition"]
        b = read_all(reference, **filters)
        assert [o["id"] for o in a] == [o["id"] for o in b], filters
        assert a == b, filters
    ma, mb = read_manifest(kring), read_manifest(reference)
    assert [(m["id"], m["date_added"], m["version"]) for m in ma] == [
        (m["id"], m["date_added"], m["version"]) for m in mb
    ]
    middle = ma[len(ma) // 2]["date_added"]
    assert [
        o["id"] for o in read_all(kring, added_after=middle) if o["type"] != "extension-definition"
    ] == [o["id"] for o in read_all(reference, added_after=middle)]
    rid = read_all(kring, type="report")[0]["id"]
    assert kring.get_object(rid)["objects"] == reference.get_object(rid)["objects"]
    va, vb = kring.object_versions(rid)["versions"], reference.object_versions(rid)["versions"]
    assert [datetime.fromisoformat(v.replace("Z", "+00:00")) for v in va] == [
        datetime.fromisoformat(v.replace("Z", "+00:00")) for v in vb
    ], (va, vb)
    # Both refuse what is not TAXII.
    for url, user, password in (taxii, medallion):
        r = requests.get(url, auth=(user, password), headers={"Accept": "text/html"}, timeout=10)
        assert r.status_code == 406, url


def test_plain_http_only_on_loopback_and_tls_elsewhere(fed, procs, taxii, tmp_path, monkeypatch):
    # requests prefers these to a session's own `verify`.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    users = fed.root / "taxii-users"
    serve = ["taxii", "serve", "--max-label", "NL:STG-GEHEIM", "--users", users]
    r = fed.kring(EXPORTER, *serve, "--listen", "0.0.0.0:0", check=False, timeout=60)
    assert r.returncode == 2 and "loopback" in r.stderr, r.stderr

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )
    p = procs.start(
        [BIN / "kring", "--profile", fed.profile(EXPORTER), *serve,
         "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key],
        fed.logs / "taxii-tls.log",
    )
    try:
        url = procs.first_line(p, "kring taxii serve over TLS")
        assert url.startswith("https://127.0.0.1:"), url
        server = Server(url, user=TAXII_USER, password=TAXII_PASSWORD, verify=str(cert))
        [root] = server.api_roots
        assert root.url.startswith("https://127.0.0.1:")
        [c] = [c for c in root.collections if c.title == COMMUNITY]
        # What the platform posted earlier (TLP:GREEN) is served too.
        names = [o["name"] for o in read_all(c, type="report")]
        assert sorted(n for n in names if not n.startswith("From the platform")) == (
            expected_titles("NL:STG-GEHEIM")
        )
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url.replace("https://", "http://"), timeout=10)
    finally:
        procs.stop(p)
