#!/usr/bin/env bash
# Structure checks that keep the layers of DESIGN.md true; CI runs them.
#  - no file under src/session/ over 600 lines: the session is a folder of
#    concepts (generator, receiver, hard links, delete, io), not a god object;
#  - the sans-IO cores (the rules of what may arrive when) touch no files,
#    threads, clocks, channels or the local store: they are plain structs
#    driven by method calls, tested by tables and fuzzed;
#  - nothing under src/transport/ uses the session or the server, and trust
#    does not use the server (low layers do not import high ones);
#  - no library code outside the CLI reads /dev/tty or prints with eprintln!.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
problem() { echo "structure: $*" >&2; fail=1; }

while read -r lines file; do
  [ "$file" = total ] && continue
  [ "$lines" -gt 600 ] && problem "$file has $lines lines (the limit under src/session/ is 600)"
done < <(find src/session -name '*.rs' -print0 | xargs -0 wc -l)

for core in src/session/receiver/intake.rs src/session/receiver/recipe.rs src/session/receiver/holes.rs src/session/sender/ledger.rs; do
  [ -e "$core" ] || { problem "$core is missing (a sans-IO core)"; continue; }
  if grep -nE 'std::(fs|thread|time)|mpsc|crossbeam|fs::dest|rand::|Instant|SystemTime' "$core"; then
    problem "$core is a sans-IO core: no files, threads, clocks, channels or fs::dest"
  fi
done

if grep -rnE 'crate::(session|server)' src/transport; then
  problem "src/transport/ imports a higher layer (session or server)"
fi
if grep -rnE 'crate::(server|cli|api)' src/fanout; then
  problem "src/fanout/ imports the server, the CLI or the API (the daemon calls into fanout, not back)"
fi
if grep -rn 'crate::server' src/trust; then
  problem "src/trust/ imports the server"
fi
# library code: everything but the CLI, up to a file's test module
if find src -name '*.rs' -not -path 'src/cli/*' -not -name main.rs -print0 |
  xargs -0 awk '/^#\[cfg\(test\)\]/ { nextfile } /\/dev\/tty|eprintln!/ && !/^ *\/\// { print FILENAME ":" FNR ": " $0; found = 1 } END { exit !found }'; then
  problem "library code reads /dev/tty or prints with eprintln! (supply a callback or return an event)"
fi
exit $fail
