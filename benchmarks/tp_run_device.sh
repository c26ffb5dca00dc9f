#!/usr/bin/env bash
# benchmarks/tp_run.py at TP N beside `jouletrace exporter --gpu nvml` on a host of N GPUs, then
# benchmarks/tp_run_compare.py.
#
#   benchmarks/tp_run_device.sh prepare                        # where pip reaches an index: fills .whl/
#   benchmarks/tp_run_device.sh run N OUT [tp_run.py options]  # on the GPU host, .whl/ carried there
#
# prepare: the wheels that jouletrace and tp_run.py need beyond the GPU image's packages (the
# OpenTelemetry SDK and OTLP exporters for CPython 3.12, and protobuf at the tests' version), and
# the span decoder's C extension built for CPython 3.12 (PY312, default python3.12), into .whl/,
# which git ignores: carry it.
# run: installs the wheels into a temporary folder, starts the exporter on GPUs 0..N-1 (NVML, read
# only; the ranks' GPUs, numbered alike by CUDA_DEVICE_ORDER=PCI_BUS_ID) on free loopback ports,
# runs tp_run.py with --nproc N sending its spans there, and writes OUT/tp_run.jsonl, summary.md,
# compare.md and exporter.log. NVLink multicast stays off in every process started here.
# PYTHON (default python3), GPU (default nvml; sim for a rehearsal on the CPU, with tp_run.py's
# --backend gloo --device cpu --tiny) and PROFILE (tp_run_compare.py's --gpu) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
PYTHON=${PYTHON:-python3}
WHEELS=(opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
        opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2
        opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-http-transport==0.66b2
        opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2
        googleapis-common-protos==1.76.0 protobuf==7.36.2)

prepare() {
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  local inc
  inc=$("${PY312:-python3.12}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  cc -O2 -shared -fPIC -I"$inc" exporter/intake/_otlpwire.c -o .whl/_otlpwire.cpython-312-x86_64-linux-gnu.so
  ls .whl
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run() {
  local n=$1 out=$2
  shift 2
  mkdir -p "$out"
  local site suffix metrics http grpc exporter
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PWD"
  suffix=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
  [[ -f exporter/intake/_otlpwire$suffix ]] || cp ".whl/_otlpwire$suffix" exporter/intake/
  metrics=$(free_port) http=$(free_port) grpc=$(free_port)
  local gpu=(--gpu "${GPU:-nvml}" --gpus "$(seq -s, 0 $((n - 1)))")
  [[ ${GPU:-nvml} == sim ]] && gpu+=(--sim-gpus "$n")
  "$PYTHON" -m jouletrace exporter "${gpu[@]}" \
    --metrics-addr "127.0.0.1:$metrics" --otlp-http-addr "127.0.0.1:$http" --otlp-grpc-addr "127.0.0.1:$grpc" \
    >"$out/exporter.log" 2>&1 &
  exporter=$!
  trap 'kill '"$exporter"' 2>/dev/null || true; rm -rf '"$site" EXIT
  "$PYTHON" - "$metrics" <<'EOF' || { tail -20 "$out/exporter.log"; exit 1; }
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("the exporter is not ready after 60 s")
    time.sleep(0.5)
EOF
  "$PYTHON" benchmarks/tp_run.py --nproc "$n" --out "$out" --otlp "http://127.0.0.1:$http" \
    --exporter "http://127.0.0.1:$metrics" "$@"
  "$PYTHON" benchmarks/tp_run_compare.py "$out/tp_run.jsonl" ${PROFILE:+--gpu "$PROFILE"} | tee "$out/compare.md"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; [[ $# -ge 2 ]] || { echo "usage: $0 run N OUT [tp_run.py options]" >&2; exit 2; }; run "$@" ;;
  *) echo "usage: $0 prepare | run N OUT [tp_run.py options]" >&2; exit 2 ;;
esac
