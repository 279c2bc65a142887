"""Pure pieces of the FHIR importer: references, codings, FHIR date/dateTime text."""

from __future__ import annotations

import pandas as pd
import pytest

from features.feeds.fhir import _coding, _parse_times, _ref


@pytest.mark.parametrize(("ref", "kind", "expected"), [
    ({"reference": "Patient/example"}, "Patient", "example"),
    ({"reference": "https://ehr.example.org/fhir/Patient/123/_history/2"}, "Patient", "123"),
    ({"reference": "Practitioner/example"}, "Patient", None),
    ({"reference": "RelatedPatient/1"}, "Patient", None),       # not a Patient reference
    ({"display": "Peter James Chalmers"}, "Patient", None),
    ("Patient/1", "Patient", None),
    (None, "Patient", None),
])
def test_ref(ref, kind: str, expected: str | None) -> None:
    assert _ref(ref, kind) == expected


def test_coding() -> None:
    cc = [{"coding": [{"system": "http://snomed.info/sct", "code": "394814009", "display": "General practice"}]}]
    assert _coding(cc) == ("http://snomed.info/sct", "394814009", "General practice")
    assert _coding({"text": "Initial Visit"}) == (None, None, "Initial Visit")
    assert _coding({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"})[1] == "VR"   # a bare Coding
    assert _coding([]) == (None, None, None)


def test_fhir_times_to_utc() -> None:
    parsed, unparsed = _parse_times(("2013-10-10", "2014-12-12T18:01:10-08:00", "2013-12-10T09:00:00Z", "2014",
                                     "2014-08", "2015-02-07T13:28:17.239+02:00", None, "yesterday"))
    got = pd.Series(parsed.to_pandas())
    assert got.iloc[0] == pd.Timestamp("2013-10-10T00:00:00Z")
    assert got.iloc[1] == pd.Timestamp("2014-12-13T02:01:10Z")
    assert got.iloc[2] == pd.Timestamp("2013-12-10T09:00:00Z")
    assert (got.iloc[3], got.iloc[4]) == (pd.Timestamp("2014-01-01T00:00:00Z"), pd.Timestamp("2014-08-01T00:00:00Z"))
    assert got.iloc[5] == pd.Timestamp("2015-02-07T11:28:17.239Z")
    assert pd.isna(got.iloc[6]) and pd.isna(got.iloc[7])
    assert unparsed.to_pylist() == [False] * 7 + [True]
