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

Image entries are prefixes: ``registry/team/trainer`` allows that repository at any tag or digest
(``...trainer``, ``...trainer:0.1.0``, ``...trainer@sha256:...``, not ``...trainer-evil``); an entry that ends
in ``/`` allows every repository under it. No entries: any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorasweep_operator.spec import DEFAULT_COMMAND, LoraSweepSpec, SpecError

DEFAULT_TRAINER_IMAGE = "ghcr.io/lorasweep/lorasweep-trainer"


class PolicyError(SpecError):
    """A sweep asks for more than the operator's policy allows; the message says what and who can change it."""


@dataclass(frozen=True)
class JobPolicy:
    allowed_images: tuple[str, ...] = (DEFAULT_TRAINER_IMAGE,)
    allow_command_override: bool = False
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()


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
    return found


def check(spec: LoraSweepSpec, policy: JobPolicy) -> None:
    """`PolicyError` listing every violation, with what to do about it."""
    found = violations(spec, policy)
    if found:
        raise PolicyError(
            "the operator does not run Jobs outside its policy: "
            + "; ".join(found)
            + ". Change the sweep, or ask a cluster admin to widen the chart's policy values"
        )
