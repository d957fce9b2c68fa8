"""`mnist-operator`: run the MnistModel operator (kopf, standalone) with its metrics server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from mnist_operator import __doc__ as package_doc
from mnist_operator import handlers
from mnist_operator.kube import KubeClient
from mnist_operator.metrics import Metrics
from mnist_operator.settings import OperatorSettings, SettingsError, describe_variables


def configure_logging(settings: OperatorSettings) -> None:
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=settings.log_level == "debug", log_format=log_format)
    logging.getLogger().setLevel(settings.log_level.upper())
    # kopf says "Handler ... succeeded" for every watch event; our own log lines say what happened.
    if settings.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every liveness probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mnist-operator",
        description=package_doc,
        epilog="environment:\n" + describe_variables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        settings = OperatorSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"mnist-operator: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)

    prometheus = CollectorRegistry()
    metrics = Metrics.create(prometheus)
    start_http_server(settings.metrics_port, addr=settings.bind_address, registry=prometheus)

    registry = kopf.OperatorRegistry()
    # Asked once, before kopf starts: which handlers to register depends on it.
    cluster_reads = not settings.namespaces or asyncio.run(handlers.may_read_cluster(KubeClient()))
    handlers.register(registry, handlers.Operator(settings, metrics, cluster_reads=cluster_reads))
    host = f"[{settings.bind_address}]" if ":" in settings.bind_address else settings.bind_address
    logging.getLogger(__name__).info(
        "watching %s; default image %s; metrics on %s:%d",
        ", ".join(settings.namespaces) or "all namespaces",
        settings.default_image,
        host,
        settings.metrics_port,
    )
    kopf.run(
        registry=registry,
        standalone=True,  # one replica, no peering objects to write
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{host}:{settings.health_port}/healthz",
        # A NewType of str that kopf does not export.
        identity=operator_identity(),  # type: ignore[arg-type]
    )
    return 0


def operator_identity() -> str:
    """Who this operator process is (kopf names it in logs and peering objects).

    kopf's default asks getpass.getuser(), which raises for a UID with no passwd entry: the
    image's own non-root user, and OpenShift's arbitrary UIDs, crashed the operator at start-up.
    """
    return f"{socket.gethostname()}@{os.getpid()}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
