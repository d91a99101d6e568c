"""Display copies of untrusted text: URLs without credentials, log lines without control characters."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# query parameters that carry a secret: token, access_token, api_key, apikey, key, sig, signature,
# X-Amz-Signature, X-Amz-Credential, password, secret, auth, session ids ...
_SECRET_PARAM = re.compile(r"(token|key|sig|signature|secret|passw|pwd|auth|credential|session)", re.IGNORECASE)
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@]*@")
_SECRET_IN_TEXT = re.compile(r"(?i)([?&;][^=&#\s]*(?:token|key|sig|signature|secret|passw|pwd|auth|credential"
                             r"|session)[^=&#\s]*=)[^&#\s]*")
# C0/C1 controls, Unicode line separators, and lone surrogates (undecodable bytes, which no UTF-8 log can encode)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def redact_url(url: str) -> str:
    """``url`` with any ``user:pass@`` and the values of secret-looking query parameters replaced.

    Anything that is not a URL with a scheme comes back unchanged (local paths, empty strings)."""
    try:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            return url
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query and _SECRET_PARAM.search(query):
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="/:,")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return redact_text(url)


def redact_optional(url: str | None) -> str | None:
    return None if url is None else redact_url(url)


def redact_text(text: str) -> str:
    """Every URL inside free text (a log message, an error detail) with its credentials replaced."""
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def escape_control(text: str) -> str:
    """Control characters (newlines included) as visible escapes, so one log record stays one line
    and no client can forge a line of its own."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
