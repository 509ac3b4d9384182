"""The ``http.check`` step type, and the small HTTP client other steps share."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from migration.errors import StepError
from migration.secrets import is_secret_name
from migration.steps._subprocess import stringify_env
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import register

MAX_BODY_BYTES = 5 * 1024 * 1024
_SNIPPET_CHARS = 200
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


class RequestFailed(Exception):
    """No HTTP answer at all (refused, timed out, TLS...). ``str`` is one line."""


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


def _header_strings(value: Any) -> Any:
    return stringify_env(value) if isinstance(value, dict) else value


# Parameter types of every step type that makes HTTP requests (http.check, notify,
# process.start's ready_url): checked and converted the same way everywhere.
UrlParam = Annotated[str, AfterValidator(check_url)]
HeadersParam = Annotated[dict[str, str], BeforeValidator(_header_strings)]


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10.0,
    follow_redirects: bool = True,
    verify_tls: bool = True,
) -> Response:
    """One HTTP request. Any status is a :class:`Response`; no answer raises RequestFailed."""
    request = urllib.request.Request(url, data=data, method=method.upper())
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    handlers: list[Any] = []
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK or host.startswith("127."):
        # A corporate http_proxy must not intercept checks of the app on this machine.
        handlers.append(urllib.request.ProxyHandler({}))
    if not follow_redirects:
        handlers.append(_NoRedirect())
    if not verify_tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as answer:
            body = answer.read(MAX_BODY_BYTES)
            return Response(answer.status, body, time.monotonic() - started)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY_BYTES)
        except Exception:
            body = b""
        return Response(exc.code, body, time.monotonic() - started)
    except urllib.error.URLError as exc:
        raise RequestFailed(_reason(exc.reason, timeout)) from exc
    except TimeoutError as exc:
        raise RequestFailed(f"no answer within {timeout:g}s") from exc
    except http.client.RemoteDisconnected as exc:
        raise RequestFailed("connection closed without an answer") from exc
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise RequestFailed(_reason(exc, timeout)) from exc


def _reason(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def learn_header_secrets(ctx: StepContext[Any], headers: dict[str, str]) -> None:
    """Teach the redactor the values of credential headers (Authorization, X-Api-Key...)."""
    ctx.redact.learn(headers)
    for name, value in headers.items():
        if name.lower() in _CREDENTIAL_HEADERS or is_secret_name(name):
            ctx.redact.add(value)


def json_subset_mismatch(expected: Any, actual: Any, path: str = "$") -> str | None:
    """Where ``actual`` fails to contain ``expected``, or None.

    Dicts: every expected key must be present and match (extra keys are fine).
    Lists: same length, each element matching. Scalars: equal, and a bool never
    equals a number.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{path}: expected an object, got {_short(actual)}"
        for key, value in expected.items():
            if key not in actual:
                return f"{path}.{key}: missing"
            found = json_subset_mismatch(value, actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{path}: expected {_short(expected)}, got {_short(actual)}"
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found = json_subset_mismatch(want, got, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(expected, bool) != isinstance(actual, bool) or expected != actual:
        return f"{path}: expected {_short(expected)}, got {_short(actual)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 3] + "..."


@register
class HttpCheck(Step["HttpCheck.Params"]):
    """Check an HTTP endpoint: wait until it answers as expected, optionally stay healthy.

    Each attempt sends one request and checks the status (``expect_status``), a
    substring of the body (``expect_body``) and a subset of the JSON answer
    (``expect_json``, nested). Failed attempts are retried with exponential backoff
    (``interval`` doubling up to ``max_interval``) while ``retries`` and ``deadline``
    allow: ``deadline: 120`` means "wait up to two minutes for the app to come up".
    With neither, one attempt decides. After the first success, ``hold_for`` keeps
    checking every ``interval`` seconds for that long, and any failure then fails the
    step ("watch it after start"). Header values, ``Authorization`` above all, never
    appear in logs or errors.

    Example:
        ```yaml
        - id: app-up
          uses: http.check
          with:
            url: http://localhost:3000/
            deadline: 120
            hold_for: 60
        - id: bank-details-api
          uses: http.check
          with:
            url: "http://localhost:3000/property-bank-details/{{ vars.sample_id }}"
            headers: {Authorization: "Bearer {{ env.API_TOKEN }}"}
            expect_json: {swiftBicNumber: "DEUTDEFF"}
        ```
    """

    name = "http.check"
    outside_effects = True
    outputs = {
        "status": "HTTP status of the last answer (null if none came)",
        "elapsed": "seconds from the first request to the end",
        "checks": "requests sent, hold_for included",
        "attempts": "requests until the first success",
    }

    class Params(StepParams):
        url: UrlParam = Field(description="http(s) URL to request")
        method: str = Field(default="GET", description="HTTP method")
        headers: HeadersParam = Field(default_factory=dict, description="request headers")
        body: str | dict[str, Any] | list[Any] | None = Field(
            default=None, description="request body; an object or list is sent as JSON"
        )
        expect_status: int | list[int] = Field(default=200, description="status(es) that pass")
        expect_body: str | None = Field(default=None, description="text the body must contain")
        expect_json: dict[str, Any] | list[Any] | None = Field(
            default=None, description="JSON the answer must contain (subset, nested)"
        )
        retries: int | None = Field(
            default=None,
            ge=0,
            description="extra attempts after the first (default: none, or unlimited within `deadline`)",
        )
        interval: float = Field(default=1.0, gt=0, description="first wait between attempts (s)")
        max_interval: float = Field(default=10.0, gt=0, description="cap of the backoff (s)")
        deadline: float | None = Field(default=None, gt=0, description="keep trying for this many seconds")
        hold_for: float = Field(default=0, ge=0, description="after success, keep checking this many seconds")
        timeout: float = Field(default=10.0, gt=0, description="seconds per request")
        follow_redirects: bool = True
        verify_tls: bool = Field(default=True, description="false accepts self-signed certs")

        @field_validator("method")
        @classmethod
        def _method(cls, value: str) -> str:
            return value.upper()

    def run(self, ctx: StepContext[HttpCheck.Params]) -> dict[str, Any]:
        p = ctx.params
        learn_header_secrets(ctx, p.headers)
        log = ctx.log
        where = f"{p.method} {ctx.redact(p.url)}"
        started = time.monotonic()
        attempts = 0
        checks = 0
        while True:
            ctx.check_stop()
            attempts += 1
            checks += 1
            remaining = None if p.deadline is None else p.deadline - (time.monotonic() - started)
            timeout = p.timeout if remaining is None else max(0.5, min(p.timeout, remaining))
            status, problem = self._attempt(ctx, timeout)
            if problem is None:
                break
            elapsed = time.monotonic() - started
            delay = min(p.interval * 2 ** (attempts - 1), p.max_interval)
            retry = p.retries is not None or p.deadline is not None
            if p.retries is not None and attempts > p.retries:
                retry = False
            if p.deadline is not None:
                if elapsed >= p.deadline:
                    retry = False
                delay = min(delay, max(0.0, p.deadline - elapsed))
            outputs: dict[str, object] = {
                "status": status,
                "elapsed": round(elapsed, 3),
                "checks": checks,
            }
            if not retry:
                tried = f"after {attempts} attempts in {elapsed:.1f}s" if attempts > 1 else ""
                raise StepError(f"{where}: {problem}" + (f" ({tried})" if tried else ""), outputs=outputs)
            log.info(
                "not ready yet",
                url=ctx.redact(p.url),
                attempt=attempts,
                problem=problem,
                retry_in_s=round(delay, 2),
            )
            ctx.wait(delay)
        log.info("check passed", url=ctx.redact(p.url), status=status, attempts=attempts)
        if p.hold_for > 0:
            hold_started = time.monotonic()
            log.info("holding", url=ctx.redact(p.url), hold_for_s=p.hold_for)
            while (held := time.monotonic() - hold_started) < p.hold_for:
                ctx.wait(min(p.interval, p.hold_for - held))
                checks += 1
                status, problem = self._attempt(ctx, p.timeout)
                if problem is not None:
                    held = time.monotonic() - hold_started
                    raise StepError(
                        f"{where}: healthy at first, then failed {held:.1f}s into "
                        f"hold_for {p.hold_for:g}s: {problem}",
                        outputs={
                            "status": status,
                            "elapsed": round(time.monotonic() - started, 3),
                            "checks": checks,
                        },
                    )
            log.info("held", url=ctx.redact(p.url), checks=checks)
        return {
            "status": status,
            "elapsed": round(time.monotonic() - started, 3),
            "checks": checks,
            "attempts": attempts,
        }

    def _attempt(self, ctx: StepContext[HttpCheck.Params], timeout: float) -> tuple[int | None, str | None]:
        """One request: ``(status, None)`` when every expectation holds, else the problem."""
        p = ctx.params
        headers = dict(p.headers)
        data: bytes | None = None
        if isinstance(p.body, (dict, list)):
            data = json.dumps(p.body).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif p.body is not None:
            data = p.body.encode()
        try:
            answer = fetch(
                p.url,
                method=p.method,
                headers=headers,
                data=data,
                timeout=timeout,
                follow_redirects=p.follow_redirects,
                verify_tls=p.verify_tls,
            )
        except RequestFailed as exc:
            return None, ctx.redact(str(exc))
        expected = p.expect_status if isinstance(p.expect_status, list) else [p.expect_status]
        text = answer.text()
        if answer.status not in expected:
            want = " or ".join(str(s) for s in expected)
            body = _snippet(text)
            return answer.status, ctx.redact(
                f"expected status {want}, got {answer.status}" + (f": {body}" if body else "")
            )
        if p.expect_body is not None and p.expect_body not in text:
            return answer.status, ctx.redact(
                f"expected the body to contain {p.expect_body!r}, got: {_snippet(text)!r}"
            )
        if p.expect_json is not None:
            try:
                document = json.loads(text)
            except ValueError:
                return answer.status, ctx.redact(f"expected JSON, got: {_snippet(text)!r}")
            mismatch = json_subset_mismatch(p.expect_json, document)
            if mismatch:
                return answer.status, ctx.redact(f"unexpected JSON: {mismatch}")
        return answer.status, None

    def preview(self, ctx: StepContext[HttpCheck.Params]) -> str:
        p = ctx.params
        learn_header_secrets(ctx, p.headers)
        expected = p.expect_status if isinstance(p.expect_status, list) else [p.expect_status]
        parts = [
            f"would request {p.method} {ctx.redact(p.url)}",
            "expect status " + " or ".join(str(s) for s in expected),
        ]
        if p.expect_body is not None:
            parts.append(f"body containing {ctx.redact(p.expect_body)!r}")
        if p.expect_json is not None:
            parts.append(f"JSON containing {ctx.redact(_short(p.expect_json))}")
        if p.deadline is not None:
            parts.append(f"retrying for up to {p.deadline:g}s")
        elif p.retries:
            parts.append(f"up to {p.retries} retries")
        if p.hold_for:
            parts.append(f"then hold for {p.hold_for:g}s")
        return "; ".join(parts)
