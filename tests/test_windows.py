import math
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, VadConfig, WindowConfig
from avatar.errors import AudioError
from avatar.windows import AudioWindow, AudioWindower, iter_clip_windows

WINDOW = WindowConfig(window_s=0.2, lookahead_s=0.04)
VAD = VadConfig()


def windower(fps: int = 25, window: WindowConfig = WINDOW) -> AudioWindower:
    return AudioWindower(window, VAD, fps)


def run_chunks(samples: np.ndarray, sizes: list[int], fps: int = 25, flush: bool = True) -> list[AudioWindow]:
    w = windower(fps)
    windows: list[AudioWindow] = []
    position = 0
    for size in sizes:
        windows += w.push(samples[position : position + size])
        position += size
    windows += w.push(samples[position:])
    return windows + w.flush() if flush else windows


def random_sizes(total: int, seed: int, largest: int = 3000) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(0, largest)))
    return sizes


def window_end(k: int, fps: int) -> int:
    """The sample index up to which frame k's window reaches: t_k + lookahead."""
    return round(k * SAMPLE_RATE_HZ / fps) + WINDOW.lookahead_samples


def same(a: list[AudioWindow], b: list[AudioWindow]) -> bool:
    return len(a) == len(b) and all(
        x.frame_index == y.frame_index and x.speaking == y.speaking and np.array_equal(x.samples, y.samples)
        for x, y in zip(a, b, strict=True)
    )




@pytest.mark.parametrize("fps", [25, 30, 24, 60])
def test_one_window_per_frame(fps: int, speech: np.ndarray) -> None:
    windows = run_chunks(speech, [], fps)
    assert [w.frame_index for w in windows] == list(range(math.ceil(len(speech) * fps / SAMPLE_RATE_HZ)))
    for w in windows:
        assert w.samples.dtype == np.float32 and w.samples.shape == (WINDOW.total_samples,)
        assert w.past_samples == WINDOW.past_samples and w.fps == fps
        assert np.abs(w.samples).max() <= 1.0


@pytest.mark.parametrize(("seconds", "fps", "frames"), [(1.0, 25, 25), (1.0, 30, 30), (0.5, 25, 13),
                                                         (0.01, 25, 1), (0.0, 25, 0), (2.345, 30, 71)])
def test_frame_count_for_duration(seconds: float, fps: int, frames: int) -> None:
    samples = np.zeros(round(seconds * SAMPLE_RATE_HZ), np.int16)
    assert len(run_chunks(samples, [], fps)) == frames


def test_window_holds_the_audio_around_its_frame(speech: np.ndarray) -> None:
    fps = 30
    windows = run_chunks(speech, random_sizes(len(speech), seed=3), fps)
    padded = np.concatenate([np.zeros(WINDOW.past_samples, np.int16), speech,
                             np.zeros(WINDOW.lookahead_samples + SAMPLE_RATE_HZ, np.int16)])
    for w in windows:
        center = round(w.frame_index * SAMPLE_RATE_HZ / fps)
        expected = padded[center : center + WINDOW.total_samples] / 32768.0
        assert np.array_equal(w.samples, expected.astype(np.float32))
    assert not windows[0].samples[: WINDOW.past_samples].any()  # before the stream: silence


def test_emitted_as_soon_as_lookahead_arrives(speech: np.ndarray) -> None:
    fps = 30
    w = windower(fps)
    emitted = 0
    for size in random_sizes(len(speech), seed=4, largest=700):
        emitted += len(w.push(speech[w.samples_received : w.samples_received + size]))
        due = [k for k in range(200) if window_end(k, fps) <= w.samples_received]
        assert emitted == w.next_frame_index == len(due)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunking_does_not_change_windows(seed: int, speech: np.ndarray) -> None:
    whole = run_chunks(speech, [])
    assert same(run_chunks(speech, random_sizes(len(speech), seed)), whole)
    assert same(run_chunks(speech, [1] * 1000 + [7] * 300), whole)
    assert same(list(iter_clip_windows(speech, WINDOW, VAD, 25)), whole)


def test_causal(speech: np.ndarray) -> None:
    fps = 25
    rng = np.random.default_rng(5)
    for cut in (12_345, 20_000, 40_001):
        other = speech.copy()
        other[cut:] = rng.integers(-20_000, 20_000, size=len(speech) - cut, dtype=np.int16)
        a, b = run_chunks(speech, random_sizes(len(speech), 6), fps), run_chunks(other, [], fps)
        complete = [k for k in range(len(a)) if window_end(k, fps) <= cut]
        assert complete and same(a[: len(complete)], b[: len(complete)])
        assert not same(a[len(complete) : len(complete) + 1], b[len(complete) : len(complete) + 1])


def test_speaking_follows_the_voice(speech: np.ndarray, silence_wav: Path) -> None:
    windows = run_chunks(speech, [])
    speaking = np.array([w.speaking for w in windows])
    fps = 25
    assert not speaking[: int(0.4 * fps)].any()  # 0.5 s of silence, less the 40 ms lookahead
    assert not speaking[-int(0.15 * fps) :].any()
    assert speaking[int(0.6 * fps) : -int(0.6 * fps)].mean() > 0.9
    assert not any(w.speaking for w in run_chunks(load_audio_file(silence_wav), []))


def test_speaking_uses_the_lookahead(speech: np.ndarray) -> None:
    # Speech onset is seen by the frame whose lookahead reaches it, not one frame later.
    near = AudioWindower(WindowConfig(window_s=0.2, lookahead_s=0.0), VAD, 25)
    far = AudioWindower(WindowConfig(window_s=0.2, lookahead_s=0.2), VAD, 25)
    first_near = next(w.frame_index for w in near.push(speech) + near.flush() if w.speaking)
    first_far = next(w.frame_index for w in far.push(speech) + far.flush() if w.speaking)
    assert first_near - first_far == 5  # 0.2 s at 25 fps


def test_memory_stays_bounded_on_a_long_stream(speech: np.ndarray) -> None:
    w = windower(30)
    chunk = 320
    stream = np.tile(speech, 120)  # about 10 minutes, in 20 ms pushes
    frames = 0
    largest_buffer = largest_vad = 0
    for start in range(0, len(stream), chunk):
        frames += len(w.push(stream[start : start + chunk]))
        largest_buffer = max(largest_buffer, w.buffered_samples)
        largest_vad = max(largest_vad, w.buffered_vad_states)
    assert frames == w.next_frame_index and w.samples_received == len(stream)
    assert largest_buffer <= WINDOW.total_samples + SAMPLE_RATE_HZ // 30 + chunk
    assert largest_vad <= 4


def test_push_after_flush_and_bad_input() -> None:
    w = windower()
    with pytest.raises(AudioError):
        w.push(np.zeros(100, np.float32))
    with pytest.raises(AudioError):
        w.push(np.zeros((100, 2), np.int16))
    assert [x.frame_index for x in w.push(np.zeros(1000, np.int16))] == [0]
    assert [x.frame_index for x in w.flush()] == [1]
    assert w.flush() == []
    with pytest.raises(AudioError, match="flushed"):
        w.push(np.zeros(10, np.int16))
