"""Command line: `avatar serve | render | camera | train | eval | verify`.

Settings come from config.toml (or --config PATH); flags override single keys. This is the one
place that reads the command line; everything below it receives frozen config dataclasses.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from avatar.config import AppConfig, load_config, with_overrides
from avatar.errors import AvatarError
from avatar.logs import setup_logging

log = logging.getLogger("avatar")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="config file (default: the repository's config.toml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="text, or json (an object a line) for shippers"
    )


def _add_generator_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", choices=["warp", "tgan"], help="override generator.name")
    parser.add_argument("--checkpoint", type=Path, help="override generator.checkpoint (a tgan checkpoint)")
    parser.add_argument("--device", help="override generator.device: auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--size", type=int, metavar="PX", help="square output of PX x PX pixels (overrides video.width_px, height_px)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description="Real-time talking portrait.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the web and WebRTC server")
    _add_common(serve)
    _add_generator_flags(serve)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port (0 picks a free port)")

    render = commands.add_parser("render", help="portrait + audio file -> talking video (MP4)")
    _add_common(render)
    _add_generator_flags(render)
    render.add_argument(
        "inputs", nargs="*", metavar="[PORTRAIT] AUDIO",
        help="an optional portrait image (default: the configured built-in) and an audio file",
    )
    render.add_argument("--say", help="speak this text with espeak-ng instead of reading an audio file")
    render.add_argument(
        "--record", type=float, metavar="SECONDS", help="record this long from the microphone instead"
    )
    render.add_argument("-o", "--output", type=Path, required=True, help="output video file (.mp4)")
    render.add_argument("--landmarks", type=Path, help="JSON file of 68 (x, y) landmarks for the portrait")
    render.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    camera = commands.add_parser(
        "camera", help="microphone -> talking portrait on a virtual camera + the synced voice to an output device"
    )
    _add_common(camera)
    _add_generator_flags(camera)
    camera.add_argument(
        "portrait", nargs="?", type=Path, metavar="PORTRAIT",
        help="a portrait image (default: the configured built-in)",
    )
    camera.add_argument("--landmarks", type=Path, help="JSON file of 68 (x, y) landmarks for the portrait")
    camera.add_argument("--input", metavar="DEVICE", help="override camera.input: the microphone (index or name)")
    camera.add_argument(
        "--output", metavar="DEVICE", help="override camera.output: where the synced voice goes (a virtual audio cable)"
    )
    camera.add_argument(
        "--camera", metavar="DEVICE", help="override camera.device: the virtual camera (Linux: /dev/videoN)"
    )
    camera.add_argument(
        "--list-devices", action="store_true", help="list sound devices and virtual cameras, then exit"
    )

    train = commands.add_parser("train", help="train the temporal-GAN generator on talking-face videos")
    _add_common(train)
    train.add_argument("data_dir", type=Path, help="folder of talking-face videos with audio")
    train.add_argument("-o", "--output", type=Path, required=True, help="run folder for checkpoints and logs")
    train.add_argument("--steps", type=int, help="override train.steps")
    train.add_argument("--device", help="override generator.device")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    visemes = commands.add_parser(
        "train-visemes", help="train the viseme model on speech made with espeak-ng (the shipped weights)"
    )
    _add_common(visemes)
    visemes.add_argument("-o", "--output", type=Path, default=None, help="weights file (default: the shipped one)")
    visemes.add_argument("--utterances", type=int, default=1000, help="sentences to make and learn from")
    visemes.add_argument("--epochs", type=int, default=10)
    visemes.add_argument("--seed", type=int, default=1)

    evaluate = commands.add_parser("eval", help="metrics of a tgan checkpoint on held-out clips")
    _add_common(evaluate)
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--device", help="override generator.device")

    verify = commands.add_parser("verify", help="is a video or image synthetic? (watermark and content credentials)")
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument("--max-frames", type=int, default=None, help="frames read per video (default 1500: 60 s)")
    verify.add_argument(
        "--trust", type=Path, metavar="PEM", help="trust content credentials that chain to these root certificates"
    )
    verify.add_argument(
        "--trust-local", action="store_true", help="trust this machine's local signing chain (renders made here)"
    )
    verify.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    verify.add_argument("--log-format", default="text", choices=["text", "json"])
    return parser


def _generator_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if getattr(args, "generator", None):
        values["name"] = args.generator
    if getattr(args, "checkpoint", None):
        values["checkpoint"] = str(args.checkpoint)
        values.setdefault("name", "tgan")
    if getattr(args, "device", None):
        values["device"] = args.device
    return values


def _config(args: argparse.Namespace, **sections: dict[str, Any]) -> AppConfig:
    size = getattr(args, "size", None)
    if size is not None:
        sections = {**sections, "video": {**sections.get("video", {}), "width_px": size, "height_px": size}}
    return with_overrides(load_config(args.config), generator=_generator_overrides(args), **sections)


def _serve(args: argparse.Namespace) -> int:
    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    config = _config(args, server=server)
    # The CLI is the top of the stack: it alone may reach into signaling.
    from signaling.server import run_server

    _limit_malloc_arenas()
    return run_server(config)


_M_ARENA_MAX = -8  # glibc's mallopt() parameter for the number of arenas
_SERVER_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas for the long-running server, unless MALLOC_ARENA_MAX is set.

    glibc gives threads that allocate at the same time arenas of their own (up to 8 per core) and
    keeps what they free for their own reuse. Sessions come and go on varying threads (aiortc's
    encoders on the default executor, a decoder thread per received track, the engine's worker),
    so each arena's high-water mark rises by chance and the RSS with it although the heap in use
    stays flat (bench/soak.py --concurrency 2 shows it). Later allocations, not memory already
    taken, follow the cap; on a libc other than glibc this does nothing.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, _SERVER_ARENAS)
    except (OSError, AttributeError):  # musl and others: no such library or function
        log.debug("could not cap malloc arenas (not glibc)")


def _render(args: argparse.Namespace) -> int:
    from avatar.render import render_file

    inputs: list[Path] = [Path(p) for p in args.inputs]
    if args.say is not None and args.record is not None:
        raise AvatarError("give --say or --record, not both")
    if args.say is not None or args.record is not None:
        if len(inputs) > 1:
            raise AvatarError("with --say or --record, give at most one input: the portrait")
        portrait, audio = (inputs[0] if inputs else None), None
    else:
        if not 1 <= len(inputs) <= 2:
            raise AvatarError(
                "give an audio file (optionally preceded by a portrait image), --say TEXT or --record SECONDS"
            )
        portrait, audio = (inputs[0], inputs[1]) if len(inputs) == 2 else (None, inputs[0])
    result = render_file(
        _config(args),
        audio_path=audio,
        out_path=args.output,
        portrait_path=portrait,
        landmarks_path=args.landmarks,
        say=args.say,
        record_s=args.record,
        progress=not args.no_progress,
    )
    log.info("wrote %s: %d frames, %.2f s", result.out_path, result.frames, result.duration_s)
    print(result.out_path)
    return 0


def _camera(args: argparse.Namespace) -> int:
    from avatar.camera import list_devices, run_camera

    if args.list_devices:
        for line in list_devices():
            print(line)
        return 0
    camera: dict[str, Any] = {}
    for flag, key in (("input", "input"), ("output", "output"), ("camera", "device")):
        if getattr(args, flag) is not None:
            camera[key] = getattr(args, flag)
    return run_camera(_config(args, camera=camera), portrait_path=args.portrait, landmarks_path=args.landmarks)


def _train(args: argparse.Namespace) -> int:
    from avatar.train.loop import train

    train_overrides = {"steps": args.steps} if args.steps is not None else {}
    config = _config(args, train=train_overrides)
    last_checkpoint = train(config, args.data_dir, args.output, progress=not args.no_progress)
    print(last_checkpoint)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from avatar.train.evaluate import evaluate

    metrics = evaluate(_config(args), args.checkpoint, args.data_dir)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _train_visemes(args: argparse.Namespace) -> int:
    import torch

    from avatar.drive.viseme_model import WEIGHTS_PATH
    from avatar.drive.viseme_training import train_visemes

    torch.set_num_threads(1)  # the same weights on every machine (and no spinning threads)
    output = args.output or WEIGHTS_PATH
    metrics = train_visemes(output, utterances=args.utterances, seed=args.seed, epochs=args.epochs, progress=print)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    """One JSON object per file, in order; a file that cannot be read gets {"file", "error"} and
    makes the exit status 2, after the other files were still checked."""
    from avatar.disclosure.credentials import default_credentials_dir, local_root_path
    from avatar.disclosure.verify import DEFAULT_MAX_FRAMES, verify_file

    if args.trust is not None and args.trust_local:
        raise AvatarError("give --trust or --trust-local, not both")
    anchors = local_root_path(default_credentials_dir()) if args.trust_local else args.trust
    if anchors is not None and not anchors.is_file():
        raise AvatarError(f"trust anchors {anchors}: no such file")
    max_frames = args.max_frames or DEFAULT_MAX_FRAMES
    if max_frames < 1:
        raise AvatarError("--max-frames must be at least 1")
    status = 0
    for path in args.files:
        try:
            report = verify_file(path, max_frames=max_frames, trust_anchors=anchors)
        except AvatarError as exc:
            report, status = {"file": str(path), "error": str(exc)}, 2
            print(f"avatar verify: error: {exc}", file=sys.stderr)
        print(json.dumps(report), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    handlers = {
        "serve": _serve, "render": _render, "camera": _camera, "train": _train, "eval": _eval, "verify": _verify,
        "train-visemes": _train_visemes,
    }
    try:
        return handlers[args.command](args)
    except AvatarError as exc:
        print(f"avatar {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
