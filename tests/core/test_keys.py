"""API keys: scopes, the hashed keys file and its rotation, and run_keys.py as an operator uses it."""

from __future__ import annotations

import stat

import pytest

import run_keys
from core.errors import ConfigError
from core.keys import Action, KeyFile, KeyRing, digest


def test_a_scope_covers_its_own_model_only_and_admin_covers_everything(make_settings, tmp_path):
    keys = KeyFile(tmp_path / "keys.json")
    shoes, _ = keys.add("shoes-merchant", ["write:shoes"])
    analyst, _ = keys.add("analyst", ["read:analytics"])
    settings = make_settings(api_key="legacy-admin", api_keys_file=tmp_path / "keys.json")
    table = KeyRing().table(settings)

    merchant = table.find(shoes)
    assert merchant is not None and merchant.may(Action.WRITE, "shoes")
    assert not merchant.may(Action.WRITE, "shirts") and not merchant.may(Action.WRITE, "all")
    assert not merchant.may(Action.ANALYTICS) and merchant.may(Action.JOBS)
    assert merchant.may(Action.JOBS, "shoes") and not merchant.may(Action.JOBS, "shirts")
    reader = table.find(analyst)
    assert reader is not None and reader.may(Action.ANALYTICS) and reader.may(Action.JOBS, "shirts")
    assert not reader.may(Action.WRITE, "shoes")
    legacy = table.find("legacy-admin")  # IMAGESEARCH_API_KEY keeps working, as an admin key
    assert legacy is not None and legacy.name == "IMAGESEARCH_API_KEY" and legacy.may(Action.WRITE, "anything")
    assert table.find("legacy-admin ") is None and table.find("") is None


def test_keys_are_stored_hashed_and_rotate_old_and_new_together_until_the_old_is_retired(make_settings, tmp_path):
    path = tmp_path / "keys.json"
    keys, ring = KeyFile(path), KeyRing()
    settings = make_settings(api_keys_file=path)
    old, _ = keys.add("shoes-merchant", ["write:shoes"])
    assert old not in path.read_text() and digest(old) in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ring.table(settings).find(old) is not None

    new, _ = keys.rotate("shoes-merchant")
    both = ring.table(settings)  # the file changed: re-read, no restart
    assert both.find(old) is not None and both.find(new) is not None
    assert both.find(new).scopes == frozenset({"write:shoes"})
    assert [k.sha256 for k in keys.retire("shoes-merchant")] == [digest(old)]
    after = ring.table(settings)
    assert after.find(old) is None and after.find(new) is not None


def test_bad_scopes_and_bad_key_settings_are_refused_with_the_reason(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="write:<model>"):
        KeyFile(tmp_path / "k.json").add("x", ["write:all"])
    with pytest.raises(ConfigError, match="IMAGESEARCH_API_KEYS.*64 hex digits"):
        make_settings(api_keys=[{"name": "x", "scopes": ["admin"], "sha256": "the-key-itself"}])
    inline = make_settings(api_keys=[{"name": "ops", "scopes": ["admin"], "sha256": digest("k1")}])
    assert KeyRing().table(inline).find("k1").name == "ops"


def test_run_keys_prints_a_new_key_once_and_lists_names_never_keys(make_settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESEARCH_ROOT", str(tmp_path))
    assert run_keys.main(["add", "shoes-merchant", "--scope", "write:shoes"]) == 0
    plain = capsys.readouterr().out.splitlines()[1]
    assert plain.startswith("isk_") and len(plain) > 40
    assert run_keys.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "shoes-merchant" in listed and "write:shoes" in listed and plain not in listed
    assert plain not in (tmp_path / "checkpoints" / "api_keys.json").read_text()
    assert run_keys.main(["remove", "nobody"]) == 1
    assert "no key named 'nobody'" in capsys.readouterr().err
