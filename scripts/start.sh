#!/bin/sh
# `npm start`: installs what is missing (dependencies, Node 24, nats-server), then runs
# the demo site. Works on a fresh clone where the system Node is older than 24.
set -e
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/node ] || [ ! -f libs/proto/gen/descriptors.binpb ]; then
  echo "start: installing dependencies (npm ci)..."
  npm ci --no-audit --no-fund
fi
# The boards run the node-daemon from its compiled JavaScript: compile the current sources.
node_modules/.bin/node scripts/build.ts
exec node_modules/.bin/node scripts/demo.ts "$@"
