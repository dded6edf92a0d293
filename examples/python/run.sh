#!/bin/sh
# Generates the Python stubs from proto/ into a temporary directory and runs
# the client. Usage: ./run.sh [ADDRESS]   (BANKAUTH_API_KEY optional)
# Needs: python3 -m pip install -r requirements.txt
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
python3 -m grpc_tools.protoc -I "$here/../../proto" \
    --python_out="$gen" --grpc_python_out="$gen" \
    "$here/../../proto/bankauth/v1/auth_service.proto"
PYTHONPATH="$gen" python3 "$here/client.py" "$@"
