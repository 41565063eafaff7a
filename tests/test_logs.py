"""Logs for people and for log shippers: `avatar serve --log-format json` carries session and client."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from avatar.logs import setup_logging
from tests.ws_client import printed_url, ws_url

REPO = Path(__file__).resolve().parent.parent


def test_text_and_json_formats(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        logging.LoggerAdapter(logging.getLogger("t"), {"session": "abc", "client": "127.0.0.9"}).info("hi %d", 1)
        logging.getLogger("t").warning("no context")
        setup_logging("INFO", "text")
        logging.LoggerAdapter(logging.getLogger("t"), {"session": "abc"}).info("as text")
        logging.getLogger("aioice.ice").info("chatty library below warning: not shown")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines[:2])
    assert first["message"] == "hi 1" and first["session"] == "abc" and first["client"] == "127.0.0.9"
    assert first["level"] == "INFO" and first["logger"] == "t" and first["time"]
    assert second["session"] is None and second["client"] is None and second["level"] == "WARNING"
    assert lines[2].endswith("INFO t [session=abc]: as text")
    assert len(lines) == 3
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")


@pytest.mark.slow
def test_serve_logs_json_with_session_and_client(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[webrtc]\nhost_addresses = ["127.0.0.1"]\n[video]\nwidth_px = 256\nheight_px = 256\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar", "serve", "--config", str(config), "--port", "0", "--log-format", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = printed_url(proc)
        assert url, f"the server printed no URL: {proc.stderr.read() if proc.poll() is not None else ''}"
        session = asyncio.run(_hello_and_bye(url))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    mine = [r for r in records if r.get("session") == session]
    assert mine, records[-5:]
    assert all(r["client"] == "127.0.0.1" for r in mine)
    assert any(r["message"] == "welcome" for r in mine)


async def _hello_and_bye(url: str) -> str:
    async with connect(ws_url(url), proxy=None) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome"
        await ws.send(json.dumps({"type": "bye"}))
        await asyncio.sleep(0.3)
    return str(welcome["session"])
