#!/bin/sh
# Start-up for the hub container: `hub init` on both servers (idempotent) with the server
# admin, then `hub serve` as the farm_admin user `hub`.
set -eu
primary="${COUCHFARM_URL%%,*}"
standby="${COUCHFARM_URL#*,}"
printf '%s' "$COUCHDB_PASSWORD" > /tmp/admin.pw
printf '%s' "$COUCHFARM_PASSWORD" > /tmp/hub.pw
hub init --url "$primary" --user "$COUCHDB_USER" --password-file /tmp/admin.pw \
    --password-from /tmp/hub.pw --standby "$standby"
exec hub serve --portal-host 0.0.0.0 --portal-port 8080 \
    --admin-user "$COUCHDB_USER" --admin-password-file /tmp/admin.pw
