"""The human-face check: human faces (photos and painting stand-ins) pass, false faces (a cat's face,
HOG near-faces on texture, random boxes) are refused with a clear message, given landmarks skip it.

The fast tests use a sample of tests/face_cases.py; the slow one uses every case of
bench/face_check.py, with the bounds measured there."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from avatar.config import PortraitConfig, VideoConfig
from avatar.errors import PortraitError
from avatar.face_check import _CANVAS_PX, _FACE_PX, NOT_HUMAN, check_human_face, is_human_face, levelled_crop
from avatar.portrait import detect_faces, detect_landmarks, fit_landmarks, load_portrait
from tests.face_cases import (
    PAINTING_FILTERS,
    Case,
    astronaut_cases,
    cat_face_boxes,
    found_face,
    harvested_boxes,
    lfw_faces,
    negative_cases,
    positive_cases,
)

PORTRAIT = PortraitConfig()
VIDEO = VideoConfig(width_px=256, height_px=256)


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.chelsea())


def _sample_positives() -> list[tuple[str, np.ndarray]]:
    """Photos of faces and painting stand-ins made from a clear photo: kinds that all pass in the
    benchmark. (Stand-ins made from the 25 px LFW thumbnails do not all pass: see the slow test.)"""
    # The astronaut's photos are loaded whole by test_every_astronaut_case_still_loads.
    tight = astronaut_cases()["tight head"]
    out = [(f"astronaut tight head {style}", apply(tight)) for style, apply in PAINTING_FILTERS.items()]
    return out + list(lfw_faces(step=20).items())


def test_human_faces_and_painting_stand_ins_pass() -> None:
    found = 0
    for name, rgb in _sample_positives():
        points = found_face(np.ascontiguousarray(rgb))
        if points is None:
            continue  # the HOG detector misses some enlarged 25 px LFW faces: no face to check
        found += 1
        assert is_human_face(rgb, points), name
    assert found >= 10, found


def test_the_crop_levels_the_eyes_and_sizes_the_face() -> None:
    tilted = np.ascontiguousarray(astronaut_cases()["tilted 18 degrees"])
    points = found_face(tilted)
    assert points is not None
    again = found_face(levelled_crop(tilted, points))  # the face found again in the crop
    assert again is not None
    left, right = again[36:42].mean(axis=0), again[42:48].mean(axis=0)
    assert abs(left[1] - right[1]) < 3.0
    assert 0.85 * _FACE_PX < np.ptp(again[:, 0]) < 1.15 * _FACE_PX
    assert np.abs(again.mean(axis=0) - _CANVAS_PX / 2).max() < 0.15 * _FACE_PX


def test_every_astronaut_case_still_loads() -> None:
    for name, rgb in astronaut_cases().items():
        portrait = load_portrait(_png(rgb), PORTRAIT, VIDEO)
        assert portrait.rgb.shape == (256, 256, 3), name


def test_false_faces_on_the_cat_are_refused(chelsea: np.ndarray) -> None:
    boxes = [box for box, _ in harvested_boxes(chelsea)] + cat_face_boxes(chelsea)[::2]
    assert len(boxes) >= 12
    for box in boxes:
        points = fit_landmarks(chelsea, box)
        assert not is_human_face(chelsea, points), box


def test_false_faces_on_texture_and_objects_are_refused() -> None:
    cases = [case for case in negative_cases(quick=True) if case.group == "non-faces"][::4]
    assert len(cases) >= 10
    passed = [case.name for case in cases if is_human_face(case.rgb, case.landmarks)]
    assert not passed


def _cat_the_old_pipeline_took_for_a_face(chelsea: np.ndarray) -> np.ndarray:
    """Chelsea turned 12 degrees, equalised and at 70 %: the HOG detector takes a patch of its face
    for a human face there (score +0.04, above its threshold 0), as it did with the users' dog."""
    image = ImageOps.equalize(Image.fromarray(chelsea).rotate(12, Image.Resampling.BICUBIC))
    return np.asarray(image.resize((316, 210), Image.Resampling.BICUBIC))


def test_the_cat_photo_is_a_false_face_of_the_detector(chelsea: np.ndarray) -> None:
    assert not detect_faces(chelsea)  # as shipped, the HOG detector finds nothing: "no face found"
    assert detect_faces(_cat_the_old_pipeline_took_for_a_face(chelsea))


