"""`lorasweep operator`: run the LoraSweep controller (kopf underneath).

Serves Prometheus metrics on ``--metrics-port`` (``/metrics``, see `lorasweep_operator.telemetry`) and kopf's
liveness probe on ``--health-port`` (``/healthz``). Credentials: the pod's ServiceAccount in a cluster, else
$KUBECONFIG. Watches the given namespaces (a Role per namespace is enough) or, with --all-namespaces, the
whole cluster (needs the ClusterRole binding).
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from lorasweep_operator.watching import DEFAULT_WATCH_INACTIVITY_TIMEOUT, DEFAULT_WATCH_SERVER_TIMEOUT

if TYPE_CHECKING:
    from lorasweep_operator.policy import JobPolicy

log = logging.getLogger(__name__)
LOG_LEVEL = logging.INFO  # a service: its log is how people see what it does

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_PROGRESS_PORT = 8082


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus /metrics port (0 turns it off)"
    )
    parser.add_argument(
        "--health-port", type=int, default=DEFAULT_HEALTH_PORT, help="liveness endpoint /healthz port (0 turns it off)"
    )
    parser.add_argument(
        "--progress-port",
        type=int,
        default=DEFAULT_PROGRESS_PORT,
        help="port of the progress endpoint (POST /v1/progress) where trainers report each epoch for "
        "spec.earlyStopping (0 turns it off)",
    )
    parser.add_argument(
        "--progress-url",
        default=None,
        help="the progress endpoint's URL as trial pods reach it, e.g. http://lorasweep.lorasweep-system.svc:8082"
        "/v1/progress; without it sweeps with spec.earlyStopping run every trial to the end",
    )
    parser.add_argument(
        "--write-reports",
        action="store_true",
        help="write each finished sweep's report to its storage.output itself (the operator then needs S3 access); "
        "without it, a report Job in the sweep's namespace writes it with the trials' image and storage access",
    )
    watching = parser.add_argument_group("watching", "how the operator's watches of sweeps and Jobs recover")
    watching.add_argument(
        "--watch-inactivity-timeout",
        type=_positive,
        default=DEFAULT_WATCH_INACTIVITY_TIMEOUT,
        metavar="SECONDS",
        help="reopen a watch that delivered nothing (not even a bookmark, sent about once a minute) for this long "
        f"(default {DEFAULT_WATCH_INACTIVITY_TIMEOUT:g}); below 60, quiet watches are reopened that often",
    )
    watching.add_argument(
        "--watch-server-timeout",
        type=_whole_seconds,
        default=DEFAULT_WATCH_SERVER_TIMEOUT,
        metavar="SECONDS",
        help=f"ask the API server to end each watch after this long; it is reopened at once "
        f"(default {DEFAULT_WATCH_SERVER_TIMEOUT})",
    )
    policy = parser.add_argument_group(
        "policy", "what a sweep may put in its Jobs (the chart's policy.* values); a sweep outside it is Invalid"
    )
    policy.add_argument(
        "--allowed-image",
        action="append",
        default=None,
        metavar="PREFIX",
        help="an allowed trainer image repository (any tag or digest), or a prefix ending in '/' (repeatable; "
        "default: the project's trainer image, ghcr.io/lorasweep/lorasweep-trainer; --allowed-image='' alone "
        "allows any image)",
    )
    policy.add_argument(
        "--allow-command-override", action="store_true", help="let spec.command replace the trainer's command"
    )
    policy.add_argument(
        "--allowed-service-account",
        action="append",
        default=[],
        metavar="NAME",
        help="a ServiceAccount spec.serviceAccountName may name (repeatable; default none)",
    )
    policy.add_argument(
        "--allowed-priority-class",
        action="append",
        default=[],
        metavar="NAME",
        help="a PriorityClass spec.priorityClassName may name (repeatable; default none)",
    )
    policy.add_argument(
        "--allowed-env-source",
        action="append",
        default=None,
        choices=("value", "secretKeyRef", "configMapKeyRef", ""),
        help="where a spec.pod.env value may come from (repeatable; default all three; --allowed-env-source='' "
        "alone allows no spec.pod.env)",
    )
    policy.add_argument(
        "--allowed-volume-type",
        action="append",
        default=None,
        choices=("emptyDir", "configMap", "persistentVolumeClaim", ""),
        help="a type of volume spec.pod.volumes may use (repeatable; default all three; --allowed-volume-type='' "
        "alone allows no spec.pod.volumes)",
    )
    policy.add_argument(
        "--allowed-claim",
        action="append",
        default=[],
        metavar="NAME",
        help="a PersistentVolumeClaim spec.pod.volumes may mount (repeatable; default any)",
    )
    policy.add_argument(
        "--allowed-label",
        action="append",
        default=[],
        metavar="KEY",
        help="a pod label key spec.pod.labels may set, or a prefix ending in '/' (repeatable; default none)",
    )
    policy.add_argument(
        "--allowed-annotation",
        action="append",
        default=[],
        metavar="KEY",
        help="a pod annotation key spec.pod.annotations may set, or a prefix ending in '/' (repeatable; default none)",
    )


def _given(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A repeatable flag's values: the default when absent, none for a lone empty value."""
    return default if values is None else tuple(value for value in values if value)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _whole_seconds(text: str) -> int:
    """The API's timeoutSeconds is an integer."""
    value = _positive(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be whole seconds, got {text}")
    return int(value)


def job_policy(args: argparse.Namespace) -> JobPolicy:
    from lorasweep_operator.policy import DEFAULT_TRAINER_IMAGE, ENV_SOURCES, VOLUME_TYPES, JobPolicy

    return JobPolicy(
        allowed_images=_given(args.allowed_image, (DEFAULT_TRAINER_IMAGE,)),
        allow_command_override=bool(args.allow_command_override),
        allowed_service_accounts=tuple(args.allowed_service_account),
        allowed_priority_classes=tuple(args.allowed_priority_class),
        env_sources=_given(args.allowed_env_source, ENV_SOURCES),
        volume_types=_given(args.allowed_volume_type, VOLUME_TYPES),
        allowed_claims=tuple(args.allowed_claim),
        allowed_labels=tuple(args.allowed_label),
        allowed_annotations=tuple(args.allowed_annotation),
    )


def run(args: argparse.Namespace) -> int:
    import kopf

    from lorasweep_operator import handlers, telemetry

    handlers.SETTINGS.write_reports = bool(args.write_reports)
    handlers.SETTINGS.policy = job_policy(args)
    handlers.SETTINGS.watch_inactivity_timeout = float(args.watch_inactivity_timeout)
    handlers.SETTINGS.watch_server_timeout = int(args.watch_server_timeout)
    if args.progress_port and args.progress_url:
        from lorasweep_operator import progress_endpoint

        handlers.SETTINGS.progress_url = args.progress_url
        endpoint = progress_endpoint.ProgressEndpoint(handlers.kube(), handlers.reconcile_progress)
        progress_endpoint.serve(endpoint.handle, args.progress_port)
    clusterwide = bool(args.all_namespaces or not args.namespace)
    if args.metrics_port:
        telemetry.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    policy = handlers.SETTINGS.policy
    log.info(
        "operator starting namespaces=%s metrics_port=%s health_port=%s progress_url=%s allowed_images=%s "
        "command_override=%s service_accounts=%s priority_classes=%s env_sources=%s volume_types=%s claims=%s "
        "labels=%s annotations=%s watch_inactivity_timeout_s=%g watch_server_timeout_s=%g",
        "*" if clusterwide else ",".join(args.namespace),
        args.metrics_port,
        args.health_port,
        handlers.SETTINGS.progress_url,
        ",".join(policy.allowed_images) or "*",
        policy.allow_command_override,
        ",".join(policy.allowed_service_accounts) or "-",
        ",".join(policy.allowed_priority_classes) or "-",
        ",".join(policy.env_sources) or "-",
        ",".join(policy.volume_types) or "-",
        ",".join(policy.allowed_claims) or "*",
        ",".join(policy.allowed_labels) or "-",
        ",".join(policy.allowed_annotations) or "-",
        handlers.SETTINGS.watch_inactivity_timeout,
        handlers.SETTINGS.watch_server_timeout,
    )
    kopf.run(
        standalone=True,
        clusterwide=clusterwide,
        namespaces=[] if clusterwide else list(args.namespace),
        liveness_endpoint=liveness,
    )
    return 0
