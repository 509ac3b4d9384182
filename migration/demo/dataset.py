"""A realistic VNP Dashboard database, generated deterministically for a seed.

Collections are named and shaped as Prisma on MongoDB would leave them: ObjectId
``_id``s, camelCase fields (the bank details model keeps its snake_case fields),
``createdAt``/``updatedAt``, references stored as ObjectIds:

    Portfolio.userId -> User._id           Property.portfolioId -> Portfolio._id
    PropertyBankDetails.propertyId -> Property._id (unique, as in the Prisma schema)
    Tenant.propertyId, Lease.propertyId/tenantId, MaintenanceRequest.propertyId,
    AuditLog.userId/entityId

Size ``"small"`` is the guide's database (15 users, 8 portfolios, 45 properties,
42 bank details); an integer is a number of properties and every collection
scales with it. Documents are generated one at a time (``generate``; written in
batches by :mod:`migration.demo.seed`), and every id and reference is a pure
function of indexes (no id is kept in memory), so millions take constant memory.

``PropertyBankDetails.swift_bic_iban`` is dealt from a shuffled deck of variants
per block of 42 documents (profile ``messy``: valid IBANs of several countries,
spaced, lowercase and paper-format ones, 8- and 11-character BICs, empty, null,
missing, whitespace-only, and malformed values; profile ``guide``: the guide's
15 IBAN / 25 SWIFT / 2 empty), so :func:`expected_distribution` knows exactly
what was generated without reading the database.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from migration.demo import vocabulary as vocab
from migration.recipes.bank_details import iban_print_format, make_iban

SMALL_PROPERTIES = 45
SMALL_COUNTS: dict[str, int] = {
    "User": 15,
    "Portfolio": 8,
    "Property": 45,
    "PropertyBankDetails": 42,
    "Tenant": 38,
    "Lease": 40,
    "MaintenanceRequest": 12,
    "AuditLog": 120,
}
COLLECTIONS: tuple[str, ...] = tuple(SMALL_COUNTS)
_TAGS = {name: number + 1 for number, name in enumerate(COLLECTIONS)}
DEFAULT_BATCH_SIZE = 2000
_START = datetime(2021, 1, 4, 9, 0, tzinfo=UTC)
_END = datetime(2026, 1, 30, 17, 0, tzinfo=UTC)

# What each swift_bic_iban variant is once classified by the recipe.
VARIANT_KIND: dict[str, str] = {
    "iban": "iban", "iban_spaced": "iban", "iban_lower": "iban", "iban_paper": "iban",
    "iban_lower_spaced": "iban", "bic11": "swift", "bic8": "swift", "bic_lower": "swift",
    "bic_padded": "swift", "empty_string": "empty", "null": "empty", "missing": "empty",
    "whitespace": "empty", "bad_checksum": "invalid", "wrong_length": "invalid",
    "garbage": "invalid",
}  # fmt: skip
# One block of 42 documents per profile (the guide's figure), shuffled per block.
PROFILES: dict[str, dict[str, int]] = {
    "messy": {
        "iban": 9, "iban_spaced": 3, "iban_lower": 1, "iban_paper": 1, "iban_lower_spaced": 1,
        "bic11": 10, "bic8": 7, "bic_lower": 1, "bic_padded": 2,
        "empty_string": 1, "null": 1, "missing": 1, "whitespace": 1,
        "bad_checksum": 1, "wrong_length": 1, "garbage": 1,
    },
    "guide": {
        "iban": 12, "iban_spaced": 2, "iban_lower": 1,
        "bic11": 15, "bic8": 8, "bic_lower": 1, "bic_padded": 1,
        "empty_string": 1, "null": 1,
    },
}  # fmt: skip
DEFAULT_PROFILE = "messy"


class SeedError(RuntimeError):
    """The database cannot be seeded as asked (e.g. it already holds data)."""


def resolve_size(size: str | int) -> int:
    """Number of properties for ``"small"``, an int, or a numeric string."""
    if isinstance(size, int) and not isinstance(size, bool):
        properties = size
    elif isinstance(size, str) and size.strip().lower() == "small":
        properties = SMALL_PROPERTIES
    elif isinstance(size, str) and size.strip().isdigit():
        properties = int(size)
    else:
        raise SeedError(f"size must be 'small' or a number of properties, not {size!r}")
    if properties < 1:
        raise SeedError(f"size must be at least 1 property, not {properties}")
    return properties


def collection_counts(size: str | int = "small") -> dict[str, int]:
    """How many documents each collection gets for ``size``."""
    properties = resolve_size(size)
    return {
        name: max(1, round(small * properties / SMALL_PROPERTIES)) for name, small in SMALL_COUNTS.items()
    }


def _deck(profile: str) -> list[str]:
    if profile not in PROFILES:
        raise SeedError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return [variant for variant, count in PROFILES[profile].items() for _ in range(count)]


def _block_variants(seed: int, profile: str, block: int) -> list[str]:
    cards = _deck(profile)
    random.Random(f"vnp-deck:{seed}:{profile}:{block}").shuffle(cards)
    return cards


def _variants(total: int, seed: int, profile: str) -> Iterator[str]:
    block_size = len(_deck(profile))
    for block in range(math.ceil(total / block_size)):
        cards = _block_variants(seed, profile, block)
        yield from cards[: min(block_size, total - block * block_size)]


def expected_variants(
    size: str | int = "small", seed: int = 42, profile: str = DEFAULT_PROFILE
) -> dict[str, int]:
    """How many bank details of each ``swift_bic_iban`` variant :func:`seed` generates."""
    total = collection_counts(size)["PropertyBankDetails"]
    deck = PROFILES.get(profile, {})
    block_size = len(_deck(profile))
    full, rest = divmod(total, block_size)
    counts = Counter({variant: count * full for variant, count in deck.items()})
    if rest:
        counts.update(_block_variants(seed, profile, full)[:rest])
    return {variant: counts.get(variant, 0) for variant in deck}


def expected_distribution(
    size: str | int = "small", seed: int = 42, profile: str = DEFAULT_PROFILE
) -> dict[str, int]:
    """What the recipe will find in PropertyBankDetails after :func:`seed`.

    Returns:
        ``total``, ``iban``, ``swift``, ``empty`` (null, "", whitespace or missing:
        both new fields become null) and ``invalid`` (neither: the transform leaves
        these documents unchanged, with ``swift_bic_iban``).
    """
    result = {"total": 0, "iban": 0, "swift": 0, "empty": 0, "invalid": 0}
    for variant, count in expected_variants(size, seed, profile).items():
        result[VARIANT_KIND[variant]] += count
        result["total"] += count
    return result


def _splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


class Layout:
    """Pure functions of (collection, index): ids, creation times, references."""

    def __init__(self, counts: dict[str, int], seed: int) -> None:
        self.counts = counts
        self.seed = seed
        self._salt = hashlib.sha256(f"vnp:{seed}".encode()).digest()[:3]
        self._span = (_END - _START).total_seconds()
        self._keys: dict[str, int] = {}

    def hash(self, purpose: str, index: int) -> int:
        """A deterministic 64-bit value for (seed, purpose, index)."""
        key = self._keys.get(purpose)
        if key is None:
            digest = hashlib.blake2b(f"{self.seed}:{purpose}".encode(), digest_size=8).digest()
            key = self._keys[purpose] = int.from_bytes(digest, "big")
        return _splitmix(key ^ index)

    def pick(self, purpose: str, index: int, child: str, parent: str) -> int:
        """Index of the ``parent`` document that ``child`` number ``index`` refers to.

        Only parents created no later than (about) the child are candidates, so
        references go back in time and older parents have more children.
        """
        among = self.counts[parent]
        limit = max(1, min(among, index * among // self.counts[child] + 1))
        return self.hash(purpose, index) % limit

    def created(self, collection: str, index: int) -> datetime:
        """createdAt, increasing with the index, so ``_id`` order is creation order."""
        fraction = (self.hash(f"time:{collection}", index) % 1000) / 1000
        position = (index + fraction) / self.counts[collection]
        return _START + timedelta(seconds=int(self._span * position))

    def object_id(self, collection: str, index: int) -> ObjectId:
        """Prisma-like ObjectId: creation time, then collection, seed and index."""
        seconds = int(self.created(collection, index).timestamp())
        return ObjectId(struct.pack(">IB3sI", seconds, _TAGS[collection], self._salt, index))

    def bank_property(self, index: int) -> int:
        """Property of bank details ``index``: the same index, so each has at most one.

        The newest properties (the last few percent) have no bank details yet.
        """
        return index

    def tenant_property(self, tenant: int) -> int:
        return self.pick("tenant-property", tenant, "Tenant", "Property")


def _updated(rng: random.Random, created: datetime) -> datetime:
    latest = min(_END, created + timedelta(days=400))
    seconds = max(0, int((latest - created).total_seconds()))
    return created + timedelta(seconds=rng.randint(0, seconds))


def _digits(rng: random.Random, count: int) -> str:
    return f"{rng.randrange(10**count):0{count}d}"


def _users(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["User"]):
        first, last = rng.choice(vocab.FIRST_NAMES), rng.choice(vocab.LAST_NAMES)
        created = layout.created("User", i)
        yield {
            "_id": layout.object_id("User", i),
            "email": f"{first}.{last}.{i}@example.com".lower(),
            "firstName": first,
            "lastName": last,
            "phone": f"+44 7700 9{_digits(rng, 5)}",
            "role": rng.choice(vocab.ROLES),
            "isActive": rng.random() < 0.93,
            "passwordHash": "$2b$10$" + "".join(rng.choices(vocab.BCRYPT_CHARS, k=53)),
            "lastLoginAt": _updated(rng, created) if rng.random() < 0.8 else None,
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _portfolios(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["Portfolio"]):
        created = layout.created("Portfolio", i)
        area = rng.choice(vocab.CITIES)[0]
        yield {
            "_id": layout.object_id("Portfolio", i),
            "userId": layout.object_id("User", layout.pick("portfolio-user", i, "Portfolio", "User")),
            "name": f"{area} {rng.choice(vocab.PORTFOLIO_WORDS)} Portfolio",
            "description": rng.choice(vocab.PORTFOLIO_DESCRIPTIONS),
            "currency": "GBP",
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _properties(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["Property"]):
        created = layout.created("Property", i)
        city, postcode_area = rng.choice(vocab.CITIES)
        kind = rng.choice(vocab.PROPERTY_TYPES)
        street = f"{rng.randint(1, 240)} {rng.choice(vocab.STREETS)}"
        inward = "".join(rng.choice("ABDEFGHJLNPQRSTUWXYZ") for _ in range(2))
        postcode = f"{postcode_area}{rng.randint(1, 28)} {rng.randint(1, 9)}{inward}"
        yield {
            "_id": layout.object_id("Property", i),
            "portfolioId": layout.object_id(
                "Portfolio", layout.pick("property-portfolio", i, "Property", "Portfolio")
            ),
            "name": street,
            "address": {
                "line1": street,
                "line2": f"Flat {rng.randint(1, 12)}" if kind == "FLAT" else None,
                "city": city,
                "postcode": postcode,
                "country": "GB",
            },
            "propertyType": kind,
            "bedrooms": rng.randint(1, 6),
            "units": rng.randint(3, 12) if kind == "HMO" else 1,
            "purchasePrice": rng.randrange(85_000, 1_250_000, 500),
            "purchaseDate": created - timedelta(days=rng.randint(30, 3000)),
            "status": rng.choice(vocab.PROPERTY_STATUSES),
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _iban(rng: random.Random) -> tuple[str, str, str]:
    """A valid IBAN with its country's BBAN structure, its bank's name and country."""
    country = rng.choice(vocab.IBAN_COUNTRY_WEIGHTS)
    bank_code, bank_name = rng.choice(vocab.IBAN_BANKS[country])
    bban = bank_code
    for length, charset in vocab.BBAN_FORMATS[country]:
        alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}.get(
            charset, "0123456789" * 3 + "ABCDEFGHJKLMNPQRSTUVWXYZ"
        )
        bban += "".join(rng.choices(alphabet, k=length))
    return make_iban(country, bban), bank_name, country


def _bic(rng: random.Random, eleven: bool) -> tuple[str, str, str]:
    bic8, bank_name = rng.choice(vocab.BICS)
    return (bic8 + rng.choice(vocab.BIC_BRANCHES) if eleven else bic8), bank_name, bic8[4:6]


def _swift_bic_iban(variant: str, rng: random.Random) -> tuple[object, str, str]:
    """(stored value, bank name, country) for one variant; ``vocab.MISSING`` for no field."""
    if variant.startswith("iban") or variant in ("bad_checksum", "wrong_length"):
        iban, bank, country = _iban(rng)
        if variant == "bad_checksum":
            position = rng.choice([i for i, c in enumerate(iban) if i >= 4 and c.isdigit()])
            digit = rng.choice([d for d in "0123456789" if d != iban[position]])
            return iban[:position] + digit + iban[position + 1 :], bank, country
        if variant == "wrong_length":
            changed = iban[:-1] if rng.random() < 0.5 else iban + rng.choice("0123456789")
            return iban_print_format(changed), bank, country
        printed = {
            "iban": iban,
            "iban_spaced": iban_print_format(iban),
            "iban_lower": iban.lower(),
            "iban_paper": "IBAN " + iban_print_format(iban),
            "iban_lower_spaced": iban_print_format(iban).lower(),
        }
        return printed[variant], bank, country
    if variant.startswith("bic"):
        bic, bank, country = _bic(rng, eleven=variant == "bic11" or rng.random() < 0.5)
        if variant == "bic_lower":
            return bic.lower(), bank, country
        if variant == "bic_padded":
            return (
                rng.choice(("  ", " ", "\t")) + bic + rng.choice(("  ", " ", "\n")),
                bank,
                country,
            )
        return bic, bank, country
    bank, country = rng.choice(vocab.BICS)[1], "GB"
    empties: dict[str, object] = {
        "empty_string": "",
        "null": None,
        "missing": vocab.MISSING,
        "whitespace": rng.choice(("   ", "\t", " \n ")),
    }
    if variant in empties:
        return empties[variant], bank, country
    return rng.choice(vocab.GARBAGE), bank, country


def _bank_details(layout: Layout, rng: random.Random, profile: str) -> Iterator[dict[str, Any]]:
    total = layout.counts["PropertyBankDetails"]
    for i, variant in enumerate(_variants(total, layout.seed, profile)):
        created = layout.created("PropertyBankDetails", i)
        value, bank_name, country = _swift_bic_iban(variant, rng)
        normalised = str(value).replace(" ", "").upper() if isinstance(value, str) else ""
        if normalised.startswith("GB") and len(normalised) == 22 and normalised[2:4].isdigit():
            sort_code, account = normalised[8:14], normalised[14:]
        elif country == "GB":
            sort_code, account = _digits(rng, 6), _digits(rng, 8)
        else:
            sort_code, account = None, _digits(rng, rng.choice((8, 10, 12)))
        holder = (
            f"{rng.choice(vocab.FIRST_NAMES)} {rng.choice(vocab.LAST_NAMES)}"
            if rng.random() < 0.6
            else f"{rng.choice(vocab.LAST_NAMES)} {rng.choice(vocab.COMPANY_SUFFIXES)}"
        )
        document: dict[str, Any] = {
            "_id": layout.object_id("PropertyBankDetails", i),
            "propertyId": layout.object_id("Property", layout.bank_property(i)),
            "account_holder_name": holder,
            "bank_name": bank_name,
            "sort_code": f"{sort_code[:2]}-{sort_code[2:4]}-{sort_code[4:]}" if sort_code else None,
            "account_number": account,
        }
        if value is not vocab.MISSING:
            document["swift_bic_iban"] = value
        document["createdAt"] = created
        document["updatedAt"] = _updated(rng, created)
        yield document


def _tenants(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["Tenant"]):
        created = layout.created("Tenant", i)
        first, last = rng.choice(vocab.FIRST_NAMES), rng.choice(vocab.LAST_NAMES)
        yield {
            "_id": layout.object_id("Tenant", i),
            "propertyId": layout.object_id("Property", layout.tenant_property(i)),
            "firstName": first,
            "lastName": last,
            "email": f"{first}.{last}.t{i}@example.org".lower(),
            "phone": f"+44 7700 9{_digits(rng, 5)}",
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _leases(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    tenants = layout.counts["Tenant"]
    for i in range(layout.counts["Lease"]):
        created = layout.created("Lease", i)
        tenant = i % tenants
        start = created + timedelta(days=rng.randint(0, 30))
        rent = rng.randrange(550, 3200, 25)
        yield {
            "_id": layout.object_id("Lease", i),
            "propertyId": layout.object_id("Property", layout.tenant_property(tenant)),
            "tenantId": layout.object_id("Tenant", tenant),
            "startDate": start,
            "endDate": start + timedelta(days=rng.choice((182, 365, 730))),
            "monthlyRent": rent,
            "depositAmount": rent * 5 // 4,
            "status": rng.choice(vocab.LEASE_STATUSES),
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _maintenance(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["MaintenanceRequest"]):
        created = layout.created("MaintenanceRequest", i)
        title, priority = rng.choice(vocab.MAINTENANCE_ISSUES)
        yield {
            "_id": layout.object_id("MaintenanceRequest", i),
            "propertyId": layout.object_id(
                "Property", layout.pick("repair", i, "MaintenanceRequest", "Property")
            ),
            "title": title,
            "priority": priority,
            "status": rng.choice(("OPEN", "IN_PROGRESS", "RESOLVED", "RESOLVED")),
            "reportedAt": created,
            "createdAt": created,
            "updatedAt": _updated(rng, created),
        }


def _audit_log(layout: Layout, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(layout.counts["AuditLog"]):
        entity = rng.choice(("Property", "PropertyBankDetails", "Lease", "Tenant", "User"))
        action = "LOGIN" if entity == "User" else rng.choice(("CREATE", "UPDATE", "UPDATE"))
        yield {
            "_id": layout.object_id("AuditLog", i),
            "userId": layout.object_id("User", layout.pick("audit-user", i, "AuditLog", "User")),
            "action": action,
            "entity": entity,
            "entityId": layout.object_id(entity, layout.pick("audit-entity", i, "AuditLog", entity)),
            "ip": f"192.0.2.{rng.randint(1, 254)}",
            "createdAt": layout.created("AuditLog", i),
        }


def generate(
    collection: str, size: str | int = "small", seed: int = 42, profile: str = DEFAULT_PROFILE
) -> Iterator[dict[str, Any]]:
    """The documents of one collection, in ``_id`` order, one at a time."""
    layout = Layout(collection_counts(size), seed)
    rng = random.Random(f"vnp-docs:{seed}:{collection}")
    generators: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "User": lambda: _users(layout, rng),
        "Portfolio": lambda: _portfolios(layout, rng),
        "Property": lambda: _properties(layout, rng),
        "PropertyBankDetails": lambda: _bank_details(layout, rng, profile),
        "Tenant": lambda: _tenants(layout, rng),
        "Lease": lambda: _leases(layout, rng),
        "MaintenanceRequest": lambda: _maintenance(layout, rng),
        "AuditLog": lambda: _audit_log(layout, rng),
    }
    return generators[collection]()
