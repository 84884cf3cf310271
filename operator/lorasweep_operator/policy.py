"""The cluster admin's policy for what the operator puts in a Job on a sweep author's behalf. Pure.

The operator creates trial and report Jobs with its own rights, so a sweep must not be a way around the
author's: the image, the command, the ServiceAccount and the PriorityClass a sweep may choose are limited to
what the admin allowed (the chart's ``policy.*`` values, given to the operator as flags). The same rule runs
in two places, kept equal by tests that send the same cases through both:

- here, when the operator renders a sweep's Jobs: a sweep outside the policy is marked Invalid (for every
  author: the operator cannot know who wrote it);
- in the API server, the ValidatingAdmissionPolicy (charts/lorasweep/templates/admissionpolicy.yaml, the same
  as deploy/admission/policy.yaml): a sweep outside the policy is admitted only from a user who may create
  Jobs in that namespace themselves (who could run it without the operator).

spec.pod (extra env, volumes, labels, annotations of the sweep's pods) is held to the ``policy.pod`` values the
same way: the sources an env value may come from, the volume types, the PersistentVolumeClaims, the label and
annotation keys. An env variable that changes which code the trainer runs (``PYTHONPATH``, ``LD_PRELOAD``,
``PATH``...; `code_env`) counts as a command override. What depends on the author alone is left to the admission
policy: that they may get each Secret and ConfigMap spec.pod names, and, where ``policy.pod.allowedClaims`` is
empty (any claim), that they may create Jobs, so mount the claim, themselves.

Image entries are prefixes: ``registry/team/trainer`` allows that repository at any tag or digest
(``...trainer``, ``...trainer:0.1.0``, ``...trainer@sha256:...``, not ``...trainer-evil``); an entry that ends
in ``/`` allows every repository under it. No entries: any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorasweep_operator.spec import DEFAULT_COMMAND, EnvSource, LoraSweepSpec, SpecError, VolumeType

DEFAULT_TRAINER_IMAGE = "ghcr.io/lorasweep/lorasweep-trainer"
ENV_SOURCES: tuple[EnvSource, ...] = ("value", "secretKeyRef", "configMapKeyRef")
VOLUME_TYPES: tuple[VolumeType, ...] = ("emptyDir", "configMap", "persistentVolumeClaim")
# Variables that make a program load code of the author's choice (from a mounted volume, say): the dynamic
# loader's, the shells' startup files, Python's import path and hooks, OpenSSL's engines, glibc's gconv modules.
# Setting one is replacing the command. The admission policy carries the same three lists (a unit test holds them).
CODE_ENV_NAMES = ("PATH", "BASH_ENV", "ENV", "GCONV_PATH")
CODE_ENV_PREFIXES = ("LD_", "PYTHON", "OPENSSL_")
HARMLESS_ENV_NAMES = (
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONFAULTHANDLER",
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
)


class PolicyError(SpecError):
    """A sweep asks for more than the operator's policy allows; the message says what and who can change it."""


@dataclass(frozen=True)
class JobPolicy:
    allowed_images: tuple[str, ...] = (DEFAULT_TRAINER_IMAGE,)
    allow_command_override: bool = False
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    # spec.pod (the chart's policy.pod values)
    env_sources: tuple[str, ...] = ENV_SOURCES
    volume_types: tuple[str, ...] = VOLUME_TYPES
    allowed_claims: tuple[str, ...] = ()  # empty: any claim (admission asks that the author may create Jobs)
    allowed_labels: tuple[str, ...] = ()
    allowed_annotations: tuple[str, ...] = ()


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """The image is one of `prefixes`' repositories (any tag or digest), or under one that ends in '/'."""
    if not prefixes:
        return True
    return any(
        image == prefix
        or image.startswith((f"{prefix}:", f"{prefix}@"))
        or (prefix.endswith("/") and image.startswith(prefix))
        for prefix in prefixes
    )


def code_env(name: str) -> bool:
    """Whether setting env variable `name` can make the trainer run other code (`CODE_ENV_NAMES`)."""
    return name not in HARMLESS_ENV_NAMES and (name in CODE_ENV_NAMES or name.startswith(CODE_ENV_PREFIXES))


