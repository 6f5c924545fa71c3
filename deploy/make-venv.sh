#!/bin/sh
# Used by the Dockerfile: make the image's virtualenv and install greenroom's dependencies
# (pyproject.toml's [project].dependencies) into it, from PyPI or offline from /wheelhouse.
# Offline, pip runs from its own wheel: Debian's python3 has neither pip nor ensurepip.
# Usage: make-venv.sh VENV pypi|wheelhouse   (run where pyproject.toml is)
set -eu
venv=$1 from=$2
python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt
case "$from" in
  pypi) python3 -m venv "$venv" ;;
  wheelhouse)
    set -- /wheelhouse/pip-*.whl
    if [ ! -f "$1" ]; then echo "no pip wheel in deploy/wheelhouse/: run make compose-offline" >&2; exit 1; fi
    python3 -m venv --without-pip "$venv"
    # pip reads the venv's own pip.conf: every later pip run of the build stays offline.
    printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' >"$venv/pip.conf"
    "$venv/bin/python" "$1/pip" install --quiet "$1" ;;
  *) echo "INSTALL_FROM must be pypi or wheelhouse, not '$from'" >&2; exit 1 ;;
esac
"$venv/bin/pip" install --quiet -r /tmp/requirements.txt
