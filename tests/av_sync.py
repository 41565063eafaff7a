"""Lips against voice at a browser end: what the page samples, and how the onsets are read.

The drive (`sync_drive_wav`) is speech with clear onsets: short "pa" syllables after silence
(espeak-ng), then two real recordings of a human voice (Debian's alsa-utils), then a sentence.
In the page (`WATCH_JS`), `requestVideoFrameCallback` stamps every video frame of an end with its
`expectedDisplayTime` and keeps the gray values of the mouth region; the voice is stamped two ways:
- playout: `RTCRtpReceiver.getSynchronizationSources()` gives the time WebRTC played out each
  audio packet and its level. This is the clock the receiver's own audio/video sync works on
  (and what an <audio> element plays), so it is the far end's offset.
- Web Audio: an AudioWorklet takes the RMS of each 128-sample quantum of the track, stamped with
  `AudioContext.getOutputTimestamp()`. It shows the voice's content at either end, but the path
  into an AudioContext adds its own latency (74 ms in headless Chromium 156, measured against the
  playout stamps of the same packets), so its offsets read that much earlier lips.
`onset_offsets` compares, for every voice onset after silence, when the voice plays and when the
mouth is first seen opening: lips minus voice (> 0: the lips trail the voice).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from avatar.speech import synthesize_speech

RECORDINGS = [Path("/usr/share/sounds/alsa/Front_Center.wav"), Path("/usr/share/sounds/alsa/Front_Left.wav")]
SYLLABLES = 6
SYLLABLE_SPACING_S = 0.7


def sync_drive_wav(out: Path, sentence: str) -> tuple[Path, float]:
    """The drive as one 16-bit mono 48 kHz WAV (the fake microphone loops it); (path, seconds)."""
    missing = [str(p) for p in RECORDINGS if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing} missing: scripts/setup.sh installs Debian's alsa-utils")
    rate = 48_000
    pa = synthesize_speech("pa", out.with_name("pa.wav"), sample_rate_hz=rate, lead_silence_s=0, tail_silence_s=0)
    words = synthesize_speech(sentence, out.with_name("sentence.wav"), sample_rate_hz=rate,
                              lead_silence_s=0.6, tail_silence_s=0.8)  # fmt: skip
    parts: list[np.ndarray] = [np.zeros(int(0.6 * rate), np.int16)]
    syllable = _read_pcm(pa, rate)
    for _ in range(SYLLABLES):
        gap = np.zeros(max(0, int(SYLLABLE_SPACING_S * rate) - syllable.size), np.int16)
        parts += [syllable, gap]
    for recording in RECORDINGS:
        parts += [_read_pcm(recording, rate), np.zeros(int(0.6 * rate), np.int16)]
    parts.append(_read_pcm(words, rate))
    samples = np.concatenate(parts)
    _write_pcm(out, samples, rate)
    return out, samples.size / rate


def _read_pcm(path: Path, rate: int) -> np.ndarray:
    raw = subprocess.run(["sox", str(path), "-t", "raw", "-b", "16", "-e", "signed-integer", "-c", "1",
                          "-r", str(rate), "-"], check=True, capture_output=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.int16)


def _write_pcm(path: Path, samples: np.ndarray, rate: int) -> None:
    subprocess.run(["sox", "-t", "raw", "-b", "16", "-e", "signed-integer", "-c", "1", "-r", str(rate), "-",
                    str(path)], input=samples.astype("<i2").tobytes(), check=True, capture_output=True)  # fmt: skip


# watchEnd(ctx, media, video, box, receiver?) -> {frames, audio, playout, stop()}, sampling at once.
# frames: {t (expectedDisplayTime, ms), gray (the mouth box, fractions of the frame), rw, rh};
# audio: flat [t_ms, rms, ...] per render quantum, t when the Web Audio graph outputs it;
# playout: flat [t_ms, level, ...] per audio packet, t when WebRTC played it out (needs `receiver`).
WATCH_JS = r"""
window.__syncWorklet = window.__syncWorklet || ((ctx) => ctx.__envelope || (ctx.__envelope = (async () => {
  const code = `
    class Envelope extends AudioWorkletProcessor {
      constructor() { super(); this.out = []; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (ch) {
          let sum = 0;
          for (let i = 0; i < ch.length; i++) sum += ch[i] * ch[i];
          this.out.push(currentTime, Math.sqrt(sum / ch.length));
        }
        if (this.out.length >= 128) { this.port.postMessage(this.out); this.out = []; }
        return true;
      }
    }
    registerProcessor('envelope', Envelope);`;
  await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: 'application/javascript' })));
})()));  // once per context
window.watchEnd = async (ctx, media, video, box, receiver) => {
  await window.__syncWorklet(ctx);
  const end = { frames: [], audio: [], playout: [], on: true };
  const audio = media.getAudioTracks()[0];
  if (audio) {
    const node = new AudioWorkletNode(ctx, 'envelope');
    node.port.onmessage = (e) => {
      if (!end.on) return;
      const ts = ctx.getOutputTimestamp();  // context time -> performance.now() time at the output
      const shift = ts.performanceTime - ts.contextTime * 1000;
      for (let i = 0; i < e.data.length; i += 2) end.audio.push(e.data[i] * 1000 + shift, e.data[i + 1]);
    };
    ctx.createMediaStreamSource(new MediaStream([audio])).connect(node);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    node.connect(mute).connect(ctx.destination);  // keeps the worklet pulled
  }
  if (receiver) {
    let last = null;  // getSynchronizationSources(): the latest packet played out, on the Date clock
    end.poll = setInterval(() => {
      for (const src of receiver.getSynchronizationSources()) {
        if (src.timestamp === last) continue;
        last = src.timestamp;
        end.playout.push(src.timestamp - performance.timeOrigin, src.audioLevel || 0);
      }
    }, 2);
  }
  const canvas = document.createElement('canvas');
  const c2d = canvas.getContext('2d', { willReadFrequently: true });
  const onFrame = (now, meta) => {
    if (!end.on) return;
    if (video.videoWidth) {
      const w = video.videoWidth, h = video.videoHeight;
      canvas.width = w; canvas.height = h;
      c2d.drawImage(video, 0, 0);
      const [x, y] = [Math.round(w * box[0]), Math.round(h * box[1])];
      const [rw, rh] = [Math.round(w * box[2]), Math.round(h * box[3])];
      const data = c2d.getImageData(x, y, rw, rh).data;
      const gray = new Array(rw * rh);
      for (let i = 0; i < rw * rh; i++) gray[i] = Math.round((data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 3);
      end.frames.push({ t: meta.expectedDisplayTime || now, gray, rw, rh });
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  end.stop = () => { end.on = false; if (end.poll) clearInterval(end.poll); };
  return end;
};
"""


def mouth_motion(frames: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(display times ms, mean distance of the mouth region from its median) per video frame."""
    stack = np.stack([np.asarray(f["gray"], np.float32).reshape(f["rh"], f["rw"]) for f in frames])
    return np.asarray([f["t"] for f in frames]), np.abs(stack - np.median(stack, axis=0)).mean(axis=(1, 2))


def onset_offsets(frames: list[dict[str, Any]], audio: list[float], *, quiet_s: float = 0.25) -> dict[str, Any]:
    """Lips minus voice (ms) at every voice onset after `quiet_s` of silence, and their median.

    Voice onset: the first 10 ms step whose RMS passes 20 % of the level the next 200 ms reach.
    Mouth onset: the first frame whose motion moves 30 % of the way from its rest (the median of
    the frames shown in the 250..50 ms before the voice onset) to its farthest point within 300 ms.
    A frame is on screen from its display time to the next one's, so an onset that falls inside
    a frame's time counts from that frame's start."""
    if len(frames) < 50 or len(audio) < 1000:
        return {"frames": len(frames), "onsets": 0}
    times, motion = mouth_motion(frames)
    pairs = np.asarray(audio, np.float64).reshape(-1, 2)
    grid = np.arange(pairs[0, 0], pairs[-1, 0], 10.0)
    rms = np.interp(grid, pairs[:, 0], pairs[:, 1])
    floor = max(float(np.percentile(rms, 20)) * 3, 1e-3)
    quiet_steps = int(quiet_s * 100)
    offsets: list[float] = []
    onsets: list[float] = []
    i = quiet_steps
    while i < grid.size - 20:
        if rms[i] > floor and np.all(rms[i - quiet_steps : i] < floor):
            level = float(rms[i : i + 20].max())
            start = i + int(np.flatnonzero(rms[i : i + 20] >= 0.2 * level)[0])
            onset = float(grid[start])
            before = (times >= onset - 250) & (times < onset - 50)
            after = (times >= onset - 150) & (times < onset + 300)
            if before.sum() >= 3 and after.sum() >= 5 and times[-1] > onset + 300:
                rest = float(np.median(motion[before]))
                change = np.abs(motion - rest)
                peak = float(change[after].max())
                if peak >= 2.0:
                    first = int(np.flatnonzero(after & (change >= 0.3 * peak))[0])
                    onsets.append(onset)
                    offsets.append(float(times[first] - onset))
            i = start + 30  # past this syllable's start
        else:
            i += 1
    result: dict[str, Any] = {"frames": len(frames), "onsets": len(offsets),
                              "offsets_ms": [round(x, 1) for x in offsets]}  # fmt: skip
    if offsets:
        result["median_ms"] = round(float(np.median(offsets)), 1)
        q1, q3 = np.percentile(offsets, [25, 75])
        result["iqr_ms"] = round(float(q3 - q1), 1)
    return result


def sync_summary(frames: list[dict[str, Any]], audio: list[float]) -> dict[str, Any]:
    """The mouth's motion, the voice's level, their best correlation (and its lag, > 0: lips after
    the voice) over -300..300 ms, and the onset offsets of `onset_offsets`."""
    if len(frames) < 50 or len(audio) < 1000:
        return {"frames": len(frames), "audio_blocks": len(audio) // 2}
    times, motion = mouth_motion(frames)
    pairs = np.asarray(audio, np.float64).reshape(-1, 2)
    grid = np.arange(max(times[0], pairs[0, 0]), min(times[-1], pairs[-1, 0]), 5.0)
    m = np.interp(grid, times, motion)
    a = np.interp(grid, pairs[:, 0], pairs[:, 1])
    m, a = (m - m.mean()) / (m.std() + 1e-9), (a - a.mean()) / (a.std() + 1e-9)
    lags = range(-60, 61)  # 5 ms steps
    corr = [float(np.mean(m[k:] * a[: a.size - k])) if k >= 0 else float(np.mean(m[:k] * a[-k:])) for k in lags]
    best = int(np.argmax(corr))
    intervals = np.diff(times)
    return {
        "frames": len(frames),
        "frame_interval_p95_ms": round(float(np.percentile(intervals, 95)), 1),
        "mouth_max": round(float(motion.max()), 2),
        "mouth_p90": round(float(np.percentile(motion, 90)), 2),
        "mouth_min": round(float(motion.min()), 2),
        "rms_max": round(float(pairs[:, 1].max()), 4),
        "corr": round(corr[best], 3),
        "corr_lag_ms": lags[best] * 5,
        **{f"onset_{k}": v for k, v in onset_offsets(frames, audio).items() if k != "frames"},
    }
