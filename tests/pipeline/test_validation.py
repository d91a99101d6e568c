"""Phase 1: the seed CSV format, its messy variants and every kind of bad row."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from core.errors import CsvSchemaError, MissingInputError
from core.model_config import ModelSpec
from pipeline.base import PipelineContext
from pipeline.validation import ValidationPhase, check_ref
from utils.atomic import read_json

HEADER = b"shopify_product_id,title,images,preview_image,category,price\n"


def _run(make_settings, csv_bytes: bytes):
    settings = make_settings()
    spec = ModelSpec(name="shop")
    ctx = PipelineContext(settings=settings, spec=spec, progress=False)
    ctx.paths.data.mkdir(parents=True, exist_ok=True)
    ctx.paths.csv.write_bytes(csv_bytes)
    result = ValidationPhase().run(ctx)
    products = {p.id: asdict(p) for chunk in ctx.state().staged() for p in chunk}
    ctx.close()
    report = read_json(ctx.paths.models / "validation_report.json")
    return result, products, report


def test_seed_format_and_messy_image_lists(make_settings):
    csv = HEADER + (
        b'1,Plain JSON,"[""a.jpg"", ""b.jpg""]",a.jpg,mugs,9.99\n'
        b'2,Single URL,http://127.0.0.1:9/x.jpg,,mugs,\n'
        b'3,Comma list,"c1.jpg, c2.jpg",,lamps,\n'
        b'4,Pipe list,p1.jpg|p2.jpg|p3.jpg,,lamps,\n'
        b'5,Trailing comma,"[""t1.jpg"", ""t2.jpg"",]",,toys,\n'
        b'\n\n'
        b'6,Only preview,,prev.jpg,toys,\n'
    )
    result, products, report = _run(make_settings, b"\xef\xbb\xbf" + csv)  # with a BOM
    assert result.ok == 6 and not report["rejected"]
    assert products["1"]["images"] == ["a.jpg", "b.jpg"] and products["1"]["extra"] == {"price": "9.99"}
    assert products["2"]["images"] == ["http://127.0.0.1:9/x.jpg"]
    assert products["3"]["images"] == ["c1.jpg", "c2.jpg"]
    assert products["4"]["images"] == ["p1.jpg", "p2.jpg", "p3.jpg"]
    assert products["5"]["images"] == ["t1.jpg", "t2.jpg"]
    assert products["6"]["images"] == ["prev.jpg"] and products["6"]["preview_image"] == "prev.jpg"
    assert products["3"]["preview_image"] == "c1.jpg"


def test_bad_rows_are_reported_with_row_and_reason_and_good_rows_go_on(make_settings):
    many = json.dumps([f"m{i}.jpg" for i in range(12)]).replace('"', '""').encode()
    csv = HEADER + (
        b'1,Good,a.jpg,,mugs,\n'
        b',No id,b.jpg,,mugs,\n'
        b'3,,c.jpg,,mugs,\n'
        b'4,Broken JSON,"[""d.jpg"", ",,mugs,\n'
        b'5,Too many,"' + many + b'",,mugs,\n'
        b'6,First version,e.jpg,,mugs,\n'
        b'7,Latin-1 caf\xe9,f.jpg,,mugs,\n'
        b'8,Bad schemes,"file:///etc/passwd|ftp://127.0.0.1/x.jpg|ok.jpg",,mugs,\n'
        b'9,Only bad,ftp://127.0.0.1/y.jpg,,mugs,\n'
        b'10,Escape,../../secret.jpg,,mugs,\n'
        b'6,Second version,g.jpg,,lamps,\n'
        b'11,Caf\xc3\xa9 ok,h.jpg,,mugs,\n'
    )
    result, products, report = _run(make_settings, csv)
    rejected = {r["row"]: r["reason"] for r in report["rejected"]}
    assert rejected == {3: "empty id", 4: "empty title", 5: "malformed images JSON", 8: "non-UTF-8 bytes",
                        10: "no usable image", 11: "no usable image"}
    assert set(products) == {"1", "5", "6", "8", "11"}
    assert len(products["5"]["images"]) == 10
    assert products["6"]["title"] == "Second version" and products["6"]["category"] == "lamps"
    assert products["8"]["images"] == ["ok.jpg"]
    assert products["11"]["title"] == "Café ok"
    warnings = " ".join(w["message"] for w in report["warnings"])
    assert "kept the first 10" in warnings and "duplicate id '6'" in warnings
    image_reasons = {r["ref"]: r["reason"] for r in report["image_rejects"]}
    assert image_reasons["file:///etc/passwd"] == "unsupported URL scheme 'file'"
    assert image_reasons["ftp://127.0.0.1/x.jpg"] == "unsupported URL scheme 'ftp'"
    assert image_reasons["../../secret.jpg"] == "path escapes the model folder"
    assert result.failed["empty id"] == 1 and result.ok == 5


def test_missing_required_column_is_a_run_error_naming_it(make_settings):
    with pytest.raises(CsvSchemaError, match="missing required column.*title"):
        _run(make_settings, b"shopify_product_id,images\n1,a.jpg\n")


def test_missing_csv_is_a_run_error(make_settings):
    settings = make_settings()
    ctx = PipelineContext(settings=settings, spec=ModelSpec(name="empty"), progress=False)
    with pytest.raises(MissingInputError, match="no products.csv"):
        ValidationPhase().run(ctx)


def test_windows_1252_file_is_read_not_rejected(make_settings):
    result, products, report = _run(make_settings, HEADER + b"1,Caf\xe9 mug,a.jpg,,mugs,\x805\n")
    assert products["1"]["title"] == "Café mug" and products["1"]["extra"]["price"] == "€5"
    assert report["encoding"] == "cp1252"


def test_shopify_export_is_grouped_by_handle(make_settings):
    csv = (b"Handle,Title,Body (HTML),Vendor,Type,Variant Price,Image Src,Image Position\n"
           b"red-mug,Red Mug,<p>x</p>,Acme,Mugs,9.00,http://127.0.0.1:1/r2.jpg,2\n"
           b"red-mug,,,,,,http://127.0.0.1:1/r1.jpg,1\n"
           b"lamp,Lamp,,Acme,Lamps,20.00,http://127.0.0.1:1/l.jpg,1\n")
    result, products, _ = _run(make_settings, csv)
    assert result.ok == 2
    assert products["red-mug"]["images"] == ["http://127.0.0.1:1/r1.jpg", "http://127.0.0.1:1/r2.jpg"]
    assert products["red-mug"]["category"] == "Mugs" and products["red-mug"]["extra"]["vendor"] == "Acme"


@pytest.mark.parametrize("ref, reason", [
    ("https://127.0.0.1/a.jpg", None), ("images/a.jpg", None), ("http:///nohost.jpg", "URL has no host"),
    ("/etc/passwd", "absolute paths are not allowed"), ("C:\\x.jpg", "absolute paths are not allowed"),
    ("data:image/png;base64,xx", "unsupported URL scheme 'data'"), ("a/../../b.jpg", "path escapes the model folder"),
])
def test_image_reference_rules(ref, reason):
    assert check_ref(ref) == reason


@pytest.mark.parametrize("sep", [b";", b"\t"])
def test_semicolon_and_tab_separated_files_are_read(make_settings, sep):
    rows = [b"id", b"title", b"images", b"category", b"price"], [b"1", b"Mug, red", b"a.jpg,b.jpg", b"mugs", b"9,50"]
    result, products, report = _run(make_settings, b"\n".join(sep.join(r) for r in rows) + b"\n")
    assert result.ok == 1 and products["1"]["title"] == "Mug, red" and products["1"]["images"] == ["a.jpg", "b.jpg"]
    assert products["1"]["extra"] == {"price": "9,50"}
    assert report["delimiter"] == {b";": "semicolon", b"\t": "tab"}[sep] == result.details["delimiter"]


def test_missing_column_error_lists_the_accepted_names(make_settings):
    with pytest.raises(CsvSchemaError) as err:
        _run(make_settings, b"sku;picture\n1;a.jpg\n")
    assert "missing required column(s) title, images" in err.value.message
    assert "title: title / name / product_title" in err.value.message
    assert "images: images / image_urls / image_url / image_list / preview_image" in err.value.message


SHOPIFY = (b"Handle,Title,Vendor,Type,Published,Option1 Value,Variant Price,Image Src,Image Position,Status\n"
           b"mug,Mug,Acme,Mugs,TRUE,Large,12.50,http://127.0.0.1:1/m1.jpg,1,active\n"
           b"mug,,,,,Small,9.00,http://127.0.0.1:1/m2.jpg,2,\n"
           b"mug,,,,,Medium,10.00,,,\n"
           b"draft-lamp,Lamp,Acme,Lamps,TRUE,,20.00,http://127.0.0.1:1/l.jpg,1,draft\n"
           b"old-rug,Rug,Acme,Rugs,TRUE,,30.00,http://127.0.0.1:1/r.jpg,1,archived\n"
           b"hidden-vase,Vase,Acme,Vases,FALSE,,40.00,http://127.0.0.1:1/v.jpg,1,active\n")


def test_shopify_draft_archived_and_unpublished_products_are_skipped_with_a_reason(make_settings):
    result, products, report = _run(make_settings, SHOPIFY)
    assert sorted(products) == ["mug"]
    assert report["rejected_by_reason"] == {"skipped: draft product": 1, "skipped: archived product": 1,
                                            "skipped: unpublished product": 1}
    assert result.examples["skipped: draft product"] == ["row 5: draft-lamp (Status is draft)"]
    assert result.examples["skipped: unpublished product"] == ["row 7: hidden-vase (Published is FALSE)"]


def test_shopify_inactive_products_are_kept_when_the_setting_says_so(make_settings):
    settings = make_settings(shopify_include_inactive=True)
    ctx = PipelineContext(settings=settings, spec=ModelSpec(name="shop"), progress=False)
    ctx.paths.data.mkdir(parents=True, exist_ok=True)
    ctx.paths.csv.write_bytes(SHOPIFY)
    before = ValidationPhase().fingerprint(ctx)
    result = ValidationPhase().run(ctx)
    assert result.ok == 4 and not result.failed
    ctx.close()
    default = PipelineContext(settings=make_settings(), spec=ModelSpec(name="shop"), progress=False)
    assert ValidationPhase().fingerprint(default) != before  # changing the setting revalidates


def test_shopify_price_is_the_lowest_variant_price(make_settings):
    _, products, _ = _run(make_settings, SHOPIFY)
    assert products["mug"]["extra"] == {"vendor": "Acme", "price": "9.00"}
    assert products["mug"]["images"] == ["http://127.0.0.1:1/m1.jpg", "http://127.0.0.1:1/m2.jpg"]
