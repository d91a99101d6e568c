"""Utils test fixtures: the local fault-injecting HTTP server (see tests/http_server.py)."""

from tests.http_server import http_server  # noqa: F401 - re-exported pytest fixture
