# shellcheck shell=bash
# Set-up shared by the scripts a lent GPU runs once each (bench/gpu.sh, training/gpu_finetune.sh). Source it
# from the repository root. The device machine has no venv and no network, so packages come from whichever
# python is there plus any wheels carried in .whl/.

# install_carried_wheels: install .whl/*.whl, when carried, into /tmp/site and put that on PYTHONPATH.
install_carried_wheels() {
  ls .whl/*.whl >/dev/null 2>&1 || return 0
  echo "installing carried wheels from .whl/ into /tmp/site"
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl; then
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "WARNING: wheel install failed"
  fi
}

# find_python "MOD MOD ..." ["MOD ..." ...]: set PY to the first of $PYTHON, .venv/bin/python, python3, python
# that imports every module of the first list; failing that, of the next list, and so on. Returns 1 if none.
find_python() {
  local want c
  PY=""
  for want in "$@"; do
    for c in "${PYTHON:-}" .venv/bin/python python3 python; do
      if [ -z "$c" ] || ! command -v "$c" >/dev/null 2>&1; then continue; fi
      if "$c" -c "import ${want// /, }" 2>/dev/null; then
        # shellcheck disable=SC2034  # PY is this function's result, read by the caller
        PY="$c"
        return 0
      fi
    done
  done
  return 1
}
