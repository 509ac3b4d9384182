"""The bank-details recipe: IBAN / SWIFT-BIC classification and the document split."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schwifty import registry

from migration.recipes.bank_details import (
    InvalidValue,
    classify,
    iban_print_format,
    is_valid_bic,
    is_valid_iban,
    make_iban,
    normalise,
    split_swift_bic_iban,
    split_swift_bic_iban_strict,
)

# The examples published in the SWIFT IBAN registry (and the classic GB82WEST...).
PUBLISHED_IBANS = """
AD1200012030200359100100 AE070331234567890123456 AL47212110090000000235698741
AT611904300234573201 AZ21NABZ00000000137010001944 BA391290079401028494 BE68539007547034
BG80BNBG96611020345678 BH67BMAG00001299123456 BI4210000100010000332045181
BR1800360305000010009795493C1 BR9700360305000010009795493P1 BY13NBRB3600900000002Z00AB00
CH9300762011623852957 CR05015202001026284066 CY17002001280000001200527600
CZ6508000000192000145399 DE89370400440532013000 DK5000400440116243
DO28BAGR00000001212453611324 EE382200221020145685 EG380019000500000000263180002
ES9121000418450200051332 FI2112345600000785 FO6264600001631634 FR1420041010050500013M02606
GB29NWBK60161331926819 GB82WEST12345698765432 GE29NB0000000101904917
GI75NWBK000000007099453 GL8964710001000206 GR1601101250000000012300695
GT82TRAJ01020000001210029690 HR1210010051863000160 HU42117730161111101800000000
IE29AIBK93115212345678 IL620108000000099999999 IQ98NBIQ850123456789012
IS140159260076545510730339 IT60X0542811101000000123456 JO94CBJO0010000000000131000302
KW81CBKU0000000000001234560101 KZ86125KZT5004100100 LB62099900000001001901229114
LC55HEMM000100010012001200023015 LI21088100002324013AA LT121000011101001000
LU280019400644750000 LV80BANK0000435195001 LY83002048000020100120361
MC5811222000010123456789030 MD24AG000225100013104168 ME25505000012345678951
MK07250120000058984 MR1300020001010000123456753 MT84MALT011000012345MTLCAST001S
MU17BOMM0101101030300200000MUR NL91ABNA0417164300 NO9386011117947
PK36SCBL0000001123456702 PL61109010140000071219812874 PS92PALS000000000400123456702
PT50000201231234567890154 QA58DOHB00001234567890ABCDEFG RO49AAAA1B31007593840000
RS35260005601001611379 SA0380000000608010167519 SC18SSCB11010000000000001497USD
SD2129010501234001 SE4550000000058398257466 SI56263300012039086 SK3112000000198742637541
SM86U0322509800000000270100 ST23000100010051845310146 SV62CENR00000000000000700025
TL380080012345678910157 TN5910006035183598478831 TR330006100519786457841326
UA213223130000026007233566001 VA59001123000012345678 VG96VPVG0000012345678901
XK051212012345678906
""".split()  # noqa: SIM905

PUBLISHED_BICS = [
    "DEUTDEFF", "DEUTDEFF500", "HSBCGB2LXXX", "HSBCGB2L", "BNPAFRPPXXX", "NEDSZAJJXXX",
    "NWBKGB2L", "BARCGB22", "INGBNL2A", "UBSWCHZH80A", "CHASUS33", "BOFAUS3N", "AIBKIE2D",
    "RABONL2U", "COBADEFFXXX", "DABADKKK", "ROYCCAT2", "BKCHCNBJ", "MHCBJPJT", "DBSSSGSG",
]  # fmt: skip


@pytest.mark.parametrize("iban", PUBLISHED_IBANS)
def test_published_ibans_are_classified_as_iban(iban: str) -> None:
    assert classify(iban) == ("iban", iban)
    assert is_valid_iban(iban)
    assert not is_valid_bic(iban)


@pytest.mark.parametrize("bic", PUBLISHED_BICS)
def test_published_bics_are_classified_as_swift(bic: str) -> None:
    assert classify(bic) == ("swift", bic)
    assert is_valid_bic(bic)
    assert not is_valid_iban(bic)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GB82 WEST 1234 5698 7654 32", ("iban", "GB82WEST12345698765432")),
        ("gb82west12345698765432", ("iban", "GB82WEST12345698765432")),
        ("  de89 3704 0044 0532 0130 00\n", ("iban", "DE89370400440532013000")),
        ("IBAN FR14 2004 1010 0505 0001 3M02 606", ("iban", "FR1420041010050500013M02606")),
        ("IBAN: NL91ABNA0417164300", ("iban", "NL91ABNA0417164300")),
        ("BE68-5390-0754-7034", ("iban", "BE68539007547034")),
        ("CH93\u00a00076\u00a02011\u00a06238\u00a05295\u00a07", ("iban", "CH9300762011623852957")),
        ("\tdeutdeff500 ", ("swift", "DEUTDEFF500")),
        ("HSBC GB 2L XXX", ("swift", "HSBCGB2LXXX")),
        ("nedszajj", ("swift", "NEDSZAJJ")),
    ],
)
def test_spacing_case_and_paper_label_are_normalised(raw: str, expected: tuple[str, str]) -> None:
    assert classify(raw) == expected


@pytest.mark.parametrize("value", [None, "", " ", "   ", "\t", " \n ", "\u00a0"])
def test_null_empty_and_whitespace_are_empty(value: str | None) -> None:
    assert classify(value) == ("empty", "")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("GB82WEST12345698765433", "checksum"),
        ("DE89370400440532013001", "checksum"),
        ("FR1420041010050500013M02607", "checksum"),
        ("NL91ABNA0417164301", "checksum"),
        ("GB28WEST12345698765432", "checksum"),
        ("GB82WEST1234569876543", "has 22 characters, this one has 21"),
        ("NL91ABNA04171643000", "has 18 characters, this one has 19"),
        ("DE8937040044053201300", "has 22 characters"),
        ("US64SVBKUS6S3300958879", "US is not a country of the IBAN registry"),
        ("XX82WEST12345698765432", "XX is not a country of the IBAN registry"),
        ("GB82WEST1234569876543!", "2 letters, 2 check digits"),
        ("DEUTQQFF", "QQ is not an ISO 3166 country"),
        ("HSBCUK2L", "UK is not an ISO 3166 country"),
        ("DEUTD3FF", "a 2-letter country code"),
        ("DEUTDEFFX12", "starts with X but is not XXX"),
        ("DEUTDEF", "neither"),
        ("DEUTDEFF50", "neither"),
        ("12345678", "a 4-character bank code"),
        ("GB82WEST", "WE is not an ISO 3166 country"),
        ("N/A", "neither"),
        ("TBC", "neither"),
        ("see email from landlord", "neither"),
        ("GB82 WEST 1234 5698 7654 32 / NWBKGB2L", "not a valid IBAN"),
        ("GB82WEST12345698765432GB82WEST12345698765432", "this one has 44"),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ", "too long"),
        (12345678, "is a int, not text"),
        ({"iban": "GB82WEST12345698765432"}, "is a dict, not text"),
    ],
)
def test_values_that_are_neither_raise_with_the_reason(value: object, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        classify(value)
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    assert not is_valid_iban(value) and not is_valid_bic(value)


def test_check_digits_outside_02_to_98_are_rejected_even_when_mod97_holds() -> None:
    # 99 is congruent to 02 modulo 97: find an IBAN whose real check digits are 02.
    bban = next(f"WEST{n:014d}" for n in range(10**6) if make_iban("GB", f"WEST{n:014d}")[2:4] == "02")
    assert is_valid_iban("GB02" + bban)
    with pytest.raises(InvalidValue, match="outside 02-98"):
        classify("GB99" + bban)


def test_make_iban_reproduces_published_check_digits() -> None:
    assert make_iban("GB", "WEST12345698765432") == "GB82WEST12345698765432"
    assert make_iban("de", "370400440532013000") == "DE89370400440532013000"
    assert make_iban("FR", "20041010050500013M02606") == "FR1420041010050500013M02606"


# Values whose class changed when classification moved to schwifty: they were
# invalid under our own tables and are valid under the maintained registry.
IBANS_OUTSIDE_THE_SWIFT_REGISTRY = [
    "AO06004400006729503010102",  # Angola
    "BF42BF0840101300463574000390",  # Burkina Faso
    "CI93CI0080111301134291200589",  # Ivory Coast
    "SN08SN0100152000048500003035",  # Senegal
    "MZ59000100000011834194157",  # Mozambique
]


@pytest.mark.parametrize("iban", IBANS_OUTSIDE_THE_SWIFT_REGISTRY)
def test_ibans_schwifty_knows_outside_the_swift_registry_are_ibans(iban: str) -> None:
    assert classify(iban_print_format(iban)) == ("iban", iban)


def test_bics_follow_iso_9362_2014_as_schwifty_does() -> None:
    # Since ISO 9362:2014 the party prefix (first 4 characters) may hold digits.
    assert classify("DEU1DEFF") == ("swift", "DEU1DEFF")
    # schwifty knows countries from ISO 3166 (pycountry), where Kosovo has no code
    # yet; SWIFT gives Kosovo's banks XK BICs, which are real and kept.
    assert classify("RBKOXKPR") == ("swift", "RBKOXKPR")
    assert classify("rbko xkpr xxx") == ("swift", "RBKOXKPRXXX")
    assert is_valid_bic("RBKOXKPR")
    with pytest.raises(InvalidValue, match="XK"):
        classify("RBKOXKPRXYZ")  # a branch code starting with X is still refused
    with pytest.raises(InvalidValue, match="QQ is not an ISO 3166 country"):
        classify("RBKOQQPR")


def test_schwifty_decides_exactly_whether_a_value_is_an_iban_or_a_bic() -> None:
    from schwifty import BIC, IBAN

    for value in [*PUBLISHED_IBANS, *PUBLISHED_BICS, *IBANS_OUTSIDE_THE_SWIFT_REGISTRY, "DEU1DEFF"]:
        kind = classify(value)[0]
        assert kind == ("iban" if len(value) > 11 else "swift")
        (IBAN if kind == "iban" else BIC)(value)  # accepted with default options


def test_territory_ibans_use_their_parent_country_length() -> None:
    bban = "20041010050500013M02606"
    assert classify(make_iban("GP", bban))[0] == "iban"
    assert classify(make_iban("JE", "NWBK60161331926819"))[0] == "iban"


# --- the document split -------------------------------------------------------

OLD_GONE = {"$unset": {"swift_bic_iban": ""}}


def test_split_iban_document() -> None:
    doc = {"_id": 1, "swift_bic_iban": "gb82 west 1234 5698 7654 32"}
    assert split_swift_bic_iban(doc) == {
        "$set": {"iban_number": "GB82WEST12345698765432", "swift_bic_number": None},
        **OLD_GONE,
    }


def test_split_bic_document() -> None:
    doc = {"_id": 1, "swift_bic_iban": "HSBCGB2LXXX"}
    assert split_swift_bic_iban(doc) == {
        "$set": {"iban_number": None, "swift_bic_number": "HSBCGB2LXXX"},
        **OLD_GONE,
    }


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": 1, "swift_bic_iban": ""},
        {"_id": 1, "swift_bic_iban": "   "},
        {"_id": 1, "swift_bic_iban": None},
        {"_id": 1},
    ],
    ids=["empty", "whitespace", "null", "missing"],
)
def test_split_empty_null_or_missing_sets_both_fields_to_null(doc: dict[str, object]) -> None:
    assert split_swift_bic_iban(doc) == {
        "$set": {"iban_number": None, "swift_bic_number": None},
        **OLD_GONE,
    }


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": 1, "iban_number": "GB82WEST12345698765432", "swift_bic_number": None},
        {"_id": 1, "iban_number": None, "swift_bic_number": None},
        {"_id": 1, "iban_number": None, "swift_bic_number": "DEUTDEFF"},
    ],
)
def test_already_migrated_document_is_skipped(doc: dict[str, object]) -> None:
    assert split_swift_bic_iban(doc) is None


def test_half_migrated_document_gets_the_missing_field_only() -> None:
    doc = {"_id": 1, "iban_number": "GB82WEST12345698765432"}
    assert split_swift_bic_iban(doc) == {"$set": {"swift_bic_number": None}}


def test_split_never_overwrites_a_different_value_already_in_a_new_field() -> None:
    doc = {"_id": 1, "swift_bic_iban": "DEUTDEFF", "swift_bic_number": "HSBCGB2L"}
    with pytest.raises(InvalidValue, match="already holds"):
        split_swift_bic_iban(doc)


def test_split_keeps_a_value_already_in_the_other_new_field() -> None:
    doc = {"_id": 1, "swift_bic_iban": "DE89370400440532013000", "swift_bic_number": "DEUTDEFF"}
    assert split_swift_bic_iban(doc) == {
        "$set": {"iban_number": "DE89370400440532013000"},
        **OLD_GONE,
    }


def test_split_with_only_matching_values_present_just_drops_the_old_field() -> None:
    doc = {"_id": 1, "swift_bic_iban": " ", "iban_number": "X", "swift_bic_number": "Y"}
    assert split_swift_bic_iban(doc) == OLD_GONE


def test_invalid_value_raises_invalid_value_and_strict_raises_value_error() -> None:
    doc = {"_id": 1, "swift_bic_iban": "GB82WEST12345698765433"}
    with pytest.raises(InvalidValue, match="checksum"):
        split_swift_bic_iban(doc)
    with pytest.raises(ValueError, match="checksum") as caught:
        split_swift_bic_iban_strict(doc)
    assert not isinstance(caught.value, InvalidValue)
    assert split_swift_bic_iban_strict({"_id": 2, "swift_bic_iban": "DEUTDEFF"}) is not None


def test_invalid_value_is_the_transform_steps_invalid_document() -> None:
    from migration.steps.mongo.transform import InvalidDocument

    assert issubclass(InvalidValue, InvalidDocument) and issubclass(InvalidValue, ValueError)
    with pytest.raises(InvalidDocument) as caught:
        split_swift_bic_iban({"swift_bic_iban": "not a bank code"})
    assert "neither" in caught.value.reason


def test_applying_the_split_twice_changes_nothing() -> None:
    doc: dict[str, object] = {"_id": 1, "swift_bic_iban": "BNPAFRPPXXX", "bank_name": "BNP"}
    update = split_swift_bic_iban(doc)
    assert update is not None
    doc.update(update["$set"])
    for field in update["$unset"]:
        doc.pop(field)
    assert split_swift_bic_iban(doc) is None


# --- properties -------------------------------------------------------------------

_BBAN_CHARSETS = {
    "n": string.digits,
    "a": string.ascii_uppercase,
    "c": string.digits + string.ascii_uppercase,
}
IBAN_COUNTRIES = sorted({iban[:2] for iban in PUBLISHED_IBANS + IBANS_OUTSIDE_THE_SWIFT_REGISTRY})


@st.composite
def valid_ibans(draw: st.DrawFn) -> str:
    """An IBAN of a registry country, its account part drawn from the country's BBAN structure."""
    country = draw(st.sampled_from(IBAN_COUNTRIES))
    bban = ""
    for length, charset in re.findall(r"(\d+)!([nac])", registry.get_iban_spec(country).bban_spec):
        bban += draw(st.text(alphabet=_BBAN_CHARSETS[charset], min_size=int(length), max_size=int(length)))
    return make_iban(country, bban)


