"""The API's JSON response: every string of every body it sends goes through the one redaction
(utils/redact.py), so no catalogue URL's credentials reach a client, whichever field or message quotes it."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from utils.redact import redact_json


class RedactedJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(redact_json(content))
