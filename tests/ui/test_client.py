"""ApiClient against a real local HTTP server: requests sent, answers parsed, failures typed."""

from __future__ import annotations


import pytest

from tests.ports import free_port
from tests.ui.fake_api import FakeApi, FakeCatalogue
from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env
from utils.demo_catalogue import write_demo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo") / "data"
    write_demo(data, general_per_category=2, shirts_per_category=2)
    return data


@pytest.fixture
def catalogue(data_dir):
    return FakeCatalogue(data_dir, unbuilt=("shirts",))


@pytest.fixture
def api(catalogue):
    with FakeApi(catalogue) as server:
        yield ApiClient(server.url, timeout=5)


def test_health_and_models(api):
    assert api.health()["status"] == "healthy"
    models = {m["name"]: m for m in api.models()}
    assert models["general"]["searchable"] is True and models["shirts"]["searchable"] is False
    assert "mugs" in models["general"]["categories"]


def test_search_sends_the_file_and_only_the_options_given(api, catalogue, data_dir):
    image = (data_dir / "general" / "images" / "G1001_0.jpg").read_bytes()
    body = api.search("general", image, "mug.jpg", top_k=3, category="mugs")
    assert body["num_results"] == len(body["results"]) <= 3
    assert {h["category"] for h in body["results"]} == {"mugs"}
    method, path, query = catalogue.requests[-1]
    assert (method, path) == ("POST", "/general/search")
    assert query == {"top_k": "3", "category": "mugs"}  # min_score=None is not sent


def test_search_all_text_and_similar(api, catalogue):
    assert api.search_all(b"\xff\xd8jpeg", top_k=2)["per_model"]
    assert catalogue.requests[-1][1] == "/all/search"
    assert api.search_text("general", "red mug", top_k=2)["num_results"] == 2
    assert catalogue.requests[-1][2] == {"q": "red mug", "top_k": "2"}
    assert api.similar("general", "G1002", top_k=4)["results"][0]["id"] == "G1002"


def test_image_bytes_from_a_relative_path(api):
    assert api.image("/general/products/G1001/image")[:2] == b"\xff\xd8"
    assert api.image_url("general", "G 1") == api.base_url + "/general/products/G%201/image"


@pytest.mark.parametrize("call, status, text", [
    (lambda c: c.search("nope", b"x"), 404, "unknown model"),
    (lambda c: c.search("shirts", b"x"), 503, "not built"),
    (lambda c: c.search("general", b"not an image"), 400, "not an image"),
    (lambda c: c.similar("general", "missing"), 404, "no product"),
])
def test_api_errors_carry_status_and_message(api, call, status, text):
    with pytest.raises(ApiError) as info:
        call(api)
    assert info.value.status == status and text in info.value.message
    assert info.value.not_built is (status == 503)


def test_api_down_is_a_typed_error():
    client = ApiClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ApiUnavailable, match="unreachable"):
        client.health()


def test_url_joins_paths_and_keeps_absolute_urls():
    client = ApiClient("http://host:9/prefix/")
    assert client.url("/general/search") == "http://host:9/prefix/general/search"
    assert client.url("https://cdn.example/x.jpg") == "https://cdn.example/x.jpg"


def test_api_url_comes_from_the_environment(monkeypatch):
    assert api_url_from_env() == "http://127.0.0.1:8000"
    monkeypatch.setenv("IMAGESEARCH_API_URL", "http://10.0.0.5:9000/")
    assert api_url_from_env() == "http://10.0.0.5:9000"


def test_pages_are_asked_for_with_offset(api, catalogue):
    api.search_text("general", "mug", top_k=5, offset=10)
    assert catalogue.requests[-1][2] == {"q": "mug", "top_k": "5", "offset": "10"}
    api.similar("general", "G1002", top_k=5, offset=5)
    assert catalogue.requests[-1][2] == {"top_k": "5", "offset": "5"}


def test_upload_limit_comes_from_the_api_setting(monkeypatch):
    from run_streamlit import upload_limit_mb
    from ui.client import upload_limit_from_env

    assert upload_limit_from_env() == 10_000_000 and upload_limit_mb(10_000_000) == 10
    monkeypatch.setenv("IMAGESEARCH_MAX_UPLOAD_BYTES", "3000000")
    assert upload_limit_from_env() == 3_000_000 and upload_limit_mb(3_000_000) == 3
    assert upload_limit_mb(2_500_000) == 3 and upload_limit_mb(1024) == 1
