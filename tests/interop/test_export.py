"""`kring notice export --format stix` against the OASIS validator (strict), and
`kring notice file --stix-file` refusing invalid bundles."""

import json
import os
from pathlib import Path

import pytest
from stix2validator import ValidationOptions, validate_instance

from conftest import (
    COMMUNITY, EXPORTER, FILER, MAX_LABELS, NOTICES, expected_titles, indicator, title_of,
)

TLP_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
CLASSIFICATION_EXTENSION = "extension-definition--818c3a17-78f9-4429-967c-79384e68c335"


def strict(bundle):
    results = validate_instance(bundle, ValidationOptions(strict=True, version="2.1"))
    problems = [str(e) for e in results.errors] + [str(w) for w in results.warnings]
    assert results.is_valid and not problems, problems
    return results


SAMPLES = Path(os.environ.get("KRING_STIX_SAMPLES", "/nonexistent"))


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="KRING_STIX_SAMPLES not made (run.sh makes it)")
def test_every_label_and_tlp_of_the_stix_builder_passes_strict():
    """The builder's bundles for every policy level and every TLP colour (written by
    the Rust test bundles_for_every_label_and_tlp)."""
    samples = sorted(SAMPLES.glob("*.json"))
    assert len(samples) == 75
    for path in samples:
        bundle = json.loads(path.read_text())
        strict(bundle)
        colour = path.stem.rsplit("_", 1)[-1].lower()
        markings = {o["id"] for o in bundle["objects"] if o["type"] == "marking-definition"}
        assert any(TLP_IDS[c] in markings for c in TLP_IDS if c.replace("+", "_").endswith(colour))


@pytest.mark.parametrize("max_label", MAX_LABELS)
def test_exports_pass_the_strict_validator(exports, max_label):
    bundle_path, _ = exports[max_label]
    bundle = json.loads(bundle_path.read_text())
    strict(bundle)
    reports = [o for o in bundle.get("objects", []) if o["type"] == "report"]
    assert sorted(r["name"] for r in reports) == expected_titles(max_label)
    by_id = {o["id"]: o for o in bundle.get("objects", [])}
    for r in reports:
        # One TLP marking, the notice's own colour (unmarked counts as AMBER), never
        # RED; the classification label travels as its own marking.
        labels = [
            by_id[m]["extensions"][CLASSIFICATION_EXTENSION]["label"]
            for m in r["object_marking_refs"]
            if CLASSIFICATION_EXTENSION in by_id.get(m, {}).get("extensions", {})
        ]
        assert len(labels) == 1, labels
        tlps = set(r["object_marking_refs"]) & set(TLP_IDS.values())
        assert tlps == {TLP_IDS[tlp_of(labels[0])]}, (labels, tlps)
        assert TLP_IDS["red"] not in tlps
        assert r["published"] and r["description"].startswith("Phishing wave")
        assert by_id[r["created_by_ref"]]["identity_class"] == "individual"
        for ref in r["object_refs"]:
            assert ref in by_id, ref


def tlp_of(label):
    """The TLP colour of a canonical label (unmarked: AMBER), lower case."""
    for part in label.split(";")[1:]:
        if part.startswith("TLP="):
            return part[4:].lower()
    return "amber"


def test_red_never_leaves(exports):
    bundle = json.loads(exports[MAX_LABELS[-1]][0].read_text())
    names = {o.get("name") for o in bundle["objects"]}
    for label, leaves in NOTICES:
        assert (title_of(label) in names) == leaves, label


def test_exporting_twice_gives_the_same_ids(fed, exports):
    max_label = MAX_LABELS[-1]
    first = exports[max_label][0].read_text()
    again = fed.root / "again.json"
    fed.export(max_label, "stix", again)
    assert json.loads(again.read_text()) == json.loads(first)


def test_the_notices_own_objects_are_exported_and_marked(exports):
    bundle = json.loads(exports[MAX_LABELS[-1]][0].read_text())
    indicators = [o for o in bundle["objects"] if o["type"] == "indicator"]
    # Notices 0, 3, 6, 9 and 12 carry indicators, each marked as its notice.
    assert {i["id"] for i in indicators} == {indicator(n)["id"] for n in (0, 3, 6, 9, 12)}
    for i in indicators:
        assert set(i["object_marking_refs"]) & set(TLP_IDS.values())
        assert TLP_IDS["red"] not in i["object_marking_refs"]


def test_an_export_to_stdout_is_the_same_bundle(fed, exports):
    max_label = MAX_LABELS[1]
    r = fed.kring(EXPORTER, "notice", "export", "--max-label", max_label, "--format", "stix")
    assert json.loads(r.stdout) == json.loads(exports[max_label][0].read_text())
    assert "withheld" in r.stderr


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda o: o.pop("pattern"), "pattern"),
        (lambda o: o.update(id="indicator--1234"), "indicator--UUID"),
        (lambda o: o.update(created="yesterday"), "created"),
        (lambda o: o.update(spec_version="2.0"), "spec_version"),
    ],
)
def test_invalid_stix_files_are_refused_with_the_reason(fed, tmp_path, mutate, reason):
    obj = indicator(99)
    mutate(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [obj],
    }))
    r = fed.kring(
        FILER, "notice", "file", "--community", COMMUNITY, "--label", "TLP:CLEAR",
        "--category", "cyber", "--title", "refused", "--body", "x", "--stix-file", path,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "invalid STIX 2.1" in r.stderr and reason in r.stderr, r.stderr
    # The bundles Kring accepts pass the OASIS validator too (a valid one here).
    strict({
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [indicator(98)],
    })


def test_since_and_usage(fed, exports):
    r = fed.kring(
        EXPORTER, "notice", "export", "--max-label", "NL:STG-GEHEIM", "--format", "stix",
        "--since", "2999-01-01",
    )
    assert not [o for o in json.loads(r.stdout).get("objects", []) if o["type"] == "report"]
    r = fed.kring(
        EXPORTER, "notice", "export", "--max-label", "NL:STG-GEHEIM", "--format", "stix",
        "--since", "2000-01-01T00:00:00Z",
    )
    reports = [o for o in json.loads(r.stdout)["objects"] if o["type"] == "report"]
    assert sorted(o["name"] for o in reports) == expected_titles("NL:STG-GEHEIM")
    r = fed.kring(
        EXPORTER, "notice", "export", "--max-label", "NL:STG-GEHEIM", "--format", "misp",
        check=False,
    )
    assert r.returncode == 2 and "--out" in r.stderr, r.stderr
    r = fed.kring(
        EXPORTER, "notice", "export", "--max-label", "NL:STG-GEHEIM", "--format", "stix",
        "--since", "soon", check=False,
    )
    assert r.returncode == 2, r.stderr
