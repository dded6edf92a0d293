#!/bin/sh
# Generates the Go stubs with the repository's buf.gen.yaml into gen/go
# (git-ignored; the module github.com/bankauth/bankauth/gen/go that go.mod
# replaces with it) and runs the client as a Go module, offline: go.mod
# points every dependency at Debian's sources in /usr/share/gocode.
# Usage: ./run.sh [ADDRESS]   (BANKAUTH_API_KEY optional)
# Needs: apt-get install golang-go golang-google-grpc-dev golang-google-genproto-dev \
#   golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
#   buf (npm install -g @bufbuild/buf@1.75.0, or BUF=/path/to/buf), and
#   grpcio-tools (buf.gen.yaml makes the Python stubs too: pip install grpcio-tools)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
rm -rf "$here/gen"
"${BUF:-buf}" generate --output "$here"
rm -rf "$here/gen/python"
printf 'module github.com/bankauth/bankauth/gen/go\n\ngo 1.19\n' >"$here/gen/go/go.mod"
cd "$here"
GOPROXY=off GOFLAGS=-mod=readonly go run . "$@"
