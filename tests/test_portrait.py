"""Portrait loading: formats, limits, face detection, user landmarks, and the aligned crop's geometry."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data

import avatar.portrait as portrait_module
from avatar.config import AppConfig, PortraitConfig, VideoConfig
from avatar.errors import PortraitError
from avatar.portrait import (
    Portrait,
    builtin_portrait_names,
    default_portrait,
    detect_faces,
    detect_landmarks,
    load_builtin_portrait,
    load_portrait,
)

PORTRAIT = PortraitConfig()
VIDEO = VideoConfig()


def _eyes(p: Portrait) -> tuple[np.ndarray, np.ndarray]:
    return p.landmarks[36:42].mean(axis=0), p.landmarks[42:48].mean(axis=0)


def _assert_aligned(p: Portrait, portrait: PortraitConfig, video: VideoConfig, tol_px: float = 1.0) -> None:
    width, height = video.width_px, video.height_px
    assert p.rgb.shape == (height, width, 3) and p.rgb.dtype == np.uint8
    assert p.landmarks.shape == (68, 2) and p.landmarks.dtype == np.float32
    assert np.all(np.isfinite(p.landmarks))
    left, right = _eyes(p)
    assert abs(left[1] - right[1]) < 0.5, "eyes are not level"
    assert left[0] < right[0]
    assert abs((left[1] + right[1]) / 2 - portrait.eye_line_fraction * height) < tol_px
    extent = p.landmarks[:, 0].max() - p.landmarks[:, 0].min()
    assert abs(extent - portrait.face_width_fraction * width) < tol_px
    centre = (p.landmarks[:, 0].max() + p.landmarks[:, 0].min()) / 2
    assert abs(centre - width / 2) < tol_px
    x, y, w, h = p.face_box
    assert all(isinstance(v, int) for v in p.face_box)
    assert x <= p.landmarks[:, 0].min() and x + w >= p.landmarks[:, 0].max()
    assert y <= p.landmarks[:, 1].min() and y + h >= p.landmarks[:, 1].max()
    assert w <= extent + 2 and 0 <= x and x + w <= width and 0 <= y and y + h <= height


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds (almost) no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(data.astronaut())[:, :, :3].copy()


@pytest.fixture(scope="module")
def astronaut_png(astronaut: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("portraits") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image is decoded."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- built-ins ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [512, 256])
def test_astronaut_is_aligned_as_configured(size: int) -> None:
    video = VideoConfig(width_px=size, height_px=size)
    p = load_builtin_portrait("astronaut", PORTRAIT, video)
    assert p.name == "astronaut"
    _assert_aligned(p, PORTRAIT, video)


def test_other_framing_and_aspect_follow_config() -> None:
    # A framing the photo holds is kept as configured (one that reaches past it is fitted: test_framing.py).
    portrait = PortraitConfig(face_width_fraction=0.5, eye_line_fraction=0.38)
    video = VideoConfig(width_px=256, height_px=320)
    _assert_aligned(load_builtin_portrait("astronaut", portrait, video), portrait, video)


def test_astronaut_crop_shows_the_whole_head_on_the_photo() -> None:
    p = load_builtin_portrait("astronaut", PORTRAIT, VIDEO)
    # The astronaut's face is well inside the photo: nothing is filled, the crop is the photo itself.
    # Skin (reddish, bright) in the face box centre; the dark suit collar below the chin.
    x, y, w, h = p.face_box
    cheek = p.rgb[y + h // 2 - 10 : y + h // 2 + 10, x + w // 2 - 10 : x + w // 2 + 10].reshape(-1, 3).mean(0)
    assert cheek[0] > 150 and cheek[0] > cheek[2]
    assert p.rgb[-20:, p.rgb.shape[1] // 2].mean() < 80  # the black neck of the suit under the face


def test_builtin_names_and_default(config: AppConfig) -> None:
    names = builtin_portrait_names()
    assert "astronaut" in names and names == sorted(names)
    p = default_portrait(config)
    assert p.name == config.portrait.default
    _assert_aligned(p, config.portrait, config.video)


def test_unknown_builtin_lists_the_names() -> None:
    with pytest.raises(PortraitError, match="astronaut"):
        load_builtin_portrait("nobody", PORTRAIT, VIDEO)


def test_builtin_detection_is_cached_and_results_are_independent() -> None:
    first = load_builtin_portrait("astronaut", PORTRAIT, VIDEO)
    hits = portrait_module._aligned_builtin.cache_info().hits
    second = load_builtin_portrait("astronaut", PORTRAIT, VIDEO)
    assert portrait_module._aligned_builtin.cache_info().hits == hits + 1
    np.testing.assert_array_equal(first.rgb, second.rgb)
    first.rgb[:] = 0  # one session scribbling on its portrait does not touch another's
    assert second.rgb.any()


# --- formats and decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_webp_of_the_same_photo_load(fmt: str, astronaut: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.fromarray(astronaut).save(path, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))
    p = load_portrait(path, PORTRAIT, VIDEO)
    assert p.name == "photo"
    _assert_aligned(p, PORTRAIT, VIDEO)
    reference = load_builtin_portrait("astronaut", PORTRAIT, VIDEO)
    assert np.abs(p.landmarks - reference.landmarks).max() < 6.0


def test_format_is_judged_by_content_not_name(astronaut: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "actually_a_jpeg.png"
    Image.fromarray(astronaut).save(path, format="JPEG")
    _assert_aligned(load_portrait(path, PORTRAIT, VIDEO), PORTRAIT, VIDEO)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    with pytest.raises(PortraitError, match="not a PNG, JPEG or WebP image"):
        load_portrait(text, PORTRAIT, VIDEO)


def test_bytes_input(astronaut_png: Path) -> None:
    p = load_portrait(astronaut_png.read_bytes(), PORTRAIT, VIDEO)
    assert p.name == "upload"
    _assert_aligned(p, PORTRAIT, VIDEO)
    assert load_portrait(astronaut_png.read_bytes(), PORTRAIT, VIDEO, name="me").name == "me"


def test_exif_orientation_is_applied(astronaut: np.ndarray) -> None:
    upright = Image.fromarray(astronaut)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone held sideways stores it
    p = load_portrait(_encode(stored, "JPEG", quality=92, exif=exif), PORTRAIT, VIDEO)
    reference = load_builtin_portrait("astronaut", PORTRAIT, VIDEO)
    assert np.abs(p.landmarks - reference.landmarks).max() < 6.0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_other_pixel_modes_become_rgb(mode: str, astronaut: np.ndarray) -> None:
    image = Image.fromarray(astronaut)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(grey)
    elif mode in ("RGBA", "LA"):
        converted = image.convert(mode)
        alpha = np.full(astronaut.shape[:2], 255, dtype=np.uint8)
        alpha[:, :40] = 0  # a transparent strip on the left
        converted.putalpha(Image.fromarray(alpha))
    else:
        converted = image.convert(mode)
    p = load_portrait(_encode(converted, "PNG"), PORTRAIT, VIDEO)
    _assert_aligned(p, PORTRAIT, VIDEO)
    if mode in ("RGBA", "LA"):
        rgb = portrait_module.decode_image(_encode(converted, "PNG"), PORTRAIT.max_pixels)
        assert rgb.shape == (*astronaut.shape[:2], 3)
        assert np.all(rgb[:, :40] == 255)  # composited on white, not black


def test_gif_and_bmp_are_refused(astronaut: np.ndarray) -> None:
    for fmt in ("GIF", "BMP", "TIFF"):
        with pytest.raises(PortraitError, match="not a PNG, JPEG or WebP image"):
            load_portrait(_encode(Image.fromarray(astronaut), fmt), PORTRAIT, VIDEO)


def test_text_and_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PortraitError, match="not a PNG, JPEG or WebP image"):
        load_portrait(b"<html>hello</html>", PORTRAIT, VIDEO)
    with pytest.raises(PortraitError, match="empty"):
        load_portrait(b"", PORTRAIT, VIDEO)
    with pytest.raises(PortraitError, match="no such image file"):
        load_portrait(tmp_path / "missing.png", PORTRAIT, VIDEO)
    with pytest.raises(PortraitError, match="not a file"):
        load_portrait(tmp_path, PORTRAIT, VIDEO)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_refused(fmt: str, astronaut: np.ndarray) -> None:
    whole = _encode(Image.fromarray(astronaut), fmt)
    for cut in (len(whole) // 2, 40):
        with pytest.raises(PortraitError, match="damaged or truncated|not a PNG, JPEG or WebP"):
            load_portrait(whole[:cut], PORTRAIT, VIDEO)


# --- limits, checked before decoding --------------------------------------------------------------


def test_huge_header_is_refused_before_decoding(no_decode: None) -> None:
    with pytest.raises(PortraitError, match=r"image is 12000x12000 pixels, the limit is 40 megapixels"):
        load_portrait(_png_header(12000, 12000), PORTRAIT, VIDEO)
    # Beyond Pillow's own bomb limit too (Pillow refuses it in open(); the message stays readable).
    with pytest.raises(PortraitError, match=r"image is 400 megapixels, the limit is 40 megapixels"):
        load_portrait(_png_header(20000, 20000), PORTRAIT, VIDEO)


def test_real_small_file_with_too_many_pixels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.new("L", (7000, 7000), 200).save(path)  # 49 megapixels in a file of about 50 kB
    assert path.stat().st_size < 1_000_000
    with pytest.raises(PortraitError, match=r"image is 7000x7000 pixels, the limit is 40 megapixels"):
        load_portrait(path, PORTRAIT, VIDEO)
    with pytest.raises(PortraitError, match=r"7000x7000 pixels, the limit is 1 megapixels"):
        load_portrait(path.read_bytes(), PortraitConfig(max_pixels=1_000_000), VIDEO)


def test_file_over_max_bytes_is_refused(astronaut_png: Path) -> None:
    small = PortraitConfig(max_bytes=10_000)
    with pytest.raises(PortraitError, match=r"MB, the limit is 0.01 MB"):
        load_portrait(astronaut_png, small, VIDEO)
    with pytest.raises(PortraitError, match=r"MB, the limit is 0.01 MB"):
        load_portrait(astronaut_png.read_bytes(), small, VIDEO)


# --- faces ----------------------------------------------------------------------------------------


def test_no_face_in_a_landscape_or_noise(tmp_path: Path) -> None:
    coffee = _encode(Image.fromarray(data.coffee()), "PNG")
    with pytest.raises(PortraitError, match="no face found in the image") as uploaded:
        load_portrait(coffee, PORTRAIT, VIDEO)
    assert "JSON" not in str(uploaded.value)  # an upload has no file beside it: no such advice
    (tmp_path / "coffee.png").write_bytes(coffee)
    with pytest.raises(PortraitError, match="landmarks.json"):  # a file on disk can have one
        load_portrait(tmp_path / "coffee.png", PORTRAIT, VIDEO)
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with pytest.raises(PortraitError, match="no face found in the image"):
        load_portrait(_encode(Image.fromarray(noise), "PNG"), PORTRAIT, VIDEO)


def _two_faces(astronaut: np.ndarray, big_on_right: bool) -> tuple[np.ndarray, float]:
    """Two copies of the astronaut's head, one 1.5 times the other: (image, x of the big one's centre)."""
    head = Image.fromarray(astronaut).crop((140, 40, 310, 230))  # 170 x 190
    small, big = head.resize((170, 190)), head.resize((255, 285))
    canvas = Image.new("RGB", (900, 500), (128, 128, 128))
    small_x, big_x = (40, 450) if big_on_right else (560, 40)
    canvas.paste(small, (small_x, 150))
    canvas.paste(big, (big_x, 100))
    return np.asarray(canvas), big_x + 255 / 2


@pytest.mark.parametrize("big_on_right", [True, False])
def test_largest_face_wins(astronaut: np.ndarray, big_on_right: bool) -> None:
    image, big_centre = _two_faces(astronaut, big_on_right)
    faces = detect_faces(image)
    assert len(faces) >= 2, "the test needs both copies detected"
    points = detect_landmarks(image)
    assert abs(points[:, 0].mean() - big_centre) < 40
    width = np.ptp(points[:, 0])
    assert width > 1.3 * np.ptp(detect_landmarks(astronaut)[:, 0])  # the big copy is 1.5 times the photo
    p = load_portrait(_encode(Image.fromarray(image), "PNG"), PORTRAIT, VIDEO)
    # The big face is the one framed (near the canvas's edge, the framing may be fitted to stay inside).
    extent = float(np.ptp(p.landmarks[:, 0]))
    assert PORTRAIT.face_width_fraction * VIDEO.width_px - 1 <= extent <= 0.62 * VIDEO.width_px + 1


def test_big_image_is_searched_downscaled_and_landmarks_map_back(astronaut: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    points = detect_landmarks(big)
    reference = detect_landmarks(astronaut)
    assert np.abs(points / 4.0 - reference).max() < 4.0


# --- landmarks given by the user ------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_points(astronaut: np.ndarray) -> np.ndarray:
    return detect_landmarks(astronaut)


def _coffee_png(tmp_path: Path, stem: str = "scene") -> Path:
    path = tmp_path / f"{stem}.png"
    Image.fromarray(data.coffee()).save(path)
    return path


@pytest.mark.parametrize("sidecar_name", ["scene.landmarks.json", "scene.png.json"])
def test_landmarks_json_beside_the_image_replaces_detection(
    sidecar_name: str, astronaut_points: np.ndarray, tmp_path: Path
) -> None:
    # Coffee has no face dlib could find: loading works only through the JSON file.
    path = _coffee_png(tmp_path)
    points = astronaut_points * 0.5 + [100, 50]
    (tmp_path / sidecar_name).write_text(json.dumps({"landmarks": points.tolist()}))
    p = load_portrait(path, PORTRAIT, VIDEO)
    _assert_aligned(p, PORTRAIT, VIDEO)


def test_landmarks_bare_list_array_and_explicit_path(astronaut_points: np.ndarray, tmp_path: Path) -> None:
    path = _coffee_png(tmp_path)
    points = astronaut_points * 0.5 + [100, 50]
    elsewhere = tmp_path / "points.json"
    elsewhere.write_text(json.dumps(points.tolist()))
    from_file = load_portrait(path, PORTRAIT, VIDEO, landmarks=elsewhere)
    from_array = load_portrait(path.read_bytes(), PORTRAIT, VIDEO, landmarks=points)
    _assert_aligned(from_file, PORTRAIT, VIDEO)
    np.testing.assert_allclose(from_file.landmarks, from_array.landmarks, atol=1e-3)
    np.testing.assert_array_equal(from_file.rgb, from_array.rgb)


def test_given_landmarks_match_dlib_on_the_same_photo(
    astronaut_png: Path, astronaut_points: np.ndarray, tmp_path: Path
) -> None:
    p_user = load_portrait(astronaut_png, PORTRAIT, VIDEO, landmarks=astronaut_points)
    p_dlib = load_portrait(astronaut_png, PORTRAIT, VIDEO)
    np.testing.assert_allclose(p_user.landmarks, p_dlib.landmarks, atol=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"points": []}', '"landmarks" list'),
        (json.dumps({"landmarks": [[10, 10]] * 67}), "expected 68"),
        (json.dumps({"landmarks": [["a", "b"]] * 68}), "68 \\[x, y\\] points"),
        (json.dumps({"landmarks": [[10, 10]] * 67 + [[float("nan"), 1]]}), "finite"),
        (json.dumps({"landmarks": [[10, 10]] * 67 + [[5000, 10]]}), "point 67 .* outside the 600x400 image"),
        (json.dumps({"landmarks": [[10, 10]] * 67 + [[10, -3]]}), "outside"),
    ],
)
def test_bad_landmarks_json_is_refused(content: str, message: str, tmp_path: Path) -> None:
    path = _coffee_png(tmp_path)
    (tmp_path / "scene.landmarks.json").write_text(content)
    with pytest.raises(PortraitError, match=message):
        load_portrait(path, PORTRAIT, VIDEO)


def test_degenerate_landmarks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PortraitError, match="too small"):
        load_portrait(_coffee_png(tmp_path), PORTRAIT, VIDEO, landmarks=np.full((68, 2), 20.0))
    with pytest.raises(PortraitError, match="no such landmarks file"):
        load_portrait(_coffee_png(tmp_path), PORTRAIT, VIDEO, landmarks=tmp_path / "missing.json")
