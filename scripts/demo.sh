#!/usr/bin/env bash
# README command 1: install everything, start a local MongoDB-compatible server,
# seed a realistic VNP dataset, start the (stand-in) VNP backend, run the whole
# VNP plan end to end as a team would on production night, and print its report.
#
#   scripts/demo.sh              # small dataset (the guide's figures)
#   DEMO_SIZE=100000 scripts/demo.sh
#   scripts/demo.sh --keep       # leave the server and the app running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1

scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
project=$PWD
demo=$project/demo                  # the team's working directory (gitignored)
server_dir=$project/.cache/demo-db
rm -rf "$demo" && mkdir -p "$demo"

cleanup() {
  if [ "$keep" = 0 ]; then
    if [ -f "$demo/app.pid" ]; then kill "$(cat "$demo/app.pid")" 2>/dev/null || true; fi
    python scripts/testdb.py stop --dir "$server_dir" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

server_url=$(python scripts/testdb.py start --dir "$server_dir")
database_url="${server_url%/}/vnp"
echo "demo: seeding the VNP dataset (${DEMO_SIZE:-small}) into $database_url" >&2
python -m migration.demo.seed --uri "$database_url" --size "${DEMO_SIZE:-small}" >"$demo/seed.json"

app_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
app_cmd="python -m migration.demo.app --port $app_port --uri $database_url"
# "Production" is up before the migration, as on the real night.
(cd "$demo" && { nohup $app_cmd >app.log 2>&1 & echo $! >app.pid; })
python - "$app_port" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1); break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("demo: the stand-in app did not start")
PY

# The team's .env: where production is and how the app is stopped and started.
cat >"$demo/.env" <<ENV
DATABASE_URL=$database_url
VNP_APP_URL=http://127.0.0.1:$app_port
VNP_APP_STOP=pid=\$(cat app.pid) && kill \$pid && for i in \$(seq 100); do kill -0 \$pid 2>/dev/null || break; sleep 0.1; done && rm -f app.pid
VNP_APP_TEST_START=$app_cmd
VNP_APP_RESTART=nohup $app_cmd >>app.log 2>&1 & echo \$! >app.pid
VNP_REQUIRED_COMMANDS=python3 kill
VNP_SCHEMA_PUSH=echo "(demo) prisma db push: your database is now in sync with your Prisma schema"
VNP_CLIENT_GENERATE=echo "(demo) prisma generate"
VNP_APP_BUILD=echo "(demo) yarn build"
VNP_CHECKOUT_MAIN=echo "(demo) git checkout main"
VNP_MONITOR_SECONDS=10
VNP_NOTIFY_COMMAND=echo "(demo) notify the team: \$MIGRATION_NOTIFY_TEXT"
ENV

echo "demo: running plans/vnp-bank-details.yaml" >&2
rc=0
(cd "$demo" && migration run "$project/plans/vnp-bank-details.yaml" --yes --state-dir state) || rc=$?
(cd "$demo" && migration report "$project/plans/vnp-bank-details.yaml" --state-dir state)
if [ "$keep" = 1 ]; then
  echo "demo: server $database_url and app http://127.0.0.1:$app_port left running (--keep)" >&2
  echo "demo: stop them with: kill \$(cat demo/app.pid); python scripts/testdb.py stop --dir $server_dir" >&2
fi
exit $rc
