#!/usr/bin/env bash
# make demo: build the demo repository from fixtures/release with the INSECURE demo keys,
# verify it end to end, and say how to serve and use it.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-demo-out}
cd "$(dirname "$0")/.."
export COSIGN_PASSWORD=""   # keys.example's cosign key has the empty password

echo "==> repobuild build fixtures/release --out $OUT --keys keys.example"
"$PY" -m repobuild build fixtures/release --out "$OUT" --keys keys.example
echo
echo "==> repobuild verify $OUT --trust keys.example/trust.json"
"$PY" -m repobuild verify "$OUT" --trust keys.example/trust.json
echo
abs=$(cd "$OUT" && pwd)
cat <<EOT
The repository is in $abs. Serve it and use it:

  $PY -m repobuild serve $OUT --port 8000

  # apt (as root), trusting the demo key only for this source:
  install -D -m 644 $abs/keys/repo.gpg /etc/apt/keyrings/repobuild-demo.gpg
  echo "deb [signed-by=/etc/apt/keyrings/repobuild-demo.gpg] http://127.0.0.1:8000/ stable main" \\
    > /etc/apt/sources.list.d/repobuild-demo.list
  apt-get update && apt-cache policy rbdemo-hello

  # pip:
  pip install --index-url http://127.0.0.1:8000/simple/ rbdemo-app

  # auditors:
  $PY -m repobuild verify http://127.0.0.1:8000/ --trust keys.example/trust.json

These demo keys are public: never publish a tree signed with them.
EOT
