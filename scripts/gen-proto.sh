#!/usr/bin/env bash
# Regenerate the Python modules of nodeguard's protobuf files with grpc_tools.protoc.
#
#   scripts/gen-proto.sh            # writes next to each .proto (the committed files)
#   scripts/gen-proto.sh OUT_DIR    # writes below OUT_DIR instead (the drift test uses this)
#
# PYTHON selects the interpreter that has grpcio-tools (default: ./.venv/bin/python).
# Generated: <name>_pb2.py, <name>_pb2.pyi (types for mypy), <name>_pb2_grpc.py.
# Imports in the generated code are absolute (nodeguard.proto....), because the .proto
# files are compiled relative to the repository root.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -ge 1 ]]; then
    mkdir -p -- "$1"
    OUT_DIR=$(cd -- "$1" && pwd)
else
    OUT_DIR=$REPO_ROOT
fi
cd "$REPO_ROOT"

PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}

PROTOS=(
    nodeguard/proto/runtime/v1/api.proto
    nodeguard/proto/nodeguard/v1/events.proto
)

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
    echo "gen-proto.sh: error: $PYTHON cannot import grpc_tools (grpcio-tools);" >&2
    echo "install the dev extras: sudo make setup   (or: .venv/bin/pip install -e '.[dev]')" >&2
    exit 1
fi

"$PYTHON" -m grpc_tools.protoc \
    --proto_path=. \
    --python_out="$OUT_DIR" \
    --pyi_out="$OUT_DIR" \
    --grpc_python_out="$OUT_DIR" \
    "${PROTOS[@]}"

for proto in "${PROTOS[@]}"; do
    echo "generated ${OUT_DIR%/}/${proto%.proto}_pb2{.py,.pyi,_grpc.py}"
done
