#!/bin/sh
# The minio-init job of compose.yaml: as MinIO root, make the bucket, a policy that allows
# that bucket and nothing else, and the non-root user the services and Triton sign in as.
# Idempotent: it runs on every `docker compose up`, and re-running it with a new
# MINIO_SERVICE_PASSWORD rotates that user's secret.
#
# Needs MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, MINIO_SERVICE_USER, MINIO_SERVICE_PASSWORD;
# MINIO_ENDPOINT (default http://minio:9000) and MINIO_BUCKET (default visionmesh). Only
# POSIX sh and `mc`: the MinIO image it runs in has little else.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${MINIO_SERVICE_USER:?}" "${MINIO_SERVICE_PASSWORD:?}"
endpoint="${MINIO_ENDPOINT:-http://minio:9000}"
bucket="${MINIO_BUCKET:-visionmesh}"
policy_name="visionmesh-services"
alias_name="visionmesh"

if [ "$MINIO_SERVICE_USER" = "$MINIO_ROOT_USER" ]; then
    echo "minio-init: MINIO_SERVICE_USER must not be the root user" >&2
    exit 1
fi
if [ "${#MINIO_SERVICE_PASSWORD}" -lt 8 ]; then
    echo "minio-init: MINIO_SERVICE_PASSWORD must be at least 8 characters (MinIO's rule)" >&2
    exit 1
fi

policy="${TMPDIR:-/tmp}/${policy_name}.json"
printf '%s\n' \
    '{' \
    '  "Version": "2012-10-17",' \
    '  "Statement": [' \
    '    {' \
    '      "Effect": "Allow",' \
    '      "Action": ["s3:*"],' \
    "      \"Resource\": [\"arn:aws:s3:::${bucket}\", \"arn:aws:s3:::${bucket}/*\"]" \
    '    }' \
    '  ]' \
    '}' >"$policy"

mc alias set "$alias_name" "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "${alias_name}/${bucket}"
mc admin policy create "$alias_name" "$policy_name" "$policy"
mc admin user add "$alias_name" "$MINIO_SERVICE_USER" "$MINIO_SERVICE_PASSWORD"
# Attaching a policy the user already has is an error to mc: attach only when missing.
info="$(mc admin user info "$alias_name" "$MINIO_SERVICE_USER")"
case "$info" in
*"$policy_name"*) ;;
*) mc admin policy attach "$alias_name" "$policy_name" --user "$MINIO_SERVICE_USER" ;;
esac
echo "minio-init: bucket ${bucket} and user ${MINIO_SERVICE_USER} (policy ${policy_name}) are ready" >&2
