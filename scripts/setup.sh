#!/usr/bin/env bash
# Installs what jouletrace needs on a fresh Debian machine: Python venv and packages, and with
# `--test` the Debian packages the tests use (prometheus, kubectl, and buildah and debootstrap to
# build and run the image). Idempotent; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="[loadgen]"
apt_packages=()
if [[ "${1:-}" == "--test" ]]; then
  extra="[test]"
  command -v prometheus >/dev/null || apt_packages+=(prometheus)
  command -v kubectl >/dev/null || apt_packages+=(kubernetes-client)  # kubectl kustomize for tests/deploy
  # tests/deploy/test_image.py: the image built daemonless (buildah) on a base debootstrap makes
  command -v buildah >/dev/null || apt_packages+=(buildah)
  [[ -x /usr/sbin/debootstrap ]] || apt_packages+=(debootstrap)
fi

if ((${#apt_packages[@]})); then
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  echo "installing Debian packages: ${apt_packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
[[ -n "$python" ]] || { echo "jouletrace needs Python >= 3.11" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=".venv/.installed${extra}"
want="$(cat pyproject.toml exporter/intake/*.c | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! .venv/bin/python -c 'import jouletrace.exporter.intake._otlpwire' 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".${extra}"
  echo "$want" > "$stamp"
fi
