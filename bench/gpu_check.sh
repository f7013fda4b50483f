#!/usr/bin/env bash
# The GPU check in one command: correctness and speed of report generation on one CUDA GPU, under 8 minutes on an
# H100/H200 (bench/gpu_check.py says what each section measures). Writes OUT/gpu_check.json and OUT/gpu_check.md.
#
#   bench/gpu_check.sh OUT                 # on the GPU machine, from anywhere
#   bench/gpu_check.sh OUT --cpu-smoke     # toy sizes on the CPU (the test suite runs this)
#
# First installs, from the wheels in .whl/ beside the repository (git-ignored; README, "GPU check", says how to fetch
# them), only the packages of bench/gpu_wheels.txt whose module this Python cannot import, into a folder of its own
# on PYTHONPATH: nothing else on the machine changes. PYTHON selects the interpreter (default python3).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bench/gpu_check.sh OUT [--cpu-smoke] [gpu_check.py options]}
shift
python=${PYTHON:-python3}
mkdir -p "$out"

missing=()
while read -r dist module version; do
  case "$dist" in ''|'#'*) continue ;; esac
  "$python" -c "import $module" 2>/dev/null || missing+=("$dist==$version")
done < "$root/bench/gpu_wheels.txt"
if [ ${#missing[@]} -gt 0 ]; then
  if [ -d "$root/.whl" ]; then
    site=$(mktemp -d "${TMPDIR:-/tmp}/cxrgen-site.XXXXXX")
    echo "installing from $root/.whl: ${missing[*]}" >&2
    "$python" -m pip install -q --no-index --no-deps --no-compile --find-links "$root/.whl" --target "$site" \
      "${missing[@]}" || echo "could not install ${missing[*]}; the sections that need them will say so" >&2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "missing ${missing[*]} and no $root/.whl folder; the sections that need them will say so" >&2
  fi
fi
exec "$python" "$root/bench/gpu_check.py" --out "$out" "$@"
