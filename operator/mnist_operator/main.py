"""`mnist-operator`: run the MnistModel operator (kopf, standalone) with its metrics server."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from mnist_operator import __doc__ as package_doc
from mnist_operator import api, handlers
from mnist_operator.kube import KubeClient
from mnist_operator.leader import lease_namespace, process_identity
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
    if settings.leader_election and not settings.leader_election_namespace:
        namespace = asyncio.run(lease_namespace(KubeClient()))
        settings = dataclasses.replace(settings, leader_election_namespace=namespace)

    prometheus = CollectorRegistry()
    metrics = Metrics.create(prometheus)
    start_http_server(settings.metrics_port, addr=settings.bind_address, registry=prometheus)

    registry = kopf.OperatorRegistry()
    # Asked once, before kopf starts: which handlers to register depends on it.
    cluster_reads = not settings.namespaces or asyncio.run(handlers.may_read_cluster(KubeClient()))
    identity = operator_identity()
    handlers.register(
        registry, handlers.Operator(settings, metrics, cluster_reads=cluster_reads, identity=identity)
    )
    host = f"[{settings.bind_address}]" if ":" in settings.bind_address else settings.bind_address
    logging.getLogger(__name__).info(
        "%s watching %s; default image %s; metrics on %s:%d; %s",
        identity,
        ", ".join(settings.namespaces) or "all namespaces",
        settings.default_image,
        host,
        settings.metrics_port,
        f"leader election on the Lease {settings.leader_election_namespace}/{api.LEASE_NAME}"
        if settings.leader_election
        else "no leader election",
    )
    kopf.run(
        registry=registry,
        standalone=True,  # no kopf peering objects to write: our Lease elects the leader
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{host}:{settings.health_port}/healthz",
        # A NewType of str that kopf does not export.
        identity=identity,  # type: ignore[arg-type]
    )
    return 0


# Who this operator process is: kopf names it in logs, the Lease names its holder.
operator_identity = process_identity


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
