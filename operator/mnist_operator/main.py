"""`mnist-operator`: run the MnistModel operator (kopf, standalone) with its metrics server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from mnist_operator import __doc__ as package_doc
from mnist_operator import handlers
from mnist_operator.metrics import Metrics
from mnist_operator.settings import PREFIX, OperatorSettings, SettingsError

ENV_HELP = f"""environment:
  {PREFIX}IMAGE                  default model-server image (when a MnistModel sets no spec.image)
  {PREFIX}DRAIN_SECONDS          a model pod keeps serving this long after it is told to stop, while
                                 Services stop routing to it (a preStop pause; default 5, 0: none)
  {PREFIX}NAMESPACES             comma-separated namespaces to watch (empty: the whole cluster)
  {PREFIX}LOG_FORMAT             plain | json
  {PREFIX}LOG_LEVEL              debug | info | warning | error
  {PREFIX}BIND_ADDRESS           address of the health and metrics servers (default 0.0.0.0)
  {PREFIX}HEALTH_PORT            liveness endpoint /healthz (default 8081)
  {PREFIX}METRICS_PORT           Prometheus /metrics (default 8080)
  {PREFIX}WORKERS                concurrent reconciles (default 16)
  {PREFIX}RESYNC_SECONDS         reconcile every model this often even without events (default 600)
  {PREFIX}DISCOVERY_TTL_SECONDS  re-check the Route/ServiceMonitor APIs this often (default 30)
  {PREFIX}QUEUE_STALL_SECONDS    /healthz fails when models have waited this long and no reconcile
                                 has finished meanwhile (default 300)
"""


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
        epilog=ENV_HELP,
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
    handlers.register(registry, handlers.Operator(settings, metrics))
    kopf_settings = kopf.OperatorSettings()
    handlers.configure_kopf(kopf_settings)
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
        settings=kopf_settings,
        standalone=True,  # one replica, no peering objects to write
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{host}:{settings.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
