"""Query building: image links fetched by the UI server, size caps, text normalisation."""

from __future__ import annotations

import pytest

from tests.ui.fake_api import FakeApi, FakeCatalogue
from ui import query as query_mod
from ui.query import QueryError, fetch_image, image_query, refine, similar_query, text_query
from utils.demo_catalogue import write_demo


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo") / "data"
    write_demo(data, general_per_category=1, shirts_per_category=1)
    with FakeApi(FakeCatalogue(data)) as api:
        yield api


def test_image_link_is_downloaded(server):
    query = fetch_image(f"  {server.url}/general/products/G1001/image ")
    assert query.kind == "image" and query.image[:2] == b"\xff\xd8" and query.filename == "image"


@pytest.mark.parametrize("url, text", [("ftp://x/y.jpg", "http"), ("not a link", "http"),
                                       ("/general/products/G1/image", "http")])
def test_bad_links_are_refused(url, text):
    with pytest.raises(QueryError, match=text):
        fetch_image(url)


def test_link_errors_are_explained(server):
    with pytest.raises(QueryError, match="HTTP 404"):
        fetch_image(f"{server.url}/general/products/missing/image")


def test_oversized_images_are_refused(server, monkeypatch):
    monkeypatch.setattr(query_mod, "MAX_QUERY_BYTES", 100)
    with pytest.raises(QueryError, match="larger than"):
        fetch_image(f"{server.url}/general/products/G1001/image")
    with pytest.raises(QueryError, match="limit"):
        image_query(b"x" * 101, "a.jpg")


def test_signatures_change_with_the_query():
    assert text_query("  red   mug ").text == "red mug" and text_query("   ") is None
    assert image_query(b"a", "").signature != image_query(b"b", "").signature
    assert similar_query("general", "G1", "Mug").signature == ("similar", "", "", "general", "G1", "", "")
    photo = image_query(b"a", "")
    refined = refine(photo, "  in   red ", "x" * 500)
    assert refined.words == "in red" and len(refined.avoid) == 200 and refined.signature != photo.signature
    assert refine(photo, " ", "").signature == photo.signature and refined.refinement.startswith("“in red”, without")
