"""The avatar library as the server uses it: loaded once per process, shared by every session.

`Backend` is the small interface the per-client protocol needs (portraits, new sessions);
`AvatarBackend` is the real one: one generator and one `InferenceEngine` per process, with the
server's metrics fed from the engine's steps, the sessions' frames and the portrait decodes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from avatar.config import AppConfig
from avatar.portrait import Portrait
from avatar.speech_queue import SpeechItem, SpeechMark
from signaling.messages import Disclosure
from signaling.metrics import ServerMetrics
from signaling.peer import MediaSession


class LiveSession(MediaSession, Protocol):
    """avatar.session.AvatarSession as the server uses it."""

    ended: asyncio.Event

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    on_speech: Callable[[SpeechMark], None] | None

    async def say(self, text: str, voice: str | None = None, item_id: str | None = None) -> SpeechItem: ...

    async def play(self, data: bytes, item_id: str | None = None) -> SpeechItem: ...

    def clear_speech(self) -> int: ...


class Backend(Protocol):
    """The avatar library behind the server: loaded once, shared by every session."""

    portrait_names: list[str]

    async def start(self) -> None: ...

    def disclosure(self) -> Disclosure: ...  # what every frame carries, as welcome reports it

    async def aclose(self) -> None: ...

    def default_portrait(self) -> Portrait: ...

    def builtin_portrait(self, name: str) -> Portrait: ...  # may block: call in a thread

    def uploaded_portrait(self, data: bytes) -> Portrait: ...  # may block: call in a thread

    def new_session(self, portrait: Portrait, session_id: str, return_audio: bool) -> LiveSession: ...


class AvatarBackend:
    """The real library: one generator and one InferenceEngine per process."""

    def __init__(self, config: AppConfig, metrics: ServerMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._generator: Any = None
        self._engine: Any = None
        self._default: Portrait | None = None
        self.portrait_names: list[str] = []
        self._detect_lock = threading.Lock()

    async def start(self) -> None:
        from avatar.engine import InferenceEngine
        from avatar.generators import load_generator
        from avatar.portrait import builtin_portrait_names, default_portrait

        self.portrait_names = list(builtin_portrait_names())
        self._generator = await asyncio.to_thread(load_generator, self._config)
        self._default = await asyncio.to_thread(default_portrait, self._config)
        self._engine = InferenceEngine(self._generator, self._config.video, on_step=self._metrics.engine_step)
        await self._engine.start()

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    def disclosure(self) -> Disclosure:
        """What the frames carry, as the generator's disclosure stage says (it is the one that marks
        them; a generator without a stage marks nothing); before start(), as the configuration says."""
        if self._generator is not None and hasattr(self._generator, "disclosure"):
            stage = self._generator.disclosure
            if stage is None:
                return Disclosure(mark=False, watermark=False)
            summary = getattr(stage, "summary", None)
            if isinstance(summary, Mapping):
                return Disclosure(mark=bool(summary.get("mark")), watermark=bool(summary.get("watermark")))
        configured = self._config.disclosure
        return Disclosure(mark=configured.mark, watermark=configured.watermark)

    def default_portrait(self) -> Portrait:
        assert self._default is not None, "start() first"
        return self._default

    def builtin_portrait(self, name: str) -> Portrait:
        from avatar.portrait import load_builtin_portrait

        with self._detect_lock, self._metrics.portrait_decode_seconds.time():
            return load_builtin_portrait(name, self._config.portrait, self._config.video)

    def uploaded_portrait(self, data: bytes) -> Portrait:
        from avatar.portrait import load_portrait

        # One face detection at a time: dlib's shared detector is not documented thread-safe, and
        # a burst of uploads must not starve the inference worker of CPU.
        with self._detect_lock, self._metrics.portrait_decode_seconds.time():
            return load_portrait(data, self._config.portrait, self._config.video, name="upload")

    def new_session(self, portrait: Portrait, session_id: str, return_audio: bool) -> LiveSession:
        from avatar.session import AvatarSession

        session: LiveSession = AvatarSession(
            self._config,
            self._engine,
            self._generator,
            portrait,
            session_id=session_id,
            return_audio=return_audio,
            on_frame_ready=self._metrics.audio_to_frame_seconds.observe,
        )
        return session
