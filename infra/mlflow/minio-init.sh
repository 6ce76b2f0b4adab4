#!/bin/sh
# One-shot setup of the object store (docker-compose.yaml, service minio-init): the MLflow
# artifact bucket and the tracking server's own MinIO user, allowed only objects of that bucket
# (minio-policy.json; the server never holds MinIO's root credentials), and the team's DVC
# remote bucket `dvc-cache` with its own user (minio-policy-dvc.json), used by `dvc push/pull`.
# Credentials come from /run/secrets. `mc alias` reads the root login from the MC_HOST_
# variable, not from argv; `mc admin user add` takes the new user's keys as arguments, so
# they are visible in this short-lived container's process list while it runs.
set -eu
root_user=$(cat /run/secrets/access_key)
root_password=$(cat /run/secrets/secret_key)
export MC_HOST_local="http://${root_user}:${root_password}@minio:9000"
mc mb --ignore-existing local/mlflow-artifacts
mc admin policy create local mlflow-artifacts-rw /etc/minio/minio-policy.json
mc admin user add local "$(cat /run/secrets/mlflow_s3_access_key)" "$(cat /run/secrets/mlflow_s3_secret_key)"
mc admin policy attach local mlflow-artifacts-rw --user "$(cat /run/secrets/mlflow_s3_access_key)" \
  || true   # already attached on a rerun
mc mb --ignore-existing local/dvc-cache
mc admin policy create local dvc-cache-rw /etc/minio/minio-policy-dvc.json
mc admin user add local "$(cat /run/secrets/dvc_s3_access_key)" "$(cat /run/secrets/dvc_s3_secret_key)"
mc admin policy attach local dvc-cache-rw --user "$(cat /run/secrets/dvc_s3_access_key)" \
  || true   # already attached on a rerun
