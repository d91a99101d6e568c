"""The one image-shape policy: stable reasons, judged from the header before a pixel is decoded."""

from __future__ import annotations

import pytest

from tests.fake_images import huge_png
from tests.utils.test_images import bomb_png
from utils.images import MAX_SIDE, ImageDecodeError, ShapePolicy, decode_image

POLICY = ShapePolicy(max_pixels=40_000_000, max_aspect=20)


@pytest.mark.parametrize("size, reason", [
    ((20, 1), None), ((1, 20), None), ((21, 1), "extreme aspect ratio"), ((1, 21), "extreme aspect ratio"),
    ((6000, 6000), None), ((7000, 7000), "too many pixels"), ((0, 5), "not an image"),
    ((70_000, 400), "extreme aspect ratio"), ((20_000, 1), "extreme aspect ratio"),
])
def test_refusals_have_stable_reasons(size, reason):
    refused = POLICY.refusal(*size)
    assert (refused.reason if refused else None) == reason


def test_the_longest_side_is_bounded_whatever_the_aspect_limit():
    loose = ShapePolicy(max_pixels=10**12, max_aspect=1000)
    assert loose.refusal(MAX_SIDE, 100) is None
    assert loose.refusal(MAX_SIDE + 1, 100).reason == "side too long"


def test_a_downscaled_copy_may_round_by_one_pixel():
    assert POLICY.refusal(7681, 384).reason == "extreme aspect ratio"
    assert POLICY.refusal(7681, 384, copy=True) is None
    assert POLICY.refusal(7682, 384, copy=True).reason == "extreme aspect ratio"


@pytest.mark.parametrize("width, height, reason", [
    (70_000, 400, "extreme aspect ratio"), (60_000, 1, "extreme aspect ratio"), (8000, 8000, "too many pixels"),
])
def test_decoding_refuses_from_the_header(width, height, reason):
    """The PNG's pixel data is cut short: only a check made before decoding can give the shape's reason
    (decoding first would say "truncated image")."""
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bomb_png(width, height), policy=POLICY, shorter_side=384)
    assert err.value.reason == reason


def test_a_real_strip_png_is_refused():
    data = huge_png(70_000, 400)  # a complete, valid image: 28 megapixels in a few KB
    assert len(data) < 100_000
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, policy=POLICY, shorter_side=384)
    assert err.value.reason == "extreme aspect ratio" and "70000x400" in err.value.detail
