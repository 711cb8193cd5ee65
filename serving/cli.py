"""`vispipe serve`: TF Serving's command line and vispipe's, one table of flag -> config key.

TF Serving's flags work as in `tensorflow_model_server` (`--port` is the gRPC port,
`--rest_api_port` the REST port, `--model_name`, `--model_base_path`,
`--model_config_file`, ...), so a Deployment or `docker run` written for TF Serving
only swaps the image. Every flag is accepted with `_` or `-` between words.
Settings come, in order, from the config classes' defaults, `--config FILE`
(YAML), the flags, and `--set key=value` (dotted ServerConfig keys).

```
vispipe serve --port=8500 --rest_api_port=8501 --model_name=mnist --model_base_path=/models/mnist
vispipe serve --model_config_file=models.config --model_config_file_poll_wait_seconds=60
vispipe serve --config serve.yaml --set batching.max_batch_size=32 --auth-token "$TOKEN"
```
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

from vispipe import __version__
from vispipe.serving.config import ServerConfig, load_server_config
from vispipe.serving.models_config import VersionPolicy
from vispipe.serving.tf_serving_files import read_batching_parameters, read_monitoring_config

__all__ = ["FLAGS", "add_serve_parser", "config_from_args", "main"]

_REMOVAL = "it will be removed in the next release"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _label(text: str) -> tuple[str, int]:
    label, sep, version = text.partition("=")
    if not sep or not (version.isascii() and version.isdigit()):
        raise argparse.ArgumentTypeError(f"expected LABEL=VERSION such as stable=1, got {text!r}")
    return label, int(version)


def _port(value: int) -> int | None:
    return value or None  # TF Serving: 0 disables that API


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag and the ServerConfig key it sets.

    Args:
        name: the flag, in TF Serving's spelling where TF Serving has it.
        key: the dotted ServerConfig key.
        type: parses the text.
        help: what it does.
        convert: flag value -> config value.
        boolean: a switch that also takes `=true` / `=false`.
    """

    name: str
    key: str
    type: Callable[[str], Any]
    help: str
    convert: Callable[[Any], Any] = lambda value: value
    boolean: bool = False
    show_default: bool = True


FLAGS = [
    Flag("--port", "grpc_port", int, "gRPC port, as TF Serving's --port; 0: no gRPC", _port),
    Flag("--rest_api_port", "rest_port", int, "REST port; 0: no REST", _port),
    Flag("--host", "host", str, "interface to bind; $VISPIPE_SERVE_HOST if set"),
    Flag("--file_system_poll_wait_seconds", "poll_interval_s", float, "seconds between version scans (0: once)"),
    Flag("--model_config_file_poll_wait_seconds", "model_config_poll_s", float,
         "seconds between re-reads of --model_config_file (0: read once)"),
    Flag("--allow_version_labels_for_unavailable_models", "allow_version_labels_for_unavailable_models", _bool,
         "let a reloaded config point a new label at a version not loaded yet", boolean=True),
    Flag("--enable_batching", "batching.enabled", _bool, "batch concurrent requests", boolean=True),
    Flag("--max_batch_size", "batching.max_batch_size", int, "most rows in one batch"),
    Flag("--batch_timeout_ms", "batching.batch_timeout_ms", float, "wait for a batch to fill"),
    Flag("--max_queued", "batching.max_queued", int, "most rows waiting per model version"),
    Flag("--num_batch_threads", "batching.num_batch_threads", int, "batches of a signature run at once"),
    Flag("--max_body_bytes", "limits.max_body_bytes", int, "largest request body or gRPC message"),
    Flag("--max_instances", "limits.max_instances", int, "most rows or examples in one request"),
    Flag("--max_image_pixels", "limits.max_image_pixels", int,
         "most pixels the images of one request may decode to, read from their headers"),
    Flag("--max_tensor_elements", "limits.max_tensor_elements", int,
         "most elements the input tensors of one request may declare"),
    Flag("--request_timeout", "limits.request_timeout_s", float, "seconds a request may wait"),
    Flag("--rest_api_timeout_in_ms", "limits.request_timeout_s", int, "TF Serving's request timeout, in ms",
         lambda ms: ms / 1000.0, show_default=False),
    Flag("--auth_token", "auth_token", str, "bearer token required on all but /healthz; $VISPIPE_SERVE_AUTH_TOKEN if set"),
    Flag("--rest_api_enable_cors_support", "cors_origins", _bool, "TF Serving's CORS switch: any origin",
         lambda on: ["*"] if on else [], boolean=True, show_default=False),
    Flag("--enable_model_warmup", "warmup", _bool, "replay warm-up requests when a version loads",
         boolean=True),
    Flag("--drain_timeout", "drain_timeout_s", float, "seconds shutdown waits for in-flight requests"),
]
# Flags of older vispipe releases: they still work, with a message naming the new spelling.
_DEPRECATED = {
    "--grpc-port": "--port (TF Serving's gRPC port flag; -1 there is 0 here)",
    "--poll-interval": "--file_system_poll_wait_seconds",
    "--no-batching": "--enable_batching=false",
    "--no-warmup": "--enable_model_warmup=false",
}
# TF Serving flags for its own runtime: accepted, so its command lines run, but without effect.
_NO_EFFECT = (
    "--rest_api_num_threads", "--grpc_max_threads", "--grpc_channel_arguments", "--num_load_threads",
    "--num_unload_threads", "--max_num_load_retries", "--load_retry_interval_micros", "--flush_filesystem_caches",
    "--tensorflow_session_parallelism", "--tensorflow_intra_op_parallelism", "--tensorflow_inter_op_parallelism",
    "--per_process_gpu_memory_fraction", "--saved_model_tags", "--enable_signature_method_name_check",
    "--xla_cpu_compilation_enabled", "--enable_profiler",
)


