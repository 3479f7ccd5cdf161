#!/usr/bin/env bash
# make fuzz: run every Go fuzz target in the repo for a set time each
# (default 30s; `make fuzz FUZZTIME=5m`; FUZZ=REGEX limits the targets by
# name; FUZZMINIMIZETIME, default 5s, bounds the minimization of each new
# corpus entry: Go's default of 60s let single minimizations of large inputs
# eat a whole run, e.g. FuzzMap made ~700 executions in 60s instead of
# ~200 000). The seed corpora also run in `make test` as ordinary tests. Prints
# executions and new corpus entries per target and a summary table.
#
# Targets are found with `go test -list` per package (so build tags, generic
# helpers and comments cannot fool a grep), and the list is read into an
# array before anything runs: `go test` passes its stdin to the test binary,
# which in a `while read` loop could swallow the rest of the list.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
t=${1:-30s}
filter=${FUZZ:-.}
mintime=${FUZZMINIMIZETIME:-5s}
targets=()
for pkg in $(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do
  # Only packages with a func Fuzz in a test file are worth a `go test -list`.
  dir=$(go list -f '{{.Dir}}' "$pkg")
  grep -qsE '^func Fuzz[A-Za-z0-9_]*\(' "$dir"/*_test.go || continue
  while read -r name; do
    [[ $name == Fuzz* ]] && [[ $name =~ $filter ]] && targets+=("$pkg:$name")
  done < <(go test -list '^Fuzz' "$pkg" </dev/null | grep '^Fuzz' || true)
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
echo "fuzz targets (${#targets[@]}, $t each): ${targets[*]}"
status=0
summary=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for tg in "${targets[@]}"; do
  pkg=${tg%%:*} name=${tg##*:}
  echo "== $pkg $name ($t)"
  res=ok
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" -fuzzminimizetime "$mintime" "$pkg" </dev/null >"$log" 2>&1; then
    status=1
    res=FAIL
    cat "$log"
    echo "FAIL: $pkg $name (the failing input is under $(go list -f '{{.Dir}}' "$pkg")/testdata/fuzz/$name)"
  else
    tail -3 "$log"
  fi
  execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  newi=$(grep -o 'new interesting: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  summary+=("$(printf '%-6s %-50s %-18s execs %-12s new-interesting %s' "$res" "$pkg" "$name" "$execs" "$newi")")
done
echo
echo "== summary ($t per target)"
printf '%s\n' "${summary[@]}"
exit $status
