#!/usr/bin/env bash
# The embedded demo: synthetic history -> validated feeds -> Feast features -> three models in MLflow
# -> gate -> tonight's risk lists -> the API and the coordinators' page on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=.venv/bin/carecast
HOME_DIR="${CARECAST_HOME}"
mkdir -p "$HOME_DIR"
step() { printf '\n== %s\n' "$*"; }

# One API key for the demo (id "demo"), kept in the home's settings file.
if [[ -z "${CARECAST_API_KEYS:-}" && ! -f "$HOME_DIR/carecast.yaml" ]]; then
  key="demo:$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  umask 077
  printf 'serving:\n  api_keys: ["%s"]\n' "$key" > "$HOME_DIR/carecast.yaml"
fi
# One coordinator account for the page (user "demo"); its password is kept in the home, mode 0600.
if [[ ! -f "$HOME_DIR/demo-password" ]]; then
  (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$HOME_DIR/demo-password")
  $CC users add demo --password-stdin < "$HOME_DIR/demo-password" >/dev/null
fi
TODAY=$(.venv/bin/python -c "from carecast.settings import load_settings; print(load_settings().synth.today)")

step "CareCast demo, home: $HOME_DIR"
step "1/7 synthetic history"; $CC data synth --patients "${DEMO_PATIENTS:-2000}" --seed 7 --out "$HOME_DIR/feeds"
step "2/7 validate feeds";    $CC data validate "$HOME_DIR/feeds"
step "3/7 feature store";     $CC features build --data "$HOME_DIR/validated"; $CC features apply; $CC features materialize
step "4/7 train";             $CC train --target all
step "5/7 promotion gate";    $CC promote --target all
step "6/7 risk lists"
# A model the gate refused leaves its list empty (the page says why); the others are still written.
$CC score --as-of "$TODAY" --days 14
step "7/7 serve"
port=$(.venv/bin/python -c "from carecast.settings import load_settings; print(load_settings().serving.port)")
cat <<TXT
The API and the coordinators' page start now on loopback (Ctrl-C stops them):
  page:   http://127.0.0.1:${port}/ui/   (user: demo, password: $(cat "$HOME_DIR/demo-password"))
  API:    curl -H "Authorization: Bearer <key>" -d '{"patient_ids": ["P0000001"]}' http://127.0.0.1:${port}/v1/churn
  MLflow: .venv/bin/mlflow ui --backend-store-uri sqlite:///$HOME_DIR/mlflow.db
TXT
[[ "${DEMO_NO_SERVE:-0}" == 1 ]] && exit 0
exec $CC serve
