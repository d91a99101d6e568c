"""Settings validation and the model registry (built-ins, discovery, model.json, name rules)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.config import PROJECT_ROOT, load_settings
from core.errors import ConfigError, InvalidModelNameError, UnknownModelError
from core.model_config import ModelRegistry, validate_model_name
from core.types import IndexType


def test_defaults_and_environment(monkeypatch, tmp_path):
    settings = load_settings()
    assert settings.root == PROJECT_ROOT and settings.clip_model == "openai/clip-vit-base-patch32"
    monkeypatch.setenv("IMAGESEARCH_ROOT", str(tmp_path))
    monkeypatch.setenv("IMAGESEARCH_DEVICE", "cpu")
    monkeypatch.setenv("IMAGESEARCH_PRECISION", "bf16")
    settings = load_settings()
    assert settings.models_dir == tmp_path / "models" and settings.device == "cpu" and settings.precision == "bf16"


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("IMAGESEARCH_BATCH_SIZE=7\n")  # the fixture chdir'd into tmp_path
    assert load_settings().batch_size == 7


@pytest.mark.parametrize("var, value", [("IMAGESEARCH_DEVICE", "gpu"), ("IMAGESEARCH_PRECISION", "int4"),
                                        ("IMAGESEARCH_DOWNLOAD_WORKERS", "0"), ("IMAGESEARCH_INDEX_TYPE", "lsh")])
def test_bad_setting_names_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_bad_setting_stops_the_cli_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "IMAGESEARCH_DEVICE": "gpu", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_training.py"), "general"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "IMAGESEARCH_DEVICE" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["", "A", "../etc", "a/b", "x" * 65, "café", "all", "a b", "%2F"])
def test_illegal_model_names_are_refused(name):
    with pytest.raises(InvalidModelNameError):
        validate_model_name(name)


def test_discovery_builtins_folders_and_model_json(make_settings):
    settings = make_settings()
    (settings.data_dir / "toys").mkdir(parents=True)
    (settings.data_dir / "toys" / "products.csv").write_text("shopify_product_id,title,images\n")
    (settings.data_dir / "toys" / "model.json").write_text(
        '{"display_name": "Toy shop", "categories": ["lego", "dolls"], "backbone": "/w/fashion-clip",'
        ' "index_type": "hnsw"}')
    (settings.data_dir / "Bad Name").mkdir()
    (settings.data_dir / "Bad Name" / "products.csv").write_text("x\n")
    (settings.data_dir / "no_csv_here").mkdir()
    registry = ModelRegistry.discover(settings)
    assert registry.names() == ["general", "shirts", "toys"]
    toys = registry.get("toys")
    assert toys.display_name == "Toy shop" and toys.categories == ("lego", "dolls")
    assert toys.backbone_for(settings) == "/w/fashion-clip" and toys.index_type_for(settings) == IndexType.HNSW
    assert registry.get("general").backbone_for(settings) == settings.clip_model
    with pytest.raises(UnknownModelError, match="available models: general, shirts, toys"):
        registry.get("nope")


def test_broken_model_json_is_a_config_error(make_settings):
    settings = make_settings()
    folder = settings.data_dir / "toys"
    folder.mkdir(parents=True)
    (folder / "products.csv").write_text("x\n")
    (folder / "model.json").write_text('{"categories": "not a list"}')
    with pytest.raises(ConfigError, match="categories"):
        ModelRegistry.discover(settings)


def test_registry_accepts_fakes():
    from core.model_config import ModelSpec

    registry = ModelRegistry([ModelSpec(name="fake")])
    assert registry.get("fake").name == "fake" and len(registry) == 1
    with pytest.raises(InvalidModelNameError):
        ModelRegistry([ModelSpec(name="Not/Valid")])



def test_model_json_currency_and_url_template(make_settings):
    settings = make_settings()
    folder = settings.data_dir / "toys"
    folder.mkdir(parents=True)
    (folder / "products.csv").write_text("x\n")
    (folder / "model.json").write_text('{"currency": "EUR", "url_template": "https://toys.example/p/{id}"}')
    toys = ModelRegistry.discover(settings).get("toys")
    assert toys.currency == "EUR" and toys.url_template == "https://toys.example/p/{id}"
    (folder / "model.json").write_text('{"url_template": "https://toys.example/p/"}')
    with pytest.raises(ConfigError, match="url_template"):
        ModelRegistry.discover(settings)


def test_currency_and_duplicate_threshold_fall_back_in_order(make_settings, tiny_clip, monkeypatch):
    """model.json wins; then the setting; for the near-duplicate threshold then what the backbone's folder asks
    for (the tiny random CLIP, whose distinct images all lie within 0.9999), else 0.98; a catalogue without a
    currency is priced in IMAGESEARCH_CURRENCY (USD by default), never bare."""
    from core.model_config import ModelSpec

    monkeypatch.delenv("IMAGESEARCH_DUPLICATE_THRESHOLD")
    settings = make_settings()
    assert settings.duplicate_threshold is None and settings.currency == "USD"
    assert ModelSpec(name="m").duplicate_threshold_for(settings) == 0.99995  # the tiny CLIP's own imagesearch.json
    assert ModelSpec(name="m").duplicate_threshold_for(make_settings(clip_model="openai/clip-vit-base-patch32")) == 0.98
    assert ModelSpec(name="m").duplicate_threshold_for(make_settings(duplicate_threshold=0.9)) == 0.9
    assert ModelSpec(name="m", duplicate_threshold=0.95).duplicate_threshold_for(settings) == 0.95
    assert ModelSpec(name="m").currency_for(settings) == "USD"
    assert ModelSpec(name="m", currency="eur").currency_for(make_settings(currency="GBP")) == "EUR"
    assert ModelSpec(name="m").currency_for(make_settings(currency="GBP")) == "GBP"
    with pytest.raises(ConfigError, match="IMAGESEARCH_CURRENCY"):
        load_settings(currency="dollars")
