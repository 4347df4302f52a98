"""CITATION.cff: valid against the Citation File Format schema, citing the paper."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_citation_file_validates_against_the_cff_schema():
    import cffconvert

    schema = json.loads(
        (Path(cffconvert.__file__).parent / "schemas" / "1.2.0" / "schema.json").read_text()
    )
    data = yaml.safe_load((REPO / "CITATION.cff").read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft7Validator)
    assert data["cff-version"] == "1.2.0"
    pref = data["preferred-citation"]
    assert pref["doi"] == "10.1109/CVPR.2019.00208"
    assert [a["family-names"] for a in pref["authors"]] == ["Song", "Soleymani"]
    broken = dict(data, **{"preferred-citation": dict(pref, doi="not a doi")})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)
