"""The batch inference spec's rules and defaults, shared by the gateway (job intake), the
inference service (ValidateBatchSpec) and the batch worker (before running). Torch-free.

These are the checks that need no deployment or object store: which source and which input
are named, that every key stays in the tenant's area, where results go, and the contract's
field rules (options ranges, extension patterns). Whether the deployment exists and the
inputs hold images is the inference service's part.
"""

from __future__ import annotations

import re

from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import FieldViolation, InvalidArgument, validate_message
from visionmesh.common.tenancy import tenant_key

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_IMAGE_EXTENSIONS",
    "DEPLOYMENT_NAME_PATTERN",
    "RESOLVED_EXPORT_SCOPE",
    "check_batch_spec",
    "default_output_prefix",
]

DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_BATCH_SIZE = 16
DEPLOYMENT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
"""LoadModelRequest.name's rule: a name that does not match cannot name a deployment."""
RESOLVED_EXPORT_SCOPE = "gateway:resolved-export"
"""Scope of a gateway-minted delegated token whose call carries an export the gateway
resolved within the caller's tenant (LoadModelRequest.export, BatchInferenceSpec.export).
The inference service accepts a given export only with it; user-issued tokens never carry
"gateway:" scopes."""


def default_output_prefix(job_id: str) -> str:
    """Where a job writes its results when its spec names no output_prefix."""
    return f"batch-inference/{job_id}/"


def _key_violations(
    tenant_id: str, key: str, *, field: str, prefix: bool
) -> tuple[str, list[FieldViolation]]:
    """The key normalised (a prefix ends in "/"), or the reasons it leaves the tenant's area."""
    try:
        tenant_key(tenant_id, key, field=field, prefix=prefix)
    except InvalidArgument as error:
        return key, list(error.field_violations)
    return (key if key.endswith("/") or not prefix else key + "/"), []


def _contract_violations(spec: inference_pb2.BatchInferenceSpec) -> list[FieldViolation]:
    """The contract's field rules (lengths, option ranges, extension patterns), named from
    the request's root."""
    try:
        validate_message(spec)
    except InvalidArgument as error:
        return [
            FieldViolation(field=f"spec.{v.field}", description=v.description, reason=v.reason)
            for v in error.field_violations
        ]
    return []


def check_batch_spec(
    spec: inference_pb2.BatchInferenceSpec, *, tenant_id: str, job_id: str = ""
) -> inference_pb2.BatchInferenceSpec:
    """Checks `spec` for a job of `tenant_id` and returns a copy with every default filled in.

    Keys stay relative to the tenant's area; prefixes come back ending in "/". Without a
    `job_id` (a bare validation before the job exists) an empty output_prefix stays empty.
    Raises InvalidArgument naming every offending field ("spec.input_prefix").
    Normalising a normalised spec returns it unchanged.
    """
    violations = _contract_violations(spec)
    out = inference_pb2.BatchInferenceSpec()
    out.CopyFrom(spec)

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(field=field, description=description))

    if bool(spec.deployment) == bool(spec.model_version_id):
        field = "spec.deployment" if not spec.deployment else "spec.model_version_id"
        bad(field, "set exactly one of spec.deployment and spec.model_version_id")
    elif spec.deployment and not DEPLOYMENT_NAME_PATTERN.match(spec.deployment):
        bad(
            "spec.deployment",
            "not a deployment name: lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit",
        )
    if spec.HasField("export") and not spec.model_version_id:
        bad("spec.export", "an export is only given with spec.model_version_id")

    if bool(spec.input_prefix) == bool(spec.input_zip_key):
        field = "spec.input_prefix" if not spec.input_prefix else "spec.input_zip_key"
        bad(field, "set exactly one of spec.input_prefix and spec.input_zip_key")
    input_prefix = ""
    if spec.input_prefix:
        input_prefix, problems = _key_violations(
            tenant_id, spec.input_prefix, field="spec.input_prefix", prefix=True
        )
        violations.extend(problems)
        if not problems:
            out.input_prefix = input_prefix
    if spec.input_zip_key:
        _, problems = _key_violations(
            tenant_id, spec.input_zip_key, field="spec.input_zip_key", prefix=False
        )
        violations.extend(problems)
        if not spec.input_zip_key.lower().endswith(".zip"):
            bad("spec.input_zip_key", "must name a .zip file")

    output_prefix = spec.output_prefix or (default_output_prefix(job_id) if job_id else "")
    if output_prefix:
        normalised, problems = _key_violations(
            tenant_id, output_prefix, field="spec.output_prefix", prefix=True
        )
        violations.extend(problems)
        if not problems:
            out.output_prefix = normalised
            if input_prefix and normalised.startswith(input_prefix):
                # The results would be listed as inputs of a later run over the same prefix.
                bad("spec.output_prefix", f"must not lie inside spec.input_prefix {input_prefix!r}")

    if not spec.image_extensions:
        out.image_extensions.extend(DEFAULT_IMAGE_EXTENSIONS)
    if not spec.HasField("batch_size"):
        out.batch_size = DEFAULT_BATCH_SIZE

    if violations:
        raise InvalidArgument(
            "invalid batch inference spec: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            field_violations=violations,
        )
    return out
