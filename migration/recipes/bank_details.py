"""Split the VNP ``swift_bic_iban`` field into ``iban_number`` and ``swift_bic_number``.

A value is classified by the real rules, never by its length alone:

- IBAN (ISO 13616): a country of the IBAN registry, that country's exact length,
  check digits 02-98 and the ISO 7064 MOD 97-10 checksum.
- SWIFT/BIC (ISO 9362): 4-letter bank code, an ISO 3166 country code,
  2 alphanumeric location characters, and an optional 3-character branch code
  (8 or 11 characters).

Values are normalised first: surrounding and internal whitespace and hyphens
are removed (IBANs are usually printed in groups of four), letters upper-cased,
and the paper-format label ``IBAN`` (as in ``IBAN GB82 WEST ...``) dropped.
A value that is neither is never guessed: the recipe raises :class:`InvalidValue`,
which ``mongo.transform`` counts as ``invalid`` and leaves the document untouched.

Plan usage::

    - id: bank-details
      uses: mongo.transform
      with:
        uri: "{{ vars.db }}"
        collection: PropertyBankDetails
        function: "migration.recipes.bank_details:split_swift_bic_iban"
"""

from __future__ import annotations

import re
from typing import Any, Literal

from migration.errors import InvalidDocument

OLD_FIELD = "swift_bic_iban"
IBAN_FIELD = "iban_number"
SWIFT_FIELD = "swift_bic_number"

Kind = Literal["iban", "swift", "empty"]

# SWIFT IBAN registry (ISO 13616), release 100 (2025): country -> IBAN length.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip

# Territories the registry lists under another country's IBAN format.
IBAN_TERRITORIES: dict[str, str] = {
    "AX": "FI",
    **{code: "FR" for code in ("GF", "GP", "MQ", "RE", "PF", "TF", "YT", "NC", "BL", "MF", "PM", "WF")},
    **{code: "GB" for code in ("IM", "JE", "GG")},
}
for _territory, _parent in IBAN_TERRITORIES.items():
    IBAN_LENGTHS[_territory] = IBAN_LENGTHS[_parent]

