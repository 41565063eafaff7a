"""Logs for people and for log shippers (`avatar serve --log-format json` is tested in test_server)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from avatar.logs import setup_logging

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
