"""`kring notice export --format misp`: a feed directory PyMISP loads, tagged from
MISP's taxonomies and the Kring taxonomy shipped in the repository."""

import csv
import hashlib
import json
from pathlib import Path

import pytest
from pymisp import MISPEvent

from conftest import MAX_LABELS, expected_titles

TAXONOMY = Path(__file__).resolve().parents[2] / "docs" / "misp" / "kring-taxonomy" / "machinetag.json"


def feed_events(feed):
    events = {}
    for path in sorted(feed.glob("*.json")):
        if path.name == "manifest.json":
            continue
        event = MISPEvent()
        event.load_file(str(path))
        events[path.stem] = event
    return events


@pytest.mark.parametrize("max_label", MAX_LABELS)
def test_pymisp_loads_every_event_of_the_feed(exports, max_label):
    _, feed = exports[max_label]
    events = feed_events(feed)
    assert sorted(e.info for e in events.values()) == expected_titles(max_label)
    manifest = json.loads((feed / "manifest.json").read_text())
    assert set(manifest) == set(events)
    for uuid, event in events.items():
        assert event.uuid == uuid
        assert manifest[uuid]["info"] == event.info
        tags = {t.name for t in event.tags}
        tlps = {t for t in tags if t.startswith("tlp:")}
        assert len(tlps) == 1 and "tlp:red" not in tlps, tags
        assert event.attributes, uuid
    # hashes.csv: the MD5 of every attribute value, with its event.
    with open(feed / "hashes.csv", newline="") as f:
        rows = {tuple(r) for r in csv.reader(f)}
    for uuid, event in events.items():
        for a in event.attributes:
            assert (hashlib.md5(str(a.value).encode()).hexdigest(), uuid) in rows


def test_classification_tags_come_from_the_nato_euci_and_kring_taxonomies(exports):
    events = feed_events(exports[MAX_LABELS[-1]][1])
    kring = json.loads(TAXONOMY.read_text())
    kring_values = {e["value"] for v in kring["values"] for e in v["entry"]}
    seen = set()
    for event in events.values():
        for tag in (t.name for t in event.tags):
            if tag.startswith("tlp:"):
                assert tag in {"tlp:clear", "tlp:green", "tlp:amber", "tlp:amber+strict"}
                continue
            namespace = tag.split(":", 1)[0]
            seen.add(namespace)
            if namespace == "kring":
                assert tag.startswith('kring:classification="')
                assert tag.split('"')[1] in kring_values
            elif namespace == "nato":
                assert tag in {'nato:classification="NR"', 'nato:classification="NC"'}
            elif namespace == "euci":
                assert tag in {"euci:EU-RESTRICTED", "euci:EU-SECRET"}
            else:
                raise AssertionError(f"tag {tag} of no known taxonomy")
    assert seen == {"kring", "nato", "euci"}


def test_indicators_become_typed_attributes(exports):
    events = feed_events(exports[MAX_LABELS[-1]][1])
    domains = {a.value for e in events.values() for a in e.attributes if a.type == "domain"}
    assert domains == {f"phish{n}.example" for n in (0, 3, 6, 9, 12)}


def test_the_kring_taxonomy_is_a_misp_machinetag_file():
    t = json.loads(TAXONOMY.read_text())
    assert t["namespace"] == "kring" and isinstance(t["version"], int)
    predicates = {p["value"] for p in t["predicates"]}
    assert {v["predicate"] for v in t["values"]} <= predicates
