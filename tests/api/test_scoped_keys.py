"""Keys scoped per catalogue, over real HTTP: a merchant's key writes its own catalogue only, rotation needs no
restart, a removed key is refused at once, and every admin write is in the audit log under the key's name."""

from __future__ import annotations

import logging

import pytest

from core.keys import KeyFile

OTHER_MODELS = [("POST", "/shirts/products"), ("DELETE", "/shirts/products/S1001"), ("POST", "/shirts/reload"),
                ("POST", "/shirts/jobs/rebuild"), ("POST", "/shirts/backups"), ("GET", "/shirts/backups"),
                ("POST", "/all/products"), ("DELETE", "/all/products/S1001"), ("POST", "/all/reload"),
                ("POST", "/all/jobs/rebuild"), ("POST", "/all/jobs/embed"), ("POST", "/all/backups"),
                ("GET", "/all/backups"), ("GET", "/analytics/queries"), ("GET", "/general/analytics/map")]


@pytest.fixture
def keys(local_live, tmp_path):
    """The session's server, reading a keys file of this test's own (and still the admin key of the others)."""
    path = tmp_path / "api_keys.json"
    local_live.app.state.settings = local_live.settings.model_copy(update={"api_keys_file": path})
    yield KeyFile(path)
    local_live.app.state.settings = local_live.settings


def test_a_write_key_for_one_model_gets_403_on_other_models_and_all(keys, local_client):
    merchant, _ = keys.add("general-merchant", ["write:general"])
    mine = {"X-API-Key": merchant}
    for method, path in OTHER_MODELS:
        r = local_client.request(method, path, json={"id": "x", "title": "x", "images": ["a.jpg"], "ids": ["x"]},
                                 headers=mine)
        assert r.status_code == 403 and r.json()["error"] == "AuthError", (method, path, r.text)
        assert "general-merchant" in r.json()["detail"] and merchant not in r.text
    assert local_client.post("/general/reload", headers=mine).status_code == 200
    assert local_client.get("/general/backups", headers=mine).status_code == 200
    assert local_client.get("/jobs", headers=mine).status_code == 200  # its own models' jobs only


def test_a_read_analytics_key_reads_analytics_and_writes_nothing(keys, local_client):
    analyst, _ = keys.add("analyst", ["read:analytics"])
    assert local_client.get("/analytics/queries", headers={"X-API-Key": analyst}).status_code == 200
    assert local_client.get("/jobs", headers={"X-API-Key": analyst}).status_code == 200
    assert local_client.post("/general/reload", headers={"X-API-Key": analyst}).status_code == 403
    assert local_client.delete("/general/products/G1001", headers={"X-API-Key": analyst}).status_code == 403


def test_a_rotated_out_key_gets_401_at_once_while_the_new_one_works(keys, local_client):
    old, _ = keys.add("general-merchant", ["write:general"])
    assert local_client.get("/general/backups", headers={"X-API-Key": old}).status_code == 200
    new, _ = keys.rotate("general-merchant")
    for key in (old, new):  # both valid until the old one is retired
        assert local_client.get("/general/backups", headers={"X-API-Key": key}).status_code == 200
    keys.retire("general-merchant")
    r = local_client.get("/general/backups", headers={"X-API-Key": old})
    assert r.status_code == 401 and "not valid" in r.json()["detail"]
    assert local_client.get("/general/backups", headers={"X-API-Key": new}).status_code == 200


def test_every_admin_write_is_audited_with_the_key_name_route_and_product(keys, local_client, caplog):
    merchant, entry = keys.add("general-merchant", ["write:general"])
    with caplog.at_level(logging.INFO, logger="audit"):
        assert local_client.delete("/general/products/NO-SUCH", headers={"X-API-Key": merchant}).status_code == 404
        assert local_client.delete("/shirts/products/S1001", headers={"X-API-Key": merchant}).status_code == 403
        assert local_client.post("/general/reload", headers={"X-API-Key": "guessed"}).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "audit"]
    assert f"key=general-merchant ({entry.id}) DELETE /general/products/NO-SUCH product=NO-SUCH -> 404" in lines
    assert f"key=general-merchant ({entry.id}) DELETE /shirts/products/S1001 -> 403" in lines
    assert "key=- POST /general/reload -> 401" in lines
    assert not any(merchant in r.getMessage() or "guessed" in r.getMessage() for r in caplog.records)