@given(valid_ibans())
def test_generated_ibans_are_valid_in_any_print_format(iban: str) -> None:
    assert classify(iban) == ("iban", iban)
    assert classify(iban_print_format(iban).lower()) == ("iban", iban)
    assert normalise(" IBAN " + iban_print_format(iban)) == iban


@given(valid_ibans(), st.data())
def test_changing_one_digit_of_a_valid_iban_fails(iban: str, data: st.DataObject) -> None:
    positions = [i for i, char in enumerate(iban) if i >= 2 and char.isdigit()]
    position = data.draw(st.sampled_from(positions))
    digit = data.draw(st.sampled_from([d for d in string.digits if d != iban[position]]))
    changed = iban[:position] + digit + iban[position + 1 :]
    assert not is_valid_iban(changed)
    with pytest.raises(InvalidValue):
        classify(changed)


@given(valid_ibans(), st.data())
def test_swapping_two_adjacent_different_digits_fails(iban: str, data: st.DataObject) -> None:
    pairs = [
        i
        for i in range(4, len(iban) - 1)
        if iban[i].isdigit() and iban[i + 1].isdigit() and iban[i] != iban[i + 1]
    ]
    if not pairs:
        return
    i = data.draw(st.sampled_from(pairs))
    swapped = iban[:i] + iban[i + 1] + iban[i] + iban[i + 2 :]
    assert not is_valid_iban(swapped)


@given(st.text(max_size=40))
def test_classify_either_answers_or_raises_invalid_value(value: str) -> None:
    try:
        kind, normalised = classify(value)
    except InvalidValue as exc:
        assert exc.reason
    else:
        assert kind in ("iban", "swift", "empty")
        assert (kind == "empty") == (normalised == "")
