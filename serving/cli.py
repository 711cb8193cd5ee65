"""`vispipe serve`: flags -> ServerConfig -> the running server.

```
vispipe serve --model-base-path models/lenet --port 8501 --grpc-port 8500
vispipe serve --model-config-file models.config --auth-token "$TOKEN" --batch-timeout-ms 2
```
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from vispipe.serving.config import BatchingConfig, LimitsConfig, ModelSpec, ServerConfig, VersionPolicy

__all__ = ["add_serve_parser", "config_from_args", "main"]


def _label(text: str) -> tuple[str, int]:
    label, sep, version = text.partition("=")
    if not sep or not (version.isascii() and version.isdigit()):
        raise argparse.ArgumentTypeError(f"expected LABEL=VERSION such as stable=1, got {text!r}")
    return label, int(version)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--model-base-path", help="folder of numeric version folders (<version>/saved_model.pb)")
    models.add_argument("--model-config-file", help="TF Serving models.config (model_config_list text proto)")
    parser.add_argument("--model-name", help="model name in URLs (default: the base path's folder name)")
    parser.add_argument("--version-policy", default="latest", help="latest[:N] | all | specific:V1,V2 (default latest)")
    parser.add_argument("--version-label", action="append", type=_label, default=[], metavar="LABEL=VERSION",
                        help="version label, e.g. stable=1 (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (default 8500; -1 disables gRPC)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between version scans (0: never)")
    parser.add_argument("--no-batching", action="store_true", help="run every request alone")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--max-queued", type=int, default=2048, help="most rows waiting per model version")
    parser.add_argument("--max-body-bytes", type=int, default=16 << 20)
    parser.add_argument("--max-instances", type=int, default=1024, help="most rows in one request")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds a request may wait")
    parser.add_argument("--auth-token", default=os.environ.get("VISPIPE_SERVE_AUTH_TOKEN"),
                        help="bearer token required on all but /healthz (default $VISPIPE_SERVE_AUTH_TOKEN)")
    parser.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    parser.add_argument("--no-warmup", action="store_true", help="skip warm-up requests on load")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds shutdown waits for requests")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Turns parsed `serve` flags into a ServerConfig (raises ValueError on bad values).

    Example:
    >>> config_from_args(parser.parse_args(["serve", "--model-base-path", "models/lenet"]))  # doctest: +SKIP
    """
    from vispipe.serving.model_store import read_model_config_file

    if args.model_config_file:
        if args.model_name or args.version_label:
            raise ValueError("--model-name and --version-label go with --model-base-path; put them in the models.config")
        models = read_model_config_file(args.model_config_file)
    else:
        name = args.model_name or os.path.basename(os.path.normpath(os.path.abspath(args.model_base_path)))
        models = [
            ModelSpec(
                name=name,
                base_path=args.model_base_path,
                version_policy=VersionPolicy.parse(args.version_policy),
                version_labels=dict(args.version_label),
            )
        ]
    return ServerConfig(
        models=models,
        host=args.host,
        port=args.port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        poll_interval_s=args.poll_interval,
        batching=BatchingConfig(
            enabled=not args.no_batching,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            max_queued=args.max_queued,
        ),
        limits=LimitsConfig(
            max_body_bytes=args.max_body_bytes, max_instances=args.max_instances, request_timeout_s=args.request_timeout
        ),
        auth_token=args.auth_token or None,
        cors_origins=tuple(args.cors_origin),
        warmup=not args.no_warmup,
        drain_timeout_s=args.drain_timeout,
    )


def _run(args: argparse.Namespace) -> int:
    from vispipe.serving.app import serve

    return serve(config_from_args(args))


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers `serve` on an argparse subparsers object; its handler is `args.handler(args) -> int`.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The `serve` parser.

    Example:
    >>> verbs = argparse.ArgumentParser().add_subparsers(dest="verb")
    >>> _ = add_serve_parser(verbs)
    """
    parser = subparsers.add_parser("serve", help="serve SavedModels over TF Serving's REST and gRPC APIs")
    _add_arguments(parser)
    parser.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m vispipe.serving` entry point (the flags of `vispipe serve`)."""
    parser = argparse.ArgumentParser(prog="python -m vispipe.serving", description="vispipe model server")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
