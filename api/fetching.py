"""Fetching one remote image for an admin edit, under the download limits from Settings."""

from __future__ import annotations

from core.config import Settings
from core.errors import BadImageError

_CHUNK = 64 * 1024


def fetch_url(url: str, settings: Settings) -> bytes:
    """GET ``url`` with the configured timeout, redirect and size limits; BadImageError on failure."""
    import requests

    session = requests.Session()
    session.max_redirects = settings.max_redirects
    try:
        with session.get(url, timeout=settings.download_timeout, stream=True) as resp:
            if resp.status_code != 200:
                raise BadImageError(f"HTTP {resp.status_code}")
            data = bytearray()
            for chunk in resp.iter_content(_CHUNK):
                data += chunk
                if len(data) > settings.max_image_bytes:
                    raise BadImageError(f"larger than {settings.max_image_bytes} bytes")
            return bytes(data)
    except requests.RequestException as exc:
        raise BadImageError(f"download failed: {type(exc).__name__}") from None
    finally:
        session.close()
