from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import read_wav_int16
from PIL import Image

from avatar.audio import AudioNormalizer, Reframer, load_audio_file
from avatar.config import SAMPLE_RATE_HZ
from avatar.errors import AudioError

TOLERANCE_SAMPLES = 3 * SAMPLE_RATE_HZ // 1000  # 3 ms


def aiortc_frames(stereo_48k: np.ndarray) -> list[av.AudioFrame]:
    """Frames as aiortc delivers them: s16 packed stereo 48 kHz, 960 samples, pts in 1/48000."""
    frames = []
    for start in range(0, len(stereo_48k) - 959, 960):
        chunk = np.ascontiguousarray(stereo_48k[start : start + 960])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = start
        frame.time_base = Fraction(1, 48_000)
        frames.append(frame)
    return frames


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation at lag 0 over the common length."""
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n].astype(np.float64), b[:n].astype(np.float64))[0, 1])


def expected_length(path: Path) -> float:
    data, rate = read_wav_int16(path)
    return len(data) * SAMPLE_RATE_HZ / rate


def test_aiortc_frames_become_16k_mono(speech_wav_48k_stereo: Path, speech_wav: Path) -> None:
    stereo, _ = read_wav_int16(speech_wav_48k_stereo)
    frames = aiortc_frames(stereo)
    normalizer = AudioNormalizer()
    outputs = [normalizer.push_frame(frame) for frame in frames]
    assert all(out.dtype == np.int16 and out.ndim == 1 and len(out) <= 320 for out in outputs)
    assert len(outputs[0]) < 320  # the resampler's filter delay
    tail = normalizer.flush()
    mono = np.concatenate([*outputs, tail])
    assert abs(len(mono) - len(frames) * 320) <= TOLERANCE_SAMPLES
    # Same voice, same timing as the 16 kHz rendering of the sentence (lag 0).
    assert correlation(mono, load_audio_file(speech_wav)) > 0.99


@pytest.mark.parametrize("fixture", ["speech_wav", "speech_wav_48k_stereo", "speech_wav_8k", "silence_wav",
                                     "noise_wav", "clipped_speech_wav"])
def test_load_audio_file_length_matches_duration(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    samples = load_audio_file(path)
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert abs(len(samples) - expected_length(path)) <= TOLERANCE_SAMPLES


def test_16k_mono_passes_through_unchanged(speech_wav: Path, silence_wav: Path) -> None:
    raw, _ = read_wav_int16(speech_wav)
    assert np.array_equal(load_audio_file(speech_wav), raw[:, 0])
    silence = load_audio_file(silence_wav)
    assert np.array_equal(silence, read_wav_int16(silence_wav)[0][:, 0])
    assert np.abs(silence).max() <= 2  # sox dithers its "silence" by one bit


@pytest.mark.parametrize(("codec", "suffix"), [("flac", "flac"), ("libopus", "ogg"), ("aac", "m4a"),
                                               ("libmp3lame", "mp3")])
def test_load_compressed_formats(codec: str, suffix: str, speech_wav_48k_stereo: Path,
                                 tmp_path: Path) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not available")
    stereo, rate = read_wav_int16(speech_wav_48k_stereo)
    path = tmp_path / f"speech.{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="stereo", rate=rate,
                                      frame_size=stream.codec_context.frame_size or None)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    samples = load_audio_file(path)
    # Lossy encoders add priming/padding: allow 60 ms.
    assert abs(len(samples) - len(stereo) / 3) <= 60 * SAMPLE_RATE_HZ // 1000
    assert np.abs(samples).max() > 1000


def test_load_audio_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        load_audio_file(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio_file(junk)
    image = tmp_path / "picture.png"
    Image.new("RGB", (32, 32), "red").save(image)
    with pytest.raises(AudioError, match="no audio stream"):
        load_audio_file(image)


@pytest.mark.parametrize(("rate", "channels", "dtype"), [(16_000, 1, np.int16), (44_100, 2, np.float32),
                                                         (8_000, 1, np.float64), (48_000, 6, np.int16)])
def test_push_array_length(rate: int, channels: int, dtype: type, speech_wav: Path) -> None:
    voice = load_audio_file(speech_wav)[: SAMPLE_RATE_HZ]
    normalizer = AudioNormalizer()
    source = normalizer.push_array(voice, SAMPLE_RATE_HZ)
    source = np.concatenate([source, normalizer.flush()])
    assert np.array_equal(source, voice)
    # Re-render the voice at `rate` with `channels` channels, then normalize it back in 20 ms chunks.
    resampled = np.interp(np.arange(len(voice) * rate // SAMPLE_RATE_HZ) * SAMPLE_RATE_HZ / rate,
                          np.arange(len(voice)), voice.astype(np.float64))
    data = np.repeat(resampled[:, None], channels, axis=1)
    data = data.astype(np.int16) if dtype == np.int16 else (data / 32768).astype(dtype)
    chunk = rate // 50
    out = [normalizer.push_array(data[i : i + chunk], rate) for i in range(0, len(data), chunk)]
    mono = np.concatenate([*out, normalizer.flush()])
    assert abs(len(mono) - SAMPLE_RATE_HZ) <= TOLERANCE_SAMPLES
    assert correlation(mono, voice) > 0.95


def test_format_change_mid_stream(speech_wav_48k_stereo: Path) -> None:
    stereo, _ = read_wav_int16(speech_wav_48k_stereo)
    normalizer = AudioNormalizer()
    out = [normalizer.push_frame(frame) for frame in aiortc_frames(stereo[:48_000])]
    out.append(normalizer.push_array(stereo[48_000:56_000, 0], 8_000))  # one second at 8 kHz, mono
    out.append(normalizer.push_array(np.zeros((441, 2), np.float32), 44_100))
    out.append(normalizer.flush())
    assert abs(sum(len(o) for o in out) - (16_000 + 16_000 + 160)) <= 2 * TOLERANCE_SAMPLES


def test_push_array_rejects_bad_input() -> None:
    normalizer = AudioNormalizer()
    with pytest.raises(AudioError):
        normalizer.push_array(np.zeros((4, 2, 2), np.int16), 16_000)
    with pytest.raises(AudioError):
        normalizer.push_array(np.zeros(100, np.int32), 16_000)
    with pytest.raises(AudioError):
        normalizer.push_array(np.zeros(100, np.int16), 0)
    assert normalizer.push_array(np.zeros(0, np.int16), 16_000).size == 0
    assert normalizer.flush().size == 0


def test_reframer_is_exact_with_random_chunks() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(-32768, 32767, size=50_000, dtype=np.int16)
    reframer = Reframer(320)
    frames: list[np.ndarray] = []
    position = 0
    while position < len(data):
        size = int(rng.integers(0, 1500))
        frames += reframer.push(data[position : position + size])
        position += size
    assert all(len(frame) == 320 and frame.dtype == np.int16 for frame in frames)
    assert len(frames) == len(data) // 320
    assert np.array_equal(np.concatenate(frames), data[: len(frames) * 320])
    assert reframer.pending_samples == len(data) % 320
    (last,) = reframer.flush()
    assert len(last) == 320
    assert np.array_equal(last[: len(data) % 320], data[len(frames) * 320 :])
    assert not last[len(data) % 320 :].any()
    assert reframer.flush() == []


def test_reframer_flush_without_padding() -> None:
    reframer = Reframer(160)
    assert reframer.push(np.arange(200, dtype=np.int16))[0].tolist() == list(range(160))
    (rest,) = reframer.flush(pad=False)
    assert rest.tolist() == list(range(160, 200))
    with pytest.raises(AudioError):
        reframer.push(np.zeros((2, 2), np.int16))
