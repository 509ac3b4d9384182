"""Masking of secrets in everything the tool prints or writes.

Three sources of secrets: passwords in connection strings (``scheme://user:pw@host``),
``Authorization`` header values, and environment values whose names contain
PASSWORD, TOKEN, SECRET or KEY. A :class:`Redactor` learns the literal values as
plans are rendered and masks them wherever they later appear (captured subprocess
output included); URL passwords are also masked by pattern, known or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY", re.IGNORECASE)
# user:password@ inside any scheme://... URL; the password may not contain '@' or '/'.
# The lookbehind anchors a match at the start of a scheme; without it a long run of
# letters (base64, minified JS in captured output) costs quadratic time.
_URL_PASSWORD = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)(?=@)"
)
# The credentials of an ``Authorization`` header written out as text (``curl -H
# 'Authorization: Bearer ...'``, a dumped header dict, a tool's debug output): the
# scheme stays readable, the rest of the value up to a quote, comma or line end is
# masked, known or not. The classes exclude the separators, so matching is linear.
_AUTH_HEADER = re.compile(
    r"(?i)(?P<head>\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?:bearer|basic|token|digest|negotiate|ntlm|apikey)[ \t]+)?)"
    r"(?P<cred>[^\s\"'\\,;*][^\s\"'\\,;]*(?:[ \t]+[^\s\"'\\,;]+)*)"
)
# A bearer token on its own (RFC 6750 b64token), e.g. ``token_type=Bearer abc...``.
_BEARER_TOKEN = re.compile(r"\bBearer[ \t]+(?P<cred>[A-Za-z0-9\-._~+/]{8,}=*)")


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its userinfo replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def mask_authorization(text: str) -> str:
    """Return ``text`` with Authorization header credentials and bearer tokens replaced by ``***``."""
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(lambda m: m.group("head") + MASK, text)
    if "Bearer" in text:
        text = _BEARER_TOKEN.sub("Bearer " + MASK, text)
    return text


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


class Redactor:
    """Masks known secret values and URL passwords in strings and nested data."""

    # Very short values would mask innocent text everywhere ("1", "yes").
    MIN_SECRET_LEN = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for value in secrets:
            self.add(value)

    def add(self, value: str | None) -> None:
        if not value or len(value) < self.MIN_SECRET_LEN or value in self._secrets:
            return
        self._secrets.add(value)
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def add_env(self, env: Mapping[str, str]) -> None:
        """Learn the values of environment variables whose names look secret."""
        for name, value in env.items():
            if is_secret_name(name):
                self.add(value)
            for m in _URL_PASSWORD.finditer(value or ""):
                self.add(m.group("pw"))

    def learn(self, value: Any) -> None:
        """Learn URL passwords and Authorization values found inside ``value``."""
        if isinstance(value, str):
            for m in _URL_PASSWORD.finditer(value):
                self.add(m.group("pw"))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(k, str) and k.lower() == "authorization" and isinstance(v, str):
                    self.add(v)
                    parts = v.split(None, 1)
                    if len(parts) == 2:
                        self.add(parts[1])
                self.learn(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.learn(v)

    def text(self, value: str) -> str:
        if self._pattern is not None:
            value = self._pattern.sub(MASK, value)
        return mask_authorization(mask_url(value))

    def __call__(self, value: Any) -> Any:
        """Redact strings anywhere inside ``value`` (dicts, lists, tuples)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value
