"""Command line: ``forecaster`` (also ``python -m forecaster``).

Heavy modules (TensorFlow, OpenCV) are imported inside the commands that need them, so
``--help``, ``check-config`` and ``watch`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from forecaster import __version__
from forecaster.errors import ForecasterError, UsageError, name_some
from forecaster.model import (
    ARCH_NAMES,
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LOSS,
    DEFAULT_PATIENCE,
    LOSS_NAMES,
    TRAINING_MODES,
)

if TYPE_CHECKING:
    from forecaster.config import Config
    from forecaster.model.distributed import Distribution


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    from forecaster.sources.preprocess import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from forecaster.config import find_config, with_source
    from forecaster.daemon.supervisor import run
    from forecaster.logs import setup_logging

    config, origin = find_config(args.config)
    if args.source is not None:
        config = with_source(config, args.source)
    setup_logging(config.log_level)
    import logging

    logging.getLogger("forecaster").info(
        "forecaster %s starting; config: %s; cameras: %s",
        __version__,
        origin,
        name_some([f"{c.id}={c.source}" for c in config.cameras]),
    )
    return run(config, max_frames=args.max_frames)


def cmd_check_config(args: argparse.Namespace) -> int:
    from forecaster.config import load_config
    from forecaster.daemon.preflight import check_sources, resolve_model_path
    from forecaster.recording.recording_dir import check_events_dir

    config = load_config(args.path)
    check_sources(config)
    model = resolve_model_path(config)
    # an empty recording.dir depends on where run runs (systemd's STATE_DIRECTORY)
    if config.recording.enabled and config.recording.dir:
        check_events_dir(config)
    cameras = name_some([f"{c.id}={c.source}" for c in config.cameras])
    print(f"{args.path}: ok ({len(config.cameras)} camera(s): {cameras}; model {model})")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from forecaster.relay.watch import watch

    return watch(args.endpoint, args.camera, seconds=args.seconds)


def cmd_train(args: argparse.Namespace) -> int:
    from forecaster.backend import require_tensorflow
    from forecaster.logs import setup_logging

    require_tensorflow("forecaster train")
    setup_logging("info")
    if args.distributed:
        from forecaster.model.distributed import announce_cluster
        from forecaster.model.peers import run_stoppable, stop_signals

        with stop_signals() as received:
            # TF_CONFIG checked, and the other workers waited for, before TensorFlow loads
            task = announce_cluster(peer_timeout_s=args.peer_timeout, received=received)
            if task is not None:  # TensorFlow's wait holds the interpreter: train in a child
                return run_stoppable(lambda: _train(args), f"during distributed training "
                                     f"({task.task_type} {task.task_index})", received)
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    from forecaster.logs import import_tensorflow_quietly

    distribution: list[Distribution] = []
    if args.distributed:

        def start(_: object) -> None:  # before TensorFlow's runtime starts, quietly
            from forecaster.model.distributed import make_distribution

            distribution.append(make_distribution())

        import_tensorflow_quietly(start)
    else:
        import_tensorflow_quietly()
    from forecaster.offline.train import TrainSettings, train_command

    settings = TrainSettings(
        arch=args.arch,
        mode=args.mode,
        epochs=args.epochs,
        max_frames=args.max_frames,
        record_minutes=args.minutes,
        size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
        clip=args.clip,
        stride=args.stride,
        loss=args.loss,
        learning_rate=args.learning_rate,
        patience=args.patience,
        checkpoint_dir=args.checkpoint_dir,
        tensorboard=args.tensorboard,
        resume=args.resume,
        distributed=args.distributed,
    )
    if not args.distributed and os.environ.get("TF_CONFIG"):
        logging.getLogger("forecaster.train").warning(
            "TF_CONFIG is set but --distributed is not given: training on this machine alone")
    out = train_command(args.data, args.out, settings, *distribution)
    if out is None:
        print("this worker's part is done; the chief writes the model")
        return 0
    from forecaster.model.artifact import read_card
    from forecaster.offline.train import error_ratio

    ratio = error_ratio(read_card(out).calibration)
    print(f"model written to {out} (its error: {ratio:.2f}x that of repeating the last frame)")
    return 0


def _load_config_arg(path: str | None) -> Config:
    from forecaster.config import Config, load_config

    return load_config(path) if path is not None else Config()


def cmd_replay(args: argparse.Namespace) -> int:
    from forecaster.logs import setup_logging
    from forecaster.offline.replay import replay_command

    config = _load_config_arg(args.config)
    setup_logging(config.log_level)
    summary = replay_command(
        args.sources,
        out=args.out,
        labels=args.labels,
        model=args.model,
        config=config if args.config is not None else None,
        publish=args.publish or args.endpoint is not None,
        endpoint=args.endpoint,
        realtime=args.realtime,
        preview=args.preview,
        fps=args.fps,
        chunk=args.chunk,
        force=args.force,
        clips=args.clips,
    )
    for video in summary["videos"]:
        auc = "" if video["auc"] is None else f", AUC {video['auc']:.3f}"
        print(f"{video['camera']}: {video['frames']} frames, {video['frames_scored']} scored, "
              f"{video['fps']} frames/s, {len(video['events'])} event(s){auc}")
    total = summary["total"]
    auc = "" if total["auc"] is None else f", AUC {total['auc']:.3f}"
    for key, name in (("auc_model_term", "the model's term alone"), ("auc_cue", "the cue term alone")):
        if total.get(key) is not None:
            auc += f", {name} {total[key]:.3f}"
    print(f"total: {total['frames']} frames, {total['frames_scored']} scored, "
          f"{total['fps']} frames/s, {total['events']} event(s){auc}")
    print(f"wrote {summary['out']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from forecaster.logs import setup_logging
    from forecaster.offline.evaluate import evaluate_command

    config = _load_config_arg(args.config)
    setup_logging(config.log_level)
    evaluate_command(
        args.data,
        labels=args.labels,
        model=args.model,
        out=args.out,
        config=config if args.config is not None else None,
        chunk=args.chunk,
        force=args.force,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from forecaster.backend import require_tensorflow
    from forecaster.logs import import_tensorflow_quietly
    from forecaster.offline.outputs import check_writable_file

    require_tensorflow("forecaster bench")
    if args.out:
        check_writable_file(Path(args.out), "benchmark report (--out)")
    import_tensorflow_quietly()
    from forecaster.bench.suite import format_report, run_bench

    video = Path(args.video) if args.video else None
    if video is not None and not video.exists():
        from forecaster.errors import SourceError

        raise SourceError(f"benchmark video not found: {video}")
    if args.rtsp and not (video and args.cameras):
        raise UsageError("--rtsp needs --cameras N and --video FILE")
    camera_model = Path(args.camera_model) if args.camera_model else None
    if camera_model is not None:
        if not (video and args.cameras):
            raise UsageError("--camera-model needs --cameras N and --video FILE")
        if not camera_model.is_file():
            raise UsageError(f"--camera-model: model file not found: {camera_model}")
        from forecaster.model.artifact import read_card

        read_card(camera_model)  # a file that is no model: one line and exit 2, here
    report = run_bench(
        archs=[] if args.skip_archs else (args.arch or None),
        size=args.size,
        repeats=args.repeats,
        video=video,
        daemon_rates=args.daemon_fps or None,
        daemon_frames=args.daemon_frames,
        daemon_scene=args.daemon_scene,
        cameras=args.cameras or None,
        camera_seconds=args.camera_seconds,
        camera_fps=args.fps,
        capture_nice=args.capture_nice,
        rtsp=args.rtsp,
        cameras_per_process=args.cameras_per_process,
        camera_model=camera_model,
        soak_ticks=args.soak_ticks,
        scorer_mode=args.scorer_mode,
        overload=args.overload,
        web=args.web,
        recording=args.recording,
    )
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from forecaster.keys import generate_keypair

    files = generate_keypair(args.dir, args.name, force=args.force)
    print(f"public key: {files.public} (give it away: to the publisher's "
          f"curve_allowed_clients folder, or to subscribers if this is the publisher's)")
    print(f"secret key: {files.secret} (mode 0600; keep it on this machine)")
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    from forecaster.relay.forwarder import relay_command

    return relay_command(args)


def build_parser() -> argparse.ArgumentParser:
    from forecaster.detection.scorer import SCORER_MODES
    from forecaster.offline.outputs import cache_dir

    cache = cache_dir()  # where default outputs go, named in --help as they are written
    parser = argparse.ArgumentParser(
        prog="forecaster",
        description="Streaming video frame forecaster: predicts every next frame with a "
        "stateful ConvLSTM and publishes predictions and anomaly scores over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"forecaster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="config file (default: ./config.toml, "
                     "/etc/forecaster/config.toml, else built-in defaults)")
    run.add_argument("--source", help="source of a one-camera config, e.g. synthetic:, 0, "
                     "rtsp://..., a video file or an image folder")
    run.add_argument("--max-frames", type=_positive_int, metavar="N",
                     help="stop after N frames per camera")
    run.set_defaults(func=cmd_run)

    watch = sub.add_parser("watch", help="subscribe and show live scores")
    watch.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    watch.add_argument("--camera", help="only this camera")
    watch.add_argument("--seconds", type=_positive_float, metavar="S", help="stop after S seconds")
    watch.set_defaults(func=cmd_watch)

    train = sub.add_parser("train", help="train a model on videos, image folders or data sets")
    train.add_argument("data", nargs="+", help="video files, image folders, data set folders "
                       "or synthetic:?anomaly_rate=0&seed=N")
    train.add_argument("--out", required=True, help="output model file (.keras)")
    train.add_argument("--arch", default=DEFAULT_ARCH,
                       choices=ARCH_NAMES,
                       help=f"model architecture (default: {DEFAULT_ARCH})")
    train.add_argument("--mode", choices=TRAINING_MODES,
                       help="window: shuffled clips; stateful: whole videos side by side in "
                       "consecutive chunks, state carried, reset per group (recurrent archs "
                       "only). Default: stateful for recurrent archs, window for the others")
    train.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                       help=f"at most this many epochs (default {DEFAULT_EPOCHS}; training "
                       "stops earlier when the validation loss stops improving)")
    train.add_argument("--max-frames", type=_positive_int, metavar="N",
                       help="use at most N frames of each video")
    train.add_argument("--minutes", type=_positive_float, metavar="N",
                       help="record N minutes of each camera or stream given as DATA (0, "
                       "/dev/video0, rtsp://..., http://...) and train on that footage, which "
                       "must be normal")

    train.add_argument("--size", type=_size, default=(64, 64), metavar="HxW")
    train.add_argument("--batch-size", type=_positive_int, default=8,
                       help="clips per batch (window), videos side by side (stateful)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--clip", type=_positive_int, metavar="N",
                       help="frames per clip (window mode, per-step archs; default 20) or per "
                       "chunk (stateful; default 10)")
    train.add_argument("--stride", type=_positive_int, metavar="N",
                       help="frames between clip starts in window mode (default: half a clip; "
                       "= the clip length for no overlap)")
    train.add_argument("--loss", choices=LOSS_NAMES,
                       help=f"pixel loss (default {DEFAULT_LOSS}; the VAEs add their KL term)")
    train.add_argument("--learning-rate", type=_positive_float, default=DEFAULT_LEARNING_RATE,
                       help=f"Adam's learning rate (default {DEFAULT_LEARNING_RATE:g})")
    train.add_argument("--patience", type=_positive_int, default=DEFAULT_PATIENCE,
                       help="epochs without a better validation loss before stopping early "
                       f"(default {DEFAULT_PATIENCE})")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="checkpoint after every epoch (default: "
                       f"{cache}/train/<absolute --out path without .keras>.checkpoints)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint: epoch count, optimizer state")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="TensorBoard logs (default: "
                       f"{cache}/train/<absolute --out path without .keras>.logs)")
    train.add_argument("--distributed", action="store_true",
                       help="train with tf.distribute: MultiWorkerMirroredStrategy over the "
                       "machines of TF_CONFIG when it is set (run the same command on each), "
                       "else MirroredStrategy over this machine's GPUs")
    train.add_argument("--peer-timeout", type=_positive_float, default=300.0,
                       metavar="SECONDS",
                       help="with TF_CONFIG: how long to wait for the other workers to "
                       "listen before giving up (default: 300)")
    train.set_defaults(func=cmd_train)

    replay = sub.add_parser(
        "replay", help="run recorded footage through the live pipeline's code, offline")
    replay.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="video files, image folders, data set folders or synthetic: strings")
    replay.add_argument("--out", metavar="DIR",
                        help=f"output folder (default: a new {cache}/replay/<YYYYMMDD-HHMMSS>)")
    replay.add_argument("--force", action="store_true",
                        help="replace the results of an earlier replay in --out (default: refuse)")
    replay.add_argument("--labels", metavar="FILE",
                        help='labels JSON {"<video name>": [0, 1, ...]}, one 0/1 per frame')
    replay.add_argument("--model", metavar="M",
                        help="model file (default: the config's model.path, else the bundled model)")
    replay.add_argument("--config", metavar="PATH",
                        help="config file whose scorer, model and publish settings to use")
    replay.add_argument("--publish", action="store_true",
                        help="also publish every message on the wire protocol")
    replay.add_argument("--endpoint", metavar="E",
                        help="endpoint to publish on (implies --publish; default: the config's "
                        "publish.endpoint)")
    replay.add_argument("--realtime", action="store_true",
                        help="pace frames at the source's nominal rate, one model call per frame")
    replay.add_argument("--fps", type=_positive_float, metavar="F",
                        help="frame rate of sources that state none (image folders), for "
                        "--realtime and the previews (default: 25)")
    replay.add_argument("--preview", action="store_true",
                        help="write an MP4 per video: actual | predicted | error heat map")
    replay.add_argument("--clips", action="store_true",
                        help="record each event as the daemon does (clip, snapshot, sidecar) "
                        "into DIR/events, with the [recording] settings of --config; pre- and "
                        "post-roll in frames at the source's rate (--fps for image folders)")
    replay.add_argument("--chunk", type=_positive_int, default=128, metavar="N",
                        help="frames per model call (default 128; scores do not depend on it)")
    replay.set_defaults(func=cmd_replay)

    evaluate = sub.add_parser("eval", help="frame-level AUC, EER and F1 on a labelled data set")
    evaluate.add_argument("data", nargs="+", metavar="DATA",
                          help="data set folder (folders of images or video files), or videos")
    evaluate.add_argument("--labels", metavar="FILE",
                          help='labels JSON {"<video name>": [0, 1, ...]} (synthetic: scenes '
                          "bring their own)")
    evaluate.add_argument("--model", metavar="M",
                          help="model file (default: the config's model.path, else the bundled "
                          "model)")
    evaluate.add_argument("--out", metavar="DIR",
                          help="output folder for eval.json and plots (default: a new "
                          f"{cache}/eval/<model file name without .keras>-<YYYYMMDD-HHMMSS>)")
    evaluate.add_argument("--force", action="store_true",
                          help="replace the results of an earlier eval in --out (default: refuse)")
    evaluate.add_argument("--config", metavar="PATH", help="config file whose scorer settings to use")
    evaluate.add_argument("--chunk", type=_positive_int, default=128, metavar="N",
                          help="frames per model call (default 128)")
    evaluate.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="speed benchmark: model step vs window, daemon, replay")
    bench.add_argument("--arch", action="append", help="architecture (repeatable; default all)")
    bench.add_argument("--size", type=_size, default=(64, 64), metavar="HxW")
    bench.add_argument("--repeats", type=_positive_int, default=300)
    bench.add_argument("--video", help="video for the replay throughput (e.g. vtest.avi); with "
                       "--cameras, the video each camera plays instead (looped, paced at --fps)")
    bench.add_argument("--daemon-fps", type=_positive_float, action="append", metavar="FPS",
                       help="run the whole daemon on a synthetic source paced at FPS (repeatable)")
    bench.add_argument("--daemon-frames", type=_positive_int, default=2000)
    bench.add_argument("--daemon-scene", default="64x64", choices=("64x64", "160x120"),
                       help="size of the --daemon-fps rows' synthetic scene: rendered at "
                       "64x64 (cheapest), or at its own 160x120, the footage the bundled "
                       "model was calibrated on, whose false alarms the rows then count")
    bench.add_argument("--cameras", type=_positive_int, action="append", metavar="N",
                       help="run N synthetic cameras at 10 fps in one worker (repeatable); "
                       "with --video, N cameras of that video, default scorer, recording on")
    bench.add_argument("--camera-seconds", "--seconds", type=_positive_float, default=30.0,
                       help="seconds measured per --cameras run")
    bench.add_argument("--fps", type=_positive_float, default=10.0,
                       help="frames per second of each camera of --cameras with --video")
    bench.add_argument("--capture-nice", type=int, choices=range(20), metavar="0-19",
                       help="capture.nice of the --cameras runs with --video (default: the "
                       "config's default)")
    bench.add_argument("--rtsp", action="store_true",
                       help="with --cameras and --video: each camera reads the video from an "
                       "RTSP server (GStreamer's) started for the run")
    bench.add_argument("--camera-model", metavar="M",
                       help="with --cameras and --video: the model the cameras run (default: "
                       "the bundled one; say, one trained on the video, as a deployment "
                       "trains on its camera)")
    bench.add_argument("--cameras-per-process", type=_positive_int, metavar="N",
                       help="capture.cameras_per_process of the --cameras runs (default: the "
                       "config's default)")
    bench.add_argument("--soak-ticks", type=_positive_int, metavar="N",
                       help="run the daemon for N frames and report the slope of its resident "
                            "memory (e.g. 100000)")
    bench.add_argument("--scorer-mode", default="auto", choices=SCORER_MODES,
                       help="[scorer] mode of the daemons it runs (default auto: the fused "
                       "mode, whose motion cue each capture process computes; global: none)")
    bench.add_argument("--web", action="store_true",
                       help="the live page's cost to the worker: CPU per tick with no viewer "
                       "and with 3 pages open")
    bench.add_argument("--overload", action="store_true",
                       help="graceful overload: the daemon's capacity, then its scored rate "
                       "with the source at that rate and at twice it")
    bench.add_argument("--skip-archs", action="store_true",
                       help="skip the per-architecture step and window timings")
    bench.add_argument("--recording", action="store_true",
                       help="capture's cost per frame with event recording off, buffering the "
                       "pre-roll, and writing a clip")
    bench.add_argument("--out", help="write the results as JSON here")
    bench.set_defaults(func=cmd_bench)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("keys", help="make a CURVE key pair for the publisher or a subscriber")
    keys.add_argument("dir", metavar="DIR", help="folder to write NAME.key and NAME.key_secret to")
    keys.add_argument("--name", default="server",
                      help="file name of the pair (default: server; e.g. a subscriber's name)")
    keys.add_argument("--force", action="store_true", help="replace existing key files")
    keys.set_defaults(func=cmd_keys)

    relay = sub.add_parser("relay", help="republish several daemons on one endpoint "
                           "(libzmq's XSUB/XPUB proxy)")
    relay.add_argument("--config", metavar="FILE", help="TOML file with a [relay] section "
                       "(the options below override it)")
    relay.add_argument("--upstream", action="append", metavar="E",
                       help="a daemon's publish endpoint, e.g. tcp://edge1:5556 (repeatable)")
    relay.add_argument("--server-key", action="append", metavar="FILE",
                       help="the daemon's public key file for CURVE (one per --upstream, in "
                       "the same order, or one for all)")
    relay.add_argument("--bind", metavar="E", help="endpoint for the relay's subscribers "
                       "(default tcp://127.0.0.1:5560)")
    relay.add_argument("--curve-secret-key", metavar="FILE",
                       help="the relay's own key pair (.key_secret), for CURVE on either side")
    relay.add_argument("--curve-allowed-clients", metavar="DIR",
                       help="public keys of the subscribers allowed to connect (CURVE on --bind)")
    relay.add_argument("--allow-insecure", action="store_true",
                       help="accept unencrypted non-loopback endpoints (a trusted network only)")
    relay.add_argument("--health-interval", metavar="S",
                       help="seconds between relay/<n> health messages (default 5)")
    relay.add_argument("--metrics-port", metavar="PORT", help="serve Prometheus metrics")
    relay.add_argument("--metrics-address", metavar="IP",
                       help="address of the metrics (default 127.0.0.1)")
    relay.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    relay.set_defaults(func=cmd_relay)
    return parser


def quiet_native_logs() -> None:
    """Keep TensorFlow's and FFmpeg's native chatter off stderr (the user may override).

    Spawned children inherit the environment, so this covers every process.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_native_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ForecasterError as error:
        print(f"forecaster: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
