#!/usr/bin/env bash
# Create (or update) the project's reference Python environment in .venv/
# inside the repository (git-ignored) from the requirements files of the
# benchmarks and parity tools, and print the interpreter's path. Scripts and
# tests find Python through $PYTHON, else this venv.
#
#   tools/reference-env.sh                      # every requirements file
#   tools/reference-env.sh bench/requirements-rbm.txt   # only these
set -eu
cd "$(git rev-parse --show-toplevel)"
py=${PYTHON_FOR_VENV:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
if [ $# -gt 0 ]; then
    reqs=("$@")
else
    reqs=(bench/requirements-rbm.txt bench/requirements-dvc.txt bench/data_requirements.txt
          tools/requirements-eval.txt tools/requirements-checkpoint.txt tools/data_requirements.txt)
fi
for r in "${reqs[@]}"; do
    .venv/bin/pip install --quiet -r "$r" >&2
done
echo "$PWD/.venv/bin/python"
