"""Validate an OSCAL assessment-results document against compliance-trestle's models
(generated from NIST's OSCAL JSON schema: required fields, enumerations, token, UUID and
date-time patterns, no unknown fields), then check what the schema cannot: every UUID is
unique and every reference resolves.

Usage: python validate.py FILE.json   (exit 0 and "valid" when it is; exit 1 and why)
"""
import json
import sys

from trestle.oscal import OSCAL_VERSION
from trestle.oscal.assessment_results import AssessmentResults


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if list(doc) != ["assessment-results"]:
        print(f"root keys {list(doc)}: expected only 'assessment-results'")
        return 1
    ar = doc["assessment-results"]
    AssessmentResults.model_validate(ar)
    if ar["metadata"]["oscal-version"] != OSCAL_VERSION:
        print(f"declares OSCAL {ar['metadata']['oscal-version']}, validated against {OSCAL_VERSION}")
        return 1
    uuids = []

    def walk(v):
        if isinstance(v, dict):
            if "uuid" in v:
                uuids.append(v["uuid"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(ar)
    if len(uuids) != len(set(uuids)):
        dup = sorted({u for u in uuids if uuids.count(u) > 1})
        print(f"duplicate uuids: {dup[:5]}")
        return 1
    resources = {r["uuid"] for r in ar.get("back-matter", {}).get("resources", [])}
    if ar["import-ap"]["href"].lstrip("#") not in resources:
        print(f"import-ap {ar['import-ap']['href']} names no back-matter resource")
        return 1
    for result in ar["results"]:
        observed = {o["uuid"] for o in result.get("observations", [])}
        for finding in result.get("findings", []):
            for rel in finding.get("related-observations", []):
                if rel["observation-uuid"] not in observed:
                    print(f"finding {finding['uuid']} relates to a missing observation {rel['observation-uuid']}")
                    return 1
    print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