@pytest.mark.parametrize("where", ["upload", "file"])
def test_a_cat_photo_is_refused_with_the_message(chelsea: np.ndarray, where: str, tmp_path: Path) -> None:
    data = _png(_cat_the_old_pipeline_took_for_a_face(chelsea))
    if where == "upload":
        with pytest.raises(PortraitError) as refused:
            load_portrait(data, PORTRAIT, VIDEO)
        assert str(refused.value) == NOT_HUMAN
    else:
        path = tmp_path / "chelsea.png"
        path.write_bytes(data)
        with pytest.raises(PortraitError) as refused:
            load_portrait(path, PORTRAIT, VIDEO)
        assert str(refused.value).startswith(NOT_HUMAN)
        assert "landmarks.json" in str(refused.value)  # a file can have landmarks beside it
    assert str(refused.value).startswith("no human face found in this image")
    assert "use a photo or painting of one person" in str(refused.value)


def test_the_message_says_what_to_use() -> None:
    assert NOT_HUMAN.startswith("no human face found in this image: ")
    assert "photo or painting of one person" in NOT_HUMAN
    with pytest.raises(PortraitError, match="^no human face found in this image"):
        grey = np.full((200, 200, 3), 128, np.uint8)
        check_human_face(grey, fit_landmarks(grey, (50, 50, 150, 150)))


def test_given_landmarks_skip_the_check(chelsea: np.ndarray, tmp_path: Path) -> None:
    # The escape hatch: whoever gives the 68 points decides what the face is, even a cat's.
    points = np.clip(fit_landmarks(chelsea, (110.0, 40.0, 390.0, 320.0)), 0, [450, 299])
    assert not is_human_face(chelsea, points)
    portrait = load_portrait(_png(chelsea), PORTRAIT, VIDEO, landmarks=points)
    assert portrait.rgb.shape == (256, 256, 3)
    path = tmp_path / "chelsea.png"
    path.write_bytes(_png(chelsea))
    (tmp_path / "chelsea.landmarks.json").write_text(f'{{"landmarks": {points.tolist()}}}', encoding="utf-8")
    assert load_portrait(path, PORTRAIT, VIDEO).landmarks.shape == (68, 2)


def test_detect_landmarks_runs_the_check(chelsea: np.ndarray) -> None:
    with pytest.raises(PortraitError, match="^no human face found in this image"):
        detect_landmarks(_cat_the_old_pipeline_took_for_a_face(chelsea))


@pytest.mark.slow
def test_the_quick_cases_of_the_benchmark() -> None:
    # Measured on every case (bench/face_check.py, 9 min): faces 105/105 pass, painting stand-ins
    # 78/86 (the 8 refused are all made from 25 px LFW thumbnails enlarged 8-10 times, then drawn,
    # posterised, cartooned or greyed: the 18 made from the astronaut all pass), non-faces 783/783
    # and cat 115/115 refused. The suite runs the benchmark's --quick share of them.
    positives, _ = positive_cases(quick=True)
    negatives: list[Case] = negative_cases(quick=True)
    refused = [(c.group, c.name) for c in positives if not is_human_face(c.rgb, c.landmarks)]
    assert not [name for group, name in refused if group == "faces" or name.startswith("astronaut")], refused
    paintings = sum(1 for c in positives if c.group == "paintings")
    assert len(refused) <= 0.12 * paintings, refused
    passed = [c.name for c in negatives if is_human_face(c.rgb, c.landmarks)]
    assert len([c for c in negatives if c.group == "cat"]) >= 10
    assert not passed, passed


def test_a_refused_largest_face_gives_the_next_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two astronauts, the right one 1.2 times larger; the check (stubbed) refuses the right face,
    # as it would a dog's beside its owner: the smaller one is returned.
    from skimage import data

    import avatar.face_check

    small = data.astronaut()
    large = np.asarray(Image.fromarray(small).resize((614, 614), Image.Resampling.BICUBIC))
    both = np.zeros((614, 512 + 614, 3), np.uint8)
    both[:512, :512], both[:, 512:] = small, large
    monkeypatch.setattr(avatar.face_check, "is_human_face", lambda rgb, points: points[:, 0].max() < 512)
    faces = sorted(detect_faces(both), key=lambda face: -face[1])
    assert len(faces) >= 2 and faces[0][0][0] > 512 and faces[1][0][2] < 512  # both found, the right first
    points = detect_landmarks(both)
    assert points[:, 0].max() < 512
    monkeypatch.setattr(avatar.face_check, "is_human_face", lambda rgb, points: False)
    with pytest.raises(PortraitError, match="^no human face found in this image"):
        detect_landmarks(both)