def key_allowed(key: str, allowed: Sequence[str]) -> bool:
    """A label or annotation key listed in `allowed`, or under an entry that ends in '/'."""
    return any(key == entry or (entry.endswith("/") and key.startswith(entry)) for entry in allowed)


def _listed(values: Sequence[str]) -> str:
    return ", ".join(values) or "none"


def pod_violations(spec: LoraSweepSpec, policy: JobPolicy) -> list[str]:
    """What in spec.pod the policy does not allow, one sentence per kind, each starting with the field."""
    pod = spec.pod
    if pod is None:
        return []
    found = []
    for source in ENV_SOURCES:
        names = [item.name for item in pod.env if item.source == source and source not in policy.env_sources]
        if names:
            found.append(
                f"spec.pod.env {', '.join(names)} take their values from {source}, which the policy does not allow "
                f"(allowed: {_listed(policy.env_sources)}; chart value policy.pod.envSources)"
            )
    if not policy.allow_command_override and (names := [item.name for item in pod.env if code_env(item.name)]):
        found.append(
            f"spec.pod.env {', '.join(names)} change which code the trainer runs, as a spec.command would, and the "
            "policy does not allow that (chart value policy.allowCommandOverride)"
        )
    if names := [volume.name for volume in pod.volumes if volume.type not in policy.volume_types]:
        found.append(
            f"spec.pod.volumes {', '.join(names)} are of types the policy does not allow "
            f"(allowed: {_listed(policy.volume_types)}; chart value policy.pod.volumeTypes)"
        )
    if policy.allowed_claims and (claims := [c for c in pod.claim_names() if c not in policy.allowed_claims]):
        found.append(
            f"spec.pod.volumes mount PersistentVolumeClaims {', '.join(claims)}, not among the allowed claims "
            f"({', '.join(policy.allowed_claims)}; chart value policy.pod.allowedClaims)"
        )
    for field, keys, allowed in (
        ("labels", pod.labels, policy.allowed_labels),
        ("annotations", pod.annotations, policy.allowed_annotations),
    ):
        if denied := [key for key in keys if not key_allowed(key, allowed)]:
            found.append(
                f"spec.pod.{field} {', '.join(denied)} are not among the allowed keys "
                f"({_listed(allowed)}; chart value policy.pod.allowed{field.capitalize()})"
            )
    return found


def violations(spec: LoraSweepSpec, policy: JobPolicy) -> list[str]:
    """What in `spec` the policy does not allow, one sentence each naming the field; empty when allowed."""
    found = []
    if not image_allowed(spec.image, policy.allowed_images):
        found.append(
            f"spec.image {spec.image!r} is not among the allowed images "
            f"({', '.join(policy.allowed_images)}; chart value policy.allowedImages)"
        )
    if not policy.allow_command_override and tuple(spec.command) != DEFAULT_COMMAND:
        found.append(
            f"spec.command {spec.command!r} replaces the trainer's command {list(DEFAULT_COMMAND)!r}, "
            "and the policy does not allow that (chart value policy.allowCommandOverride)"
        )
    account = spec.service_account_name
    if account and account not in policy.allowed_service_accounts:
        found.append(
            f"spec.serviceAccountName {account!r} is not among the allowed ServiceAccounts "
            f"({', '.join(policy.allowed_service_accounts) or 'none'}; chart value policy.allowedServiceAccounts)"
        )
    priority = spec.priority_class_name
    if priority and priority not in policy.allowed_priority_classes:
        found.append(
            f"spec.priorityClassName {priority!r} is not among the allowed PriorityClasses "
            f"({', '.join(policy.allowed_priority_classes) or 'none'}; chart value policy.allowedPriorityClasses)"
        )
    return found + pod_violations(spec, policy)


def check(spec: LoraSweepSpec, policy: JobPolicy) -> None:
    """`PolicyError` listing every violation, with what to do about it."""
    found = violations(spec, policy)
    if found:
        raise PolicyError(
            "the operator does not run Jobs outside its policy: "
            + "; ".join(found)
            + ". Change the sweep, or ask a cluster admin to widen the chart's policy values"
        )
