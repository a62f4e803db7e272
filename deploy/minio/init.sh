#!/bin/sh
# minio-init: the bucket, the service's S3 user and its policy, created with MinIO's root account (idempotent:
# it runs at every `docker compose up`). Secrets stay off command lines: mc reads the root account from
# MC_HOST_stack and the new user's secret key from standard input.
set -eu
case "$MINIO_ROOT_PASSWORD $MEI_S3_SECRET_KEY" in
    *change-me*) echo "minio-init: MINIO_ROOT_PASSWORD or MEI_S3_SECRET_KEY is still a change-me placeholder" >&2; exit 1;;
esac
if [ "$MEI_S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    echo "minio-init: MEI_S3_ACCESS_KEY must be a user of its own, not MINIO_ROOT_USER" >&2
    exit 1
fi
export MC_HOST_stack="${MINIO_URL%%://*}://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@${MINIO_URL#*://}"

# The policy files name the bucket BUCKET (bucket names are lower case). POSIX sh, as the image has no sed.
with_bucket() {
    while IFS= read -r line; do
        while case "$line" in *BUCKET*) true;; *) false;; esac; do
            line="${line%%BUCKET*}$MINIO_BUCKET${line#*BUCKET}"
        done
        printf '%s\n' "$line"
    done < "$1"
}

mc mb --ignore-existing "stack/$MINIO_BUCKET"
policies=$(mktemp -d)
for access in readwrite read; do
    with_bucket "${0%/*}/bucket-$access.json" > "$policies/$access.json"
    mc admin policy create stack "mei-$access" "$policies/$access.json"
done
# With the access key as its only argument, mc reads the secret key from standard input; adding a user that
# exists sets its secret key, so a new MEI_S3_SECRET_KEY takes effect at the next start.
printf '%s\n' "$MEI_S3_SECRET_KEY" | mc admin user add stack "$MEI_S3_ACCESS_KEY"
mc admin policy attach stack mei-readwrite --user "$MEI_S3_ACCESS_KEY"
