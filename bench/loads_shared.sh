#!/usr/bin/env bash
# bench/loads_shared.sh: bench/loads.sh in its "shared" arrangement (limits, PostgreSQL and Redis
# on one core; pgbench with that core to itself), reported as information: see the arrangement
# notes at the top of bench/loads.sh. Same options and environment as bench/loads.sh.
set -euo pipefail
ARRANGE=shared exec "$(dirname "${BASH_SOURCE[0]}")/loads.sh" "$@"