def _default(key: str) -> Any:
    """The default of a dotted ServerConfig key, read from the config classes."""
    value: Any = ServerConfig
    for part in key.split("."):
        field = {f.name: f for f in dataclasses.fields(value)}[part]
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return value


def _spellings(name: str) -> list[str]:
    underscored = "--" + name[2:].replace("-", "_")
    dashed = "--" + name[2:].replace("_", "-")
    return [name] + [s for s in (underscored, dashed) if s != name]


class _Spelled(argparse.Action):
    """Stores the value and which spelling was used (TF Serving's `_` or vispipe's `-`)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_spelling", option_string)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models (TF Serving's flags; --model_config_file wins over the others)")
    group.add_argument(*_spellings("--model_base_path"), dest="model_base_path", action=_Spelled,
                       help="folder of version folders (<version>/saved_model.pb; 00000123 is version 123)")
    group.add_argument(*_spellings("--model_name"), dest="model_name",
                       help="model name in URLs (default: 'default' with --model_base_path, "
                            "the folder name with --model-base-path)")
    group.add_argument(*_spellings("--model_config_file"), dest="model_config_file",
                       help="TF Serving models.config (model_config_list text proto)")
    group.add_argument(*_spellings("--version_policy"), dest="version_policy",
                       help="latest[:N] | all | specific:V1,V2")
    group.add_argument(*_spellings("--version_label"), dest="version_label", action="append", type=_label,
                       default=[], metavar="LABEL=VERSION", help="version label, e.g. stable=1 (repeatable)")
    group.add_argument(*_spellings("--batching_parameters_file"), dest="batching_parameters_file",
                       help="TF Serving BatchingParameters text proto (needs batching on)")
    group.add_argument(*_spellings("--monitoring_config_file"), dest="monitoring_config_file",
                       help="TF Serving MonitoringConfig text proto: also serve metrics at its prometheus path")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    settings = parser.add_argument_group("settings (each sets the ServerConfig key shown)")
    for flag in FLAGS:
        extra = {"nargs": "?", "const": True} if flag.boolean else {}
        settings.add_argument(*_spellings(flag.name), dest=flag.name[2:], type=flag.type, default=None,
                              help=f"{flag.help}{f' (default {_default(flag.key)!r})' if flag.show_default else ''} "
                                   f"[{flag.key}]", **extra)
    settings.add_argument("--cors-origin", "--cors_origin", dest="cors_origin", action="append", default=None,
                          help="allowed CORS origin, repeatable [cors_origins]")
    parser.add_argument("--config", help="YAML file of ServerConfig keys (models, rest_port, batching, limits, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted ServerConfig key, e.g. batching.max_batch_size=32 (repeatable)")
    parser.add_argument("--version", action="version", version=f"vispipe serve {__version__} (TF Serving 2.19 APIs)")
    old = parser.add_argument_group("deprecated spellings (still work, with a message)")
    old.add_argument("--grpc-port", dest="old_grpc_port", type=int, help=argparse.SUPPRESS)
    old.add_argument("--poll-interval", dest="old_poll_interval", type=float, help=argparse.SUPPRESS)
    old.add_argument("--no-batching", dest="old_no_batching", action="store_true", help=argparse.SUPPRESS)
    old.add_argument("--no-warmup", dest="old_no_warmup", action="store_true", help=argparse.SUPPRESS)
    for name in _NO_EFFECT:
        parser.add_argument(name, dest=f"noop_{name[2:]}", help=argparse.SUPPRESS)


def _warn(message: str) -> None:
    print(f"serve: warning: {message}", file=sys.stderr)


def _models(args: argparse.Namespace) -> dict[str, Any]:
    """The `models` / `model_config_file` keys the model flags give (none if they give none)."""
    if args.model_config_file:
        if args.version_policy or args.version_label:
            raise ValueError("--version-policy and --version-label go with --model_base_path; put them in the models.config")
        if args.model_base_path or args.model_name:
            _warn("--model_name and --model_base_path are ignored with --model_config_file (as in TF Serving)")
        return {"model_config_file": args.model_config_file, "models": []}
    if not args.model_base_path:
        if args.model_name or args.version_policy or args.version_label:
            raise ValueError("--model_name, --version-policy and --version-label need --model_base_path")
        return {}
    name = args.model_name
    if name is None:
        tf_spelling = getattr(args, "model_base_path_spelling", "") == "--model_base_path"
        name = "default" if tf_spelling else os.path.basename(os.path.normpath(os.path.abspath(args.model_base_path)))
    policy = VersionPolicy.parse(args.version_policy or "latest")
    model = {"name": name, "base_path": args.model_base_path, "version_policy": dataclasses.asdict(policy),
             "version_labels": dict(args.version_label)}
    return {"models": [model], "model_config_file": None}


def _ports(args: argparse.Namespace, values: dict[str, Any]) -> None:
    """Resolves `--port` (gRPC, as in TF Serving) against the old vispipe spelling (`--port` = REST)."""
    if args.old_grpc_port is not None:
        _warn(f"--grpc-port is deprecated; use --port (TF Serving's gRPC port flag); {_REMOVAL}")
        if args.port is not None:
            _warn(f"--port together with --grpc-port is read the old way, as the REST port; "
                  f"write --rest_api_port={args.port} --port={args.old_grpc_port}; {_REMOVAL}")
            values["rest_port"] = _port(args.port)
        values["grpc_port"] = None if args.old_grpc_port < 0 else args.old_grpc_port
    elif args.port is not None and args.rest_api_port is None:
        print(f"serve: note: --port={args.port} is the gRPC port, as in TF Serving; REST listens on "
              "--rest_api_port (default 8501). Before vispipe 0.2, --port was the REST port.", file=sys.stderr)


def _deprecated_values(args: argparse.Namespace, values: dict[str, Any]) -> None:
    old = (("old_poll_interval", "--poll-interval", "poll_interval_s"),
           ("old_no_batching", "--no-batching", "batching.enabled"),
           ("old_no_warmup", "--no-warmup", "warmup"))
    for dest, flag, key in old:
        value = getattr(args, dest)
        if value not in (None, False):
            _warn(f"{flag} is deprecated; use {_DEPRECATED[flag]}; {_REMOVAL}")
            values[key] = value if dest == "old_poll_interval" else False
    for name in _NO_EFFECT:
        if getattr(args, f"noop_{name[2:]}") is not None:
            print(f"serve: note: {name} (a TF Serving runtime setting) has no effect in vispipe serve", file=sys.stderr)


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted key -> value for every flag given on the command line (and the VISPIPE_SERVE_* defaults)."""
    values: dict[str, Any] = {}
    for flag in FLAGS:
        value = getattr(args, flag.name[2:])
        if value is not None:
            values[flag.key] = flag.convert(value)
    if args.cors_origin:
        values["cors_origins"] = values.get("cors_origins", []) + args.cors_origin
    for key, variable in (("host", "VISPIPE_SERVE_HOST"), ("auth_token", "VISPIPE_SERVE_AUTH_TOKEN")):
        if key not in values and os.environ.get(variable):
            values[key] = os.environ[variable]
    _ports(args, values)
    _deprecated_values(args, values)
    return values


