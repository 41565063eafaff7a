import subprocess
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import Reframer, load_audio_file
from avatar.config import SAMPLE_RATE_HZ, VadConfig
from avatar.errors import AudioError
from avatar.vad import SpeechState, VoiceActivityDetector


def run_vad(detector: VoiceActivityDetector, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw decision, smoothed SPEAKING) per frame."""
    raw, speaking = [], []
    for frame in Reframer(detector.frame_samples).push(samples):
        speaking.append(detector.process(frame) is SpeechState.SPEAKING)
        raw.append(detector.last_raw)
    return np.array(raw), np.array(speaking)


def frames(seconds: float, detector: VoiceActivityDetector) -> int:
    return round(seconds * SAMPLE_RATE_HZ / detector.frame_samples)


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_silence_is_never_speech(aggressiveness: int, silence_wav: Path) -> None:
    detector = VoiceActivityDetector(VadConfig(aggressiveness=aggressiveness))
    _, speaking = run_vad(detector, load_audio_file(silence_wav))
    assert len(speaking) == 100 and not speaking.any()


def test_model_warmup_is_ignored(silence_wav: Path) -> None:
    # One-bit dither: webrtcvad (mode 0) calls the first frames speech while it learns the noise floor.
    detector = VoiceActivityDetector(VadConfig(aggressiveness=0, start_s=0.0))
    raw, speaking = run_vad(detector, load_audio_file(silence_wav))
    assert raw[:3].all() and not raw[detector.warmup_frames :].any()
    assert not speaking.any()


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("fixture", ["speech_wav", "clipped_speech_wav"])
def test_sentence_speaks_between_silent_ends(
    frame_ms: int, fixture: str, request: pytest.FixtureRequest
) -> None:
    detector = VoiceActivityDetector(VadConfig(frame_ms=frame_ms))
    assert detector.frame_samples == frame_ms * 16
    samples = load_audio_file(request.getfixturevalue(fixture))
    _, speaking = run_vad(detector, samples)
    # 0.5 s of padding on each side; the hangover (0.25 s) may hold the end for a while.
    assert not speaking[: frames(0.45, detector)].any()
    assert not speaking[-frames(0.2, detector) :].any()
    middle = speaking[frames(0.6, detector) : -frames(0.6, detector)]
    assert middle.mean() > 0.9


def test_mode_3_rejects_white_noise(tmp_path: Path) -> None:
    # At this level (sox vol 0.1, about -30 dBFS RMS) mode 3 rejects the noise while mode 0 calls it
    # speech. Louder noise (the conftest fixture, vol 0.3) is speech to webrtcvad in every mode.
    path = tmp_path / "noise.wav"
    subprocess.run(["sox", "-R", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path),
                    "synth", "3", "whitenoise", "vol", "0.1"], check=True)
    noise = load_audio_file(path)
    raw3, speaking3 = run_vad(VoiceActivityDetector(VadConfig(aggressiveness=3)), noise)
    assert not speaking3.any() and raw3.mean() < 0.1
    raw0, speaking0 = run_vad(VoiceActivityDetector(VadConfig(aggressiveness=0)), noise)
    assert raw0.mean() > 0.8 and speaking0.mean() > 0.8


@pytest.mark.parametrize("gap_ms", [100, 200])
def test_hangover_bridges_a_short_gap(gap_ms: int, speech_wav: Path) -> None:
    samples = load_audio_file(speech_wav)
    cut = SAMPLE_RATE_HZ  # 1 s in: in the middle of "Open the window wide."
    gap = np.zeros(gap_ms * SAMPLE_RATE_HZ // 1000, np.int16)  # digital silence
    gapped = np.concatenate([samples[:cut], gap, samples[cut:]])
    detector = VoiceActivityDetector(VadConfig(hangover_s=0.25))
    raw, speaking = run_vad(detector, gapped)
    first, last = cut // detector.frame_samples, (cut + len(gap)) // detector.frame_samples
    assert speaking[first - 5 : last + 5].all()
    if gap_ms == 200:
        # webrtcvad's own hangover (80-120 ms) covers only the start of this gap; ours covers the rest.
        assert not raw[last - 3 : last].any()
        _, no_hangover = run_vad(VoiceActivityDetector(VadConfig(hangover_s=0.0)), gapped)
        assert not no_hangover[first:last].all()


def test_state_machine_hangover_bridges_100_ms() -> None:
    detector = VoiceActivityDetector(VadConfig(frame_ms=20, hangover_s=0.25))
    decisions = [True] * 10 + [False] * 5 + [True] * 10 + [False] * 13
    states = [detector.update(d) for d in decisions]
    assert all(state is SpeechState.SPEAKING for state in states[1:-1])
    assert states[-1] is SpeechState.SILENT


def test_start_threshold_needs_consecutive_speech(speech_wav: Path) -> None:
    detector = VoiceActivityDetector(VadConfig(start_s=0.1, hangover_s=0.0))
    assert (detector.start_frames, detector.hangover_frames) == (5, 1)
    raw, speaking = run_vad(detector, load_audio_file(speech_wav))
    onsets = np.flatnonzero(speaking[1:] & ~speaking[:-1]) + 1
    assert len(onsets) >= 1
    for onset in onsets:
        assert raw[onset - 4 : onset + 1].all()
    # With hangover 0 the state follows the raw decision except during the start delay.
    assert not (speaking & ~raw).any()


def test_update_is_the_state_machine_alone() -> None:
    detector = VoiceActivityDetector(VadConfig(frame_ms=20, start_s=0.04, hangover_s=0.1))
    assert (detector.start_frames, detector.hangover_frames) == (2, 5)
    decisions = [True, False, True, True, False, False, False, False, True, False, False, False, False, False]
    states = [detector.update(d) is SpeechState.SPEAKING for d in decisions]
    assert states == [False, False, False, True, True, True, True, True, True, True, True, True, True, False]


def test_wrong_frames_raise() -> None:
    detector = VoiceActivityDetector(VadConfig(frame_ms=20))
    with pytest.raises(AudioError, match="320"):
        detector.process(np.zeros(321, np.int16))
    with pytest.raises(AudioError):
        detector.process(np.zeros(320, np.float32))
    with pytest.raises(AudioError):
        detector.is_speech_raw(np.zeros((320, 1), np.int16))
    assert detector.process(np.zeros(320, np.int16)) is SpeechState.SILENT
