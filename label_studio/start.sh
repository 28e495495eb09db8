#!/usr/bin/env bash
# Start (or stop) a local Label Studio for vprefer audits, on 127.0.0.1, in its own venv (a checkout's .venv-ls/,
# else venv-ls/ in $VPREFER_CACHE or ~/.cache/vprefer). Uses the checkout's .venv/bin/vprefer, else vprefer on PATH.
# Needs VPREFER_LS_USERNAME, VPREFER_LS_PASSWORD, VPREFER_LS_TOKEN in the environment.
#   label_studio/start.sh RUN [PORT]  start serving RUN's files and wait until healthy (installs Label Studio
#                                     on first use); RUN may be a folder holding several runs
#   label_studio/start.sh stop        stop it
set -euo pipefail
cd "$(dirname "$0")/.."
VPREFER=.venv/bin/vprefer; [ -x "$VPREFER" ] || VPREFER=vprefer
if [ "${1:-}" = "stop" ]; then exec "$VPREFER" audit server stop; fi
if [ -z "${1:-}" ]; then echo "usage: label_studio/start.sh RUN [PORT] | stop" >&2; exit 2; fi
exec "$VPREFER" audit server start --document-root "$1" --port "${2:-8080}"