def _tf_serving_files(args: argparse.Namespace, values: dict[str, Any]) -> dict[str, Any]:
    """Keys from --batching_parameters_file and --monitoring_config_file (flags given explicitly win)."""
    keys: dict[str, Any] = {}
    if args.batching_parameters_file:
        if values.get("batching.enabled") is False:
            raise ValueError("--batching_parameters_file is set without setting --enable_batching to true")
        batching = dataclasses.asdict(read_batching_parameters(args.batching_parameters_file))
        keys.update({f"batching.{k}": v for k, v in batching.items()})
    if args.monitoring_config_file:
        keys["prometheus_path"] = read_monitoring_config(args.monitoring_config_file)
    return keys


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Turns parsed `serve` flags into a ServerConfig (raises ValueError naming the bad value).

    Example:
    >>> config_from_args(parser.parse_args(["serve", "--model_base_path=/models/lenet"]))  # doctest: +SKIP
    """
    values = _flag_values(args)
    base = {**_models(args), **_tf_serving_files(args, values), **values}
    if args.config is None and "models" not in base:
        raise ValueError("no models: expected --model_base_path, --model_config_file or --config FILE")
    return load_server_config(args.config, args.overrides, base)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `vispipe --help` (which registers this verb) does not import TensorFlow.
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
    parser = subparsers.add_parser(
        "serve", help="serve SavedModels over TF Serving's REST and gRPC APIs (TF Serving's flags work)"
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m vispipe.serving` entry point: `vispipe serve`'s flags, or TF Serving's."""
    parser = argparse.ArgumentParser(prog="python -m vispipe.serving", description="vispipe model server")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
