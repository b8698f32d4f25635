#!/bin/sh
# Usage: ensure-s3-repository.sh tritonserver --model-repository=s3://HOST:PORT/BUCKET/PREFIX ...
#
# Makes every s3://HOST:PORT/... model repository named in the arguments exist, then execs the
# arguments. Triton refuses to start when a repository path has no objects under it ("repository
# path is not a valid directory"), which is the state of a fresh deployment until the first
# export: so create the bucket if it is missing (the services would create it too) and put an
# empty PREFIX/.keep object, which Triton ignores (models are sub-directories).
#
# Needs curl >= 7.75 (--aws-sigv4) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the same
# variables Triton's S3 client reads; AWS_DEFAULT_REGION defaults to us-east-1. Plain HTTP only,
# like the compose network it is written for.
set -eu

region="${AWS_DEFAULT_REGION:-us-east-1}"

# s3_put URL: PUT an empty body, signed; prints the HTTP status code.
s3_put() {
    curl --silent --show-error --output /dev/null --write-out '%{http_code}' \
        --retry 5 --retry-connrefused --retry-delay 2 \
        --aws-sigv4 "aws:amz:${region}:s3" \
        --user "${AWS_ACCESS_KEY_ID}:${AWS_SECRET_ACCESS_KEY}" \
        --header 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        --request PUT --data-binary '' "$1"
}

for arg in "$@"; do
    case "$arg" in
    --model-repository=s3://*:*/*) ;;
    *) continue ;;
    esac
    path="${arg#--model-repository=s3://}"
    host="${path%%/*}"
    rest="${path#*/}"
    bucket="${rest%%/*}"
    prefix="${rest#"$bucket"}"
    prefix="${prefix#/}"
    prefix="${prefix%/}"

    status="$(s3_put "http://${host}/${bucket}")"
    case "$status" in
    200 | 409) ;; # created, or it already exists
    *)
        echo "ensure-s3-repository: cannot create bucket ${bucket} at ${host}: HTTP ${status}" >&2
        exit 1
        ;;
    esac
    if [ -n "$prefix" ]; then
        status="$(s3_put "http://${host}/${bucket}/${prefix}/.keep")"
        if [ "$status" != 200 ]; then
            echo "ensure-s3-repository: cannot write ${bucket}/${prefix}/.keep: HTTP ${status}" >&2
            exit 1
        fi
    fi
    echo "ensure-s3-repository: s3://${host}/${bucket}/${prefix} is ready" >&2
done

exec "$@"
