#!/usr/bin/env bash
# make fuzz: run every Go fuzz target in the repo for a set time each
# (default 30s; `make fuzz FUZZTIME=5m`). The seed corpora also run in
# `make test` as ordinary tests. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
t=${1:-30s}
status=0
while IFS=: read -r file name; do
  pkg=./$(dirname "$file")
  echo "== $pkg $name ($t)"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg" 2>&1 | tee /tmp/fuzz.$$ | tail -3; then
    status=1
    echo "FAIL: $pkg $name (the failing input is under $pkg/testdata/fuzz/$name)"
  fi
  grep -o 'execs: [0-9]*' /tmp/fuzz.$$ | tail -1 || true
done < <(grep -rHoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9_]+)' . | sed -E 's/:func /:/' | sort)
rm -f /tmp/fuzz.$$
exit $status
