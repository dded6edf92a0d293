#!/bin/sh
# Generates the TypeScript types from proto/ into gen/ (proto-loader-gen-types,
# from @grpc/proto-loader), type-checks and compiles the client with tsc into
# dist/ (both git-ignored), and runs it. A type error stops it before the run.
# Usage: ./run.sh [ADDRESS]   (BANKAUTH_API_KEY optional)
# Needs: Node 18 or later, and `npm ci` here once.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
rm -rf gen dist
# The same options as client.ts gives proto-loader at run time.
node_modules/.bin/proto-loader-gen-types bankauth/v1/auth_service.proto \
    --keepCase --longs=Number --enums=String --defaults --oneofs \
    --grpcLib=@grpc/grpc-js --outDir=gen -I ../../proto >/dev/null
node_modules/.bin/tsc -p .
node dist/client.js "$@"
