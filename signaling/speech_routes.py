"""HTTP speech endpoints: other services drive a session a person is watching.

    POST /sessions/{id}/say    {"text": "...", "voice": "..."}         -> 202 {"id": ...}
    POST /sessions/{id}/play   the audio file as the body (or {"audio": "<base64>"})  -> 202 {"id": ...}
    POST /sessions/{id}/clear                                          -> 200 {"cleared": N}

The session is the one a /ws client was welcomed to (`welcome.session`); the speaking / spoken
events go to that client. With a server token, a request must show it (`Authorization: Bearer
TOKEN`); without one, only loopback clients may call (not requests a proxy forwarded). Errors are
JSON `{"error": {"code", "message"}}`: 400 bad_speech or bad_message, 403, 404 (no such session).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from avatar.errors import SpeechError
from signaling import messages as m
from signaling.client import ClientConnection, tokens_match
from signaling.operations import bearer_token, is_operator


def may_speak(request: web.Request, token: str) -> bool:
    """With a server token: a request showing it (Authorization: Bearer); without: loopback only."""
    if not token:
        return is_operator(request, token)
    given = bearer_token(request)
    return given is not None and tokens_match(given, token)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def add_speech_routes(
    app: web.Application, find_client: Callable[[str], ClientConnection | None], token: str, max_clip_bytes: int
) -> None:
    def client_for(request: web.Request) -> ClientConnection | web.Response:
        if not may_speak(request, token):
            return _error(403, m.UNAUTHORIZED, "Speech endpoints need the server's token (or, without one, loopback).")
        client = find_client(request.match_info["session"])
        if client is None:
            return _error(404, "not_found", "No live session has that id.")
        return client

    async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            return _error(400, m.BAD_MESSAGE, "The body must be a JSON object.")
        if not isinstance(body, dict):
            return _error(400, m.BAD_MESSAGE, "The body must be a JSON object.")
        return body

    async def say(request: web.Request) -> web.Response:
        client = client_for(request)
        if isinstance(client, web.Response):
            return client
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        text, voice = body.get("text"), body.get("voice")
        if not isinstance(text, str) or not (voice is None or isinstance(voice, str)):
            return _error(400, m.BAD_MESSAGE, "Give 'text' (and optionally 'voice') as strings.")
        return await _speak(client, text=text, voice=voice)

    async def play(request: web.Request) -> web.Response:
        client = client_for(request)
        if isinstance(client, web.Response):
            return client
        if request.content_type == "application/json":
            body = await json_body(request)
            if isinstance(body, web.Response):
                return body
            try:
                audio = base64.b64decode(str(body.get("audio", "")), validate=True)
            except (ValueError, binascii.Error):
                return _error(400, m.BAD_SPEECH, "The 'audio' field is not base64.")
        else:
            audio = await request.read()
        if len(audio) > max_clip_bytes:
            return _error(400, m.BAD_SPEECH, f"The clip is larger than {max_clip_bytes} bytes.")
        return await _speak(client, audio=audio)

    async def clear(request: web.Request) -> web.Response:
        client = client_for(request)
        if isinstance(client, web.Response):
            return client
        return web.json_response({"cleared": client.clear_speech()})

    app.router.add_post("/sessions/{session}/say", say)
    app.router.add_post("/sessions/{session}/play", play)
    app.router.add_post("/sessions/{session}/clear", clear)


async def _speak(client: ClientConnection, **item: Any) -> web.Response:
    try:
        item_id = await client.speak(**item)
    except SpeechError as exc:
        return _error(400, m.BAD_SPEECH, str(exc))
    return web.json_response({"id": item_id}, status=202)