# ISO 3166-1 alpha-2, all officially assigned codes, plus XK (Kosovo), which
# SWIFT uses in BICs and IBANs although ISO has not assigned it.
ISO_3166_COUNTRIES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN
    BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL
    GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM
    JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME
    MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP
    NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD
    SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
    TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
    """.split()  # noqa: SIM905
)

_SEPARATORS = re.compile(r"[\s\-\u200b\u200c\u200d\u2060\ufeff]+")
_PAPER_LABEL = re.compile(r"^IBAN(?:[\s:]+)", re.IGNORECASE)
_IBAN_SHAPE = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]+$")
_BIC_SHAPE = re.compile(r"^([A-Z]{4})([A-Z]{2})([A-Z0-9]{2})([A-Z0-9]{3})?$")
_MIN_IBAN = min(IBAN_LENGTHS.values())
_MAX_IBAN = 34


def normalise(value: str) -> str:
    """Electronic format: no separators, upper case, paper-format ``IBAN`` label dropped."""
    text = value.strip()
    text = _PAPER_LABEL.sub("", text)
    return _SEPARATORS.sub("", text).upper()


def _mod97(text: str) -> int:
    """ISO 7064 MOD 97-10 of an alphanumeric string (A=10 ... Z=35)."""
    remainder = 0
    for char in text:
        remainder = (remainder * (100 if char.isalpha() else 10) + int(char, 36)) % 97
    return remainder


def iban_problem(iban: str) -> str | None:
    """Why a normalised string is not a valid IBAN, or None when it is."""
    if not _IBAN_SHAPE.match(iban):
        return "an IBAN is 2 letters, 2 check digits, then letters and digits"
    country = iban[:2]
    expected = IBAN_LENGTHS.get(country)
    if expected is None:
        return f"{country} is not a country of the IBAN registry"
    if len(iban) != expected:
        return f"an IBAN of {country} has {expected} characters, this one has {len(iban)}"
    if not 2 <= int(iban[2:4]) <= 98:
        return f"IBAN check digits {iban[2:4]} are outside 02-98"
    remainder = _mod97(iban[4:] + iban[:4])
    if remainder != 1:
        return f"IBAN checksum fails (MOD 97 gives {remainder}, not 1)"
    return None


def bic_problem(bic: str) -> str | None:
    """Why a normalised string is not a valid SWIFT/BIC code, or None when it is."""
    if len(bic) not in (8, 11):
        return f"a SWIFT/BIC code has 8 or 11 characters, this one has {len(bic)}"
    match = _BIC_SHAPE.match(bic)
    if match is None:
        if not bic[:4].isalpha():
            return f"SWIFT/BIC bank code {bic[:4]} must be 4 letters"
        if not bic[4:6].isalpha():
            return f"SWIFT/BIC country code {bic[4:6]} must be 2 letters"
        return "SWIFT/BIC location and branch codes must be letters or digits"
    country, branch = match.group(2), match.group(4)
    if country not in ISO_3166_COUNTRIES:
        return f"SWIFT/BIC country code {country} is not an ISO 3166 country"
    if branch is not None and branch.startswith("X") and branch != "XXX":
        return f"SWIFT/BIC branch code {branch} starts with X but is not XXX"
    return None


def is_valid_iban(value: object) -> bool:
    """True when ``value`` (any spacing or case) is a valid IBAN."""
    return isinstance(value, str) and iban_problem(normalise(value)) is None


def is_valid_bic(value: object) -> bool:
    """True when ``value`` (any spacing or case) is a valid SWIFT/BIC code."""
    return isinstance(value, str) and bic_problem(normalise(value)) is None


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def classify(value: object) -> tuple[Kind, str]:
    """Classify one ``swift_bic_iban`` value.

    Returns:
        ``("iban", normalised)``, ``("swift", normalised)``, or ``("empty", "")``
        for None, "" and whitespace-only values.

    Raises:
        InvalidValue: the value is neither, with the reason (e.g. a failed checksum).
    """
    if value is None:
        return "empty", ""
    if not isinstance(value, str):
        raise InvalidValue(f"{OLD_FIELD} is a {type(value).__name__}, not text: {value!r:.40}")
    text = normalise(value)
    if not text:
        return "empty", ""
    if len(text) >= _MIN_IBAN and text[:2].isalpha() and text[2:4].isdigit():
        problem = iban_problem(text)
        if problem is None:
            return "iban", text
        raise InvalidValue(f"{_shown(value)} is not a valid IBAN: {problem}")
    if len(text) in (8, 11):
        problem = bic_problem(text)
        if problem is None:
            return "swift", text
        raise InvalidValue(f"{_shown(value)} is not a valid SWIFT/BIC: {problem}")
    if len(text) > _MAX_IBAN:
        raise InvalidValue(f"{_shown(value)} is too long for an IBAN ({len(text)} > 34)")
    raise InvalidValue(
        f"{_shown(value)} is neither an IBAN (country, check digits, 15-34 characters) "
        "nor a SWIFT/BIC code (8 or 11 characters)"
    )


def _split(doc: dict[str, Any]) -> dict[str, Any] | None:
    has_iban, has_swift = IBAN_FIELD in doc, SWIFT_FIELD in doc
    if OLD_FIELD not in doc and (has_iban or has_swift):
        if has_iban and has_swift:
            return None  # already migrated: a repeated run changes nothing
        return {"$set": {IBAN_FIELD if not has_iban else SWIFT_FIELD: None}}
    kind, normalised = classify(doc.get(OLD_FIELD))
    wanted = {
        IBAN_FIELD: normalised if kind == "iban" else None,
        SWIFT_FIELD: normalised if kind == "swift" else None,
    }
    updates: dict[str, Any] = {}
    for field, value in wanted.items():
        current = doc.get(field)
        if value is None:
            if current is None:
                updates[field] = None  # also adds the key when it is missing
            # else: the document already holds a value there; keep it
        elif current is None or current == value:
            updates[field] = value
        else:
            raise InvalidValue(
                f"{field} already holds {_shown(str(current))}, "
                f"which differs from {OLD_FIELD} {_shown(normalised)}"
            )
    if not updates:
        return {"$unset": {OLD_FIELD: ""}}
    return {"$set": updates, "$unset": {OLD_FIELD: ""}}


def split_swift_bic_iban(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Turn one PropertyBankDetails document's ``swift_bic_iban`` into the new fields.

    Returns:
        ``{"$set": {"iban_number": ..., "swift_bic_number": ...}, "$unset":
        {"swift_bic_iban": ""}}``, with both None for an empty, null or missing
        value; None (skip) for a document already in the new schema.

    Raises:
        InvalidValue: the value is neither an IBAN nor a SWIFT/BIC code, or a new
            field already holds a different value; the document is left as it is.
    """
    return _split(doc)


def split_swift_bic_iban_strict(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Like :func:`split_swift_bic_iban`, but an invalid value is an error (ValueError).

    For plans where an unclassifiable value must stop the transform rather than be
    counted as ``invalid``.
    """
    try:
        return _split(doc)
    except InvalidValue as exc:
        raise ValueError(exc.reason) from None


def make_iban(country: str, bban: str) -> str:
    """An IBAN for ``country`` and ``bban`` with correct check digits."""
    country, bban = country.upper(), bban.upper()
    check = 98 - _mod97(bban + country + "00")
    return f"{country}{check:02d}{bban}"


def iban_print_format(iban: str) -> str:
    """Groups of four characters, as IBANs are printed on paper."""
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


class InvalidValue(InvalidDocument, ValueError):
    """A value that is neither an IBAN nor a SWIFT/BIC, or a document that cannot be split.

    Subclasses ``mongo.transform``'s ``InvalidDocument``, so the
    step counts the document as ``invalid`` and keeps it as it is, and ValueError,
    so the classifiers can also serve as ``split`` classifiers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
