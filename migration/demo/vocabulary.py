"""Words and codes the demo dataset draws from: names, streets, banks, BICs, junk.

Phone numbers are in Ofcom's drama range (07700 900xxx) and IP addresses in
TEST-NET-1, so nothing generated belongs to anyone. Bank codes and BICs are real
institutions' public identifiers.
"""

from __future__ import annotations

# Stands for an absent swift_bic_iban field (not the same as null).
MISSING = object()
FIRST_NAMES = (
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo",
    "Freya", "Arthur", "Lily", "Oscar", "Grace", "Charlie", "Sophia", "Jacob", "Emily",
    "Thomas", "Priya", "Mohammed", "Aisha", "Daniel", "Chloe", "Samuel", "Zara",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Wright", "Robinson", "Thompson", "Evans", "Walker", "Khan", "Hughes", "Edwards", "Green",
    "Hall", "Wood", "Clarke", "Murphy", "O'Brien", "Kowalski", "Rossi",
)  # fmt: skip
COMPANY_SUFFIXES = ("Property Holdings Ltd", "Lettings Ltd", "Estates LLP", "Investments Ltd")
ROLES = ("OWNER", "OWNER", "OWNER", "MANAGER", "ACCOUNTANT", "ADMIN")
BCRYPT_CHARS = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
CITIES = (
    ("London", "SE"), ("London", "N"), ("Manchester", "M"), ("Leeds", "LS"),
    ("Bristol", "BS"), ("Birmingham", "B"), ("Liverpool", "L"), ("Nottingham", "NG"),
    ("Sheffield", "S"), ("Cardiff", "CF"), ("Edinburgh", "EH"), ("Glasgow", "G"),
)  # fmt: skip
STREETS = (
    "High Street", "Station Road", "Church Lane", "Victoria Road", "Park Avenue",
    "Queen's Road", "Mill Lane", "Elm Grove", "Albert Street", "Canal Wharf", "The Crescent",
)  # fmt: skip
PORTFOLIO_WORDS = ("Residential", "Student", "Riverside", "City Centre", "Family Homes", "HMO")
PORTFOLIO_DESCRIPTIONS = (
    "Buy-to-let flats held for long-term rental income.",
    "Mixed residential lets managed in-house.",
    "Houses in multiple occupation near the university.",
    "Refurbished terraces let through an agent.",
)
PROPERTY_TYPES = ("FLAT", "FLAT", "HOUSE", "HOUSE", "HMO", "COMMERCIAL")
PROPERTY_STATUSES = ("LET", "LET", "LET", "VACANT", "UNDER_OFFER", "REFURBISHMENT")
LEASE_STATUSES = ("ACTIVE", "ACTIVE", "ACTIVE", "ENDED", "PENDING")
MAINTENANCE_ISSUES = (
    ("Boiler not heating water", "HIGH"), ("Leaking kitchen tap", "MEDIUM"),
    ("Broken window latch", "LOW"), ("Damp in bathroom", "MEDIUM"),
    ("Smoke alarm beeping", "HIGH"), ("Garden fence down", "LOW"),
)  # fmt: skip
# IBAN countries (weighted: the business is British) and their BBAN after the bank
# code (Italy's bank codes carry the CIN letter that precedes the ABI).
IBAN_COUNTRY_WEIGHTS = (
    ["GB"] * 10 + ["IE", "DE", "FR"] * 3 + ["NL", "ES", "IT"] * 2
    + ["BE", "CH", "AT", "PL", "PT", "LU"]
)  # fmt: skip
BBAN_FORMATS: dict[str, list[tuple[int, str]]] = {
    "GB": [(14, "n")], "IE": [(14, "n")], "DE": [(10, "n")], "FR": [(5, "n"), (11, "c"), (2, "n")],
    "NL": [(10, "n")], "ES": [(4, "n"), (2, "n"), (10, "n")], "IT": [(5, "n"), (12, "c")],
    "BE": [(9, "n")], "CH": [(12, "c")], "AT": [(11, "n")], "PL": [(16, "n")],
    "PT": [(4, "n"), (11, "n"), (2, "n")], "LU": [(13, "c")],
}  # fmt: skip
IBAN_BANKS: dict[str, list[tuple[str, str]]] = {
    "GB": [("NWBK", "NatWest"), ("BARC", "Barclays"), ("LOYD", "Lloyds Bank"),
           ("MIDL", "HSBC UK"), ("ABBY", "Santander UK"), ("MONZ", "Monzo")],
    "IE": [("AIBK", "AIB"), ("BOFI", "Bank of Ireland")],
    "DE": [("37040044", "Commerzbank"), ("50070010", "Deutsche Bank"), ("10010010", "Postbank")],
    "FR": [("30004", "BNP Paribas"), ("30003", "Société Générale"), ("20041", "La Banque Postale")],
    "NL": [("ABNA", "ABN AMRO"), ("INGB", "ING"), ("RABO", "Rabobank")],
    "ES": [("2100", "CaixaBank"), ("0049", "Banco Santander"), ("0182", "BBVA")],
    "IT": [("X03069", "Intesa Sanpaolo"), ("U02008", "UniCredit")],
    "BE": [("001", "BNP Paribas Fortis"), ("068", "Belfius")],
    "CH": [("00230", "UBS"), ("00700", "Zürcher Kantonalbank")],
    "AT": [("12000", "Bank Austria"), ("20111", "Erste Bank")],
    "PL": [("10201026", "PKO Bank Polski"), ("10901014", "Santander Bank Polska")],
    "PT": [("0033", "Millennium bcp"), ("0035", "Caixa Geral de Depósitos")],
    "LU": [("001", "Spuerkeess"), ("002", "BIL")],
}  # fmt: skip
BICS: tuple[tuple[str, str], ...] = (
    ("HSBCGB2L", "HSBC Bank"), ("MIDLGB22", "HSBC UK"), ("BARCGB22", "Barclays"),
    ("NWBKGB2L", "NatWest"), ("LOYDGB2L", "Lloyds Bank"), ("ABBYGB2L", "Santander UK"),
    ("HSBCGB2L", "HSBC Bank"), ("BARCGB22", "Barclays"), ("NWBKGB2L", "NatWest"),
    ("DEUTDEFF", "Deutsche Bank"), ("COBADEFF", "Commerzbank"), ("BNPAFRPP", "BNP Paribas"),
    ("SOGEFRPP", "Société Générale"), ("INGBNL2A", "ING"), ("ABNANL2A", "ABN AMRO"),
    ("RABONL2U", "Rabobank"), ("UBSWCHZH", "UBS"), ("BSCHESMM", "Banco Santander"),
    ("BBVAESMM", "BBVA"), ("UNCRITMM", "UniCredit"), ("BCITITMM", "Intesa Sanpaolo"),
    ("AIBKIE2D", "AIB"), ("BOFIIE2D", "Bank of Ireland"), ("NDEAFIHH", "Nordea"),
    ("DABADKKK", "Danske Bank"), ("CHASUS33", "JPMorgan Chase"), ("CITIUS33", "Citibank"),
    ("BOFAUS3N", "Bank of America"), ("NEDSZAJJ", "Nedbank"), ("SBZAZAJJ", "Standard Bank"),
    ("ROYCCAT2", "Royal Bank of Canada"), ("ANZBAU3M", "ANZ"), ("HSBCHKHH", "HSBC Hong Kong"),
    ("DBSSSGSG", "DBS Bank"), ("BKCHCNBJ", "Bank of China"), ("EBILAEAD", "Emirates NBD"),
)  # fmt: skip
BIC_BRANCHES = ("XXX", "XXX", "XXX", "XXX", "500", "LDN", "MAN", "FRA", "PAR", "AMS", "B12")
# Real-world junk found in free-text bank fields; every one is neither an IBAN nor a BIC.
GARBAGE = (
    "N/A", "n/a", "TBC", "?", "none", "0000", "GB00", "unknown", "see email from landlord",
    "IBAN to follow", "HSBCUK2L", "12-34-56 12345678", "GB82 WEST 1234 5698 7654 32 / NWBKGB2L",
)  # fmt: skip
