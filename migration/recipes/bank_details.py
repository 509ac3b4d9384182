"""Split the VNP ``swift_bic_iban`` field into ``iban_number`` and ``swift_bic_number``.

A value is classified by the real rules, never by its length alone, as the
maintained ``schwifty`` library applies them (its IBAN registry and BBAN
structures, its ISO 3166 country list):

- IBAN (ISO 13616): exactly when ``schwifty.IBAN(value)`` accepts it with its
  default options: a registry country, that country's length and BBAN
  structure, and the ISO 7064 MOD 97-10 check digits.
- SWIFT/BIC (ISO 9362): exactly when ``schwifty.BIC(value)`` accepts it (8 or
  11 characters, a country that exists), and one rule stricter than it: a
  branch code starting with ``X`` must be ``XXX`` (the standard reserves it).

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

from schwifty import BIC, IBAN, exceptions, registry

from migration.errors import InvalidDocument

OLD_FIELD = "swift_bic_iban"
IBAN_FIELD = "iban_number"
SWIFT_FIELD = "swift_bic_number"

Kind = Literal["iban", "swift", "empty"]

_SEPARATORS = re.compile(r"[\s\-\u200b\u200c\u200d\u2060\ufeff]+")
_PAPER_LABEL = re.compile(r"^IBAN(?:[\s:]+)", re.IGNORECASE)
_MAX_IBAN = 34
_BIC_LENGTHS = (8, 11)
# Country codes SWIFT assigns that ISO 3166 (so schwifty) does not have yet:
# Kosovo's banks have XK BICs (e.g. RBKOXKPR) and XK IBANs.
_SWIFT_ONLY_COUNTRIES = frozenset({"XK"})


def normalise(value: str) -> str:
    """Electronic format: no separators, upper case, paper-format ``IBAN`` label dropped."""
    text = value.strip()
    text = _PAPER_LABEL.sub("", text)
    return _SEPARATORS.sub("", text).upper()


def iban_problem(iban: str) -> str | None:
    """Why a normalised string is not a valid IBAN, or None when it is."""
    try:
        IBAN(iban)
    except ValueError as exc:  # schwifty's exceptions are ValueErrors
        return _iban_reason(iban, exc)
    return None


def _iban_reason(iban: str, exc: ValueError) -> str:
    """Our wording of schwifty's verdict, with the figures an operator needs."""
    country = iban[:2]
    if isinstance(exc, exceptions.InvalidCountryCode):
        return f"{country} is not a country of the IBAN registry"
    if isinstance(exc, exceptions.InvalidLength):
        expected = registry.get_iban_spec(country).iban_length
        return f"an IBAN of {country} has {expected} characters, this one has {len(iban)}"
    if isinstance(exc, exceptions.InvalidChecksumDigits):
        if not 2 <= int(iban[2:4]) <= 98:
            return f"IBAN check digits {iban[2:4]} are outside 02-98"
        return "IBAN checksum fails (the MOD 97-10 check digits do not match)"
    if isinstance(exc, exceptions.InvalidStructure) and str(exc).startswith("Invalid BBAN"):
        spec = registry.get_iban_spec(country).bban_spec
        return f"the account part of an IBAN of {country} must match {spec}"
    if isinstance(exc, exceptions.InvalidStructure):
        return "an IBAN is 2 letters, 2 check digits, then letters and digits"
    return str(exc)


def _may_be_iban(text: str) -> bool:
    """Cheap test that holds for every value schwifty could accept as an IBAN."""
    return text[:2].isalpha() and text[2:4].isdigit()


def bic_problem(bic: str) -> str | None:
    """Why a normalised string is not a valid SWIFT/BIC code, or None when it is."""
    try:
        BIC(bic)
    except exceptions.InvalidCountryCode:
        # schwifty checks length and structure first: only the country is left.
        if bic[4:6] not in _SWIFT_ONLY_COUNTRIES:
            return f"SWIFT/BIC country code {bic[4:6]} is not an ISO 3166 country"
    except ValueError as exc:
        if isinstance(exc, exceptions.InvalidLength):
            return f"a SWIFT/BIC code has 8 or 11 characters, this one has {len(bic)}"
        if isinstance(exc, exceptions.InvalidStructure):
            return (
                "a SWIFT/BIC code is a 4-character bank code, a 2-letter country code, "
                "2 location characters and an optional 3-character branch code"
            )
        return str(exc)
    branch = bic[8:]
    if branch.startswith("X") and branch != "XXX":
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
    # Only schwifty decides; the length and shape tests only pick whom to ask (no
    # IBAN has a BIC's length) and which reason to give when both say no.
    iban_problem_text = None
    if _may_be_iban(text):
        iban_problem_text = iban_problem(text)
        if iban_problem_text is None:
            return "iban", text
    if len(text) in _BIC_LENGTHS:
        problem = bic_problem(text)
        if problem is None:
            return "swift", text
        raise InvalidValue(f"{_shown(value)} is not a valid SWIFT/BIC: {problem}")
    if iban_problem_text is not None:
        raise InvalidValue(f"{_shown(value)} is not a valid IBAN: {iban_problem_text}")
    if len(text) > _MAX_IBAN:
        raise InvalidValue(f"{_shown(value)} is too long for an IBAN ({len(text)} > {_MAX_IBAN})")
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
    """An IBAN for ``country`` and ``bban`` with correct check digits (not validated)."""
    return str(IBAN.from_bban(country.upper(), bban.upper(), allow_invalid=True))


def iban_print_format(iban: str) -> str:
    """Groups of four characters, as IBANs are printed on paper."""
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


class InvalidValue(InvalidDocument, ValueError):
    """A value that is neither an IBAN nor a SWIFT/BIC, or a document that cannot be split.

    Subclasses ``migration.errors.InvalidDocument``, so ``mongo.transform``
    counts the document as ``invalid`` and keeps it as it is, and ValueError,
    so the classifiers can also serve as ``split`` classifiers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
