"""What is never shown: secrets in reasons, log lines, ``flow.comment``, error bodies and ``explain``.

- Header values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
  ``X-Api-Key``, of any header named like a secret (``X-Auth-Token``, ``X-Session-Id``, ...) and of
  the header ``settings.jwt.from`` reads the token from: ``<redacted>``.
- Cookie values: the cookie ``settings.jwt.from`` names and cookies named like secrets always;
  any other cookie value longer than ``COOKIE_SHOWN_CHARS`` characters as ``<redacted, N chars>``
  (a session id is long; an A/B flag such as ``beta`` stays readable).
- Query parameters named like secrets (``token``, ``access_token``, ``api_key``, ``key``,
  ``password``, ``secret``, ``sig``, ``X-Amz-Signature``, ...): in a reason and in the request
  line (``GET http://h/p?access_token=<redacted>``).

No fingerprint of a redacted value is shown: a short hash of a low-entropy secret can be brute-forced.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence
from urllib.parse import unquote_plus

SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
COOKIE_SHOWN_CHARS = 8
REDACTED = "<redacted>"

# names (compared lower-case, with '-' as '_') that hold secrets, exactly or as a part between separators
_SECRET_WORDS = ("token", "secret", "password", "passwd", "pwd", "passphrase", "apikey", "api_key", "key",
                 "sig", "signature", "auth", "authorization", "credential", "credentials", "session",
                 "sessionid", "sid", "jwt", "bearer", "otp", "code", "private", "cookie", "csrf", "xsrf",
                 "nonce", "hmac", "assertion", "ticket", "saml", "samlresponse", "samlrequest")
_SECRET_PART = re.compile(r"(?:^|[_.\[])(?:" + "|".join(_SECRET_WORDS) + r")(?:$|[_.\]])")
# camelCase and glued forms: accessToken, apiKey, sessionid, clientsecret, X-Amz-Signature
_SECRET_GLUED = re.compile(r"token|secret|passw|apikey|api_key|signature|credential|session|private_?key|jwt")


def secret_name(name: str) -> bool:
    """Is a header, cookie or query parameter of this name likely to carry a secret?"""
    low = name.lower().replace("-", "_")
    return bool(_SECRET_PART.search(low) or _SECRET_GLUED.search(low))


def redact_all(values: Sequence[Any]) -> str:
    return REDACTED


def redact_long(values: Sequence[Any]) -> list[Any]:
    """Cookie values: short ones as they are, longer ones replaced by their length."""
    return [v if not isinstance(v, str) or len(v) <= COOKIE_SHOWN_CHARS else f"<redacted, {len(v)} chars>"
            for v in values]


def header_shower(name_lower: str, jwt: Any) -> Callable[[Sequence[Any]], Any] | None:
    """How a header's values are shown: None (as they are) or a redaction."""
    if name_lower in SENSITIVE_HEADERS or secret_name(name_lower) or (
            jwt is not None and jwt.source_kind == "header" and jwt.source_name == name_lower):
        return redact_all
    return None


def cookie_shower(name: str, jwt: Any) -> Callable[[Sequence[Any]], Any]:
    if secret_name(name) or (jwt is not None and jwt.source_kind == "cookie" and jwt.source_name == name):
        return redact_all
    return redact_long


def query_shower(name: str) -> Callable[[Sequence[Any]], Any] | None:
    return redact_all if secret_name(name) else None


def redact_query_string(qs: str) -> str:
    """A raw query string with the values of secret-named parameters replaced by ``<redacted>``."""
    if not qs or "=" not in qs:
        return qs
    out = []
    changed = False
    for part in qs.split("&"):
        name, eq, _ = part.partition("=")
        if eq:
            try:
                plain = unquote_plus(name, errors="replace")
            except Exception:  # pragma: no cover - unquote_plus is lenient
                plain = name
            if secret_name(plain):
                part = name + "=" + REDACTED
                changed = True
        out.append(part)
    return "&".join(out) if changed else qs


def redact_url(url: str | None) -> str | None:
    """A URL with the values of secret-named query parameters replaced by ``<redacted>`` (log lines)."""
    if not url or "?" not in url:
        return url
    base, _, qs = url.partition("?")
    return f"{base}?{redact_query_string(qs)}"
