"""``mnist-server``: validate settings, resolve the model version once, then serve under Granian."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mnist_server.repository import RepositoryError, resolve
from mnist_server.serving import LOG_FORMAT
from mnist_server.settings import VARIABLES, Settings, SettingsError, format_default, unknown_variables

log = logging.getLogger("mnist_server")

EXIT_CONFIG_ERROR = 2

DESCRIPTION = """\
Serve an MNIST model from a model repository over HTTP: the tutorial's POST /predict, the Open
Inference Protocol v2 (/v2/...), TensorFlow Serving's REST API (/v1/models/...), /healthz,
/readyz and /metrics. Settings come from MNIST_SERVER_* environment variables; a flag
overrides its variable. `mnist-server fetch --help`: fetch a model version from storage."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-server",
        description=DESCRIPTION,
        epilog="Environment variables (default):\n"
        + "\n".join(f"  {var.env_name:<34} {format_default(var.default)}" for var in VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for var in VARIABLES:
        parser.add_argument(
            var.flag,
            metavar=var.field.upper(),
            help=f"{var.help} (env {var.env_name}; default: {format_default(var.default)})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fetch"]:  # the init container that fetches a model from storage
        from mnist_server.fetch import main as fetch

        return fetch(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for var in VARIABLES:
        value = getattr(args, var.field)
        if value is None:
            continue
        try:
            var.parse(value)
        except ValueError as exc:
            parser.error(f"{var.flag} {value!r}: {exc}")
        env[var.env_name] = value
    try:
        settings = Settings.from_env(env)
        model_version = resolve(settings.model_root, settings.model_name, settings.model_version)
        source = model_version.source()
    except (SettingsError, RepositoryError) as exc:
        print(f"mnist-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=LOG_FORMAT,
    )
    for name in unknown_variables(env):
        log.warning("ignoring unknown setting %s (a typo?)", name)
    log.info(
        "serving model %s version %s from %s on %s:%d with %d worker(s) x %d thread(s)",
        model_version.name,
        model_version.version,
        model_version.path,
        settings.host,
        settings.port,
        settings.workers,
        settings.threads,
    )
    if source is not None:
        log.info("the version was fetched from %s storage, archive sha256 %s", source.kind, source.sha256)
    from mnist_server.serving import serve

    serve(settings, model_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
