#!/bin/sh
# Secrets come from files (docker secrets under /run/secrets, a Kubernetes Secret volume),
# never from the command line, which `ps` shows to every user of the host: for each VAR
# below, VAR_FILE names a file whose content becomes VAR in this process's environment.
# The database password reaches `mlflow server` inside MLFLOW_BACKEND_STORE_URI (an
# environment variable the server reads), not as --backend-store-uri on its argv.
set -eu
for var in POSTGRES_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
           MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_ADMIN_PASSWORD; do
  eval "file=\${${var}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "mlflow-entrypoint: error: ${var}_FILE=$file is not a readable file" >&2
      exit 2
    fi
    value=$(cat "$file")
    export "$var=$value"
    unset "${var}_FILE"
  fi
done
if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "mlflow-entrypoint: error: set MLFLOW_BACKEND_STORE_URI or POSTGRES_PASSWORD_FILE" >&2
    exit 2
  fi
  # The password goes into a URI unescaped: generate it URL-safe (openssl rand -hex 32).
  export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${POSTGRES_USER:-mlflow}:${POSTGRES_PASSWORD}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:-mlflow}"
fi
unset POSTGRES_PASSWORD value
exec "$@"
