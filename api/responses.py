"""The API's JSON response: every string of every body it sends goes through the one redaction
(utils/redact.py), so no catalogue URL's credentials reach a client, whichever field or message quotes it."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from utils.redact import redact_json, redact_text


class RedactedJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        body = super().render(content)
        # the serialised body holds every string verbatim (a URL needs no JSON escape): when nothing in it
        # would be redacted, it goes as it is; otherwise each string is redacted and the body rendered again
        if redact_text(text := body.decode("utf-8")) == text:
            return body
        return super().render(redact_json(content))
