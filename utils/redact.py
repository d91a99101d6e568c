"""Display copies of untrusted text: credentials out of every URL, control characters out of log lines.

``redact_text`` is the one redaction every output path applies: the log formatter, the CLIs' console
(``redact_console``), and, string by string (``redact_json``), the pipeline's reports and checkpoints and
every JSON body the API sends."""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

REDACTED = "REDACTED"
# Names of query or fragment parameters that carry a secret: token, access_token, id_token, api_key,
# apikey, key, sig, signature, X-Amz-Signature, X-Amz-Credential, password, passwd, pass, pwd, secret,
# auth, session ids, jwt, an OAuth ``code`` ... A false positive only hides a harmless value in a copy
# meant for display; the original is what is fetched.
_WORDS = "token|key|sig|secret|pass|pwd|auth|credential|session|jwt|code"
# characters that end a URL inside prose, a Python repr or a JSON string
_STOP = "\\s\"'<>`"
_USERINFO = re.compile(rf"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#{_STOP}]*@")
_SECRET_PARAM = re.compile(rf"(?i)([?&;#][^=&#;{_STOP}]*(?:{_WORDS})[^=&#;{_STOP}]*=)[^&#;{_STOP}]*")
# C0/C1 controls, Unicode line separators, and lone surrogates (undecodable bytes, which no UTF-8 log can encode)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def redact_text(text: str) -> str:
    """``text`` (a URL, a log line, a report, a JSON body) with every URL's ``user:password@`` and the
    values of its secret-looking query and fragment parameters (``?token=``, ``&pass=``, ``#access_token=``)
    replaced by ``REDACTED``. Text without such things comes back unchanged."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return text


def redact_json(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with ``redact_text`` applied to every string, keys
    included; redacting the values rather than the serialised text keeps every JSON escape intact."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value


def escape_control(text: str) -> str:
    """Control characters (newlines included) as visible escapes, so one log record stays one line
    and no client can forge a line of its own."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class _RedactingStream:
    """A text stream whose every write goes through ``redact_text`` (print writes a whole string at once,
    a logging handler a whole record, so a URL is never split across writes)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_console() -> None:
    """Send everything a CLI prints (its summary, errors, tracebacks) through ``redact_text``."""
    if sys.stdout is not None and not isinstance(sys.stdout, _RedactingStream):
        sys.stdout = _RedactingStream(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _RedactingStream):
        sys.stderr = _RedactingStream(sys.stderr)
