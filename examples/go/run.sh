#!/bin/sh
# Generates the Go stubs from proto/ into a temporary GOPATH and runs the
# client, offline, with Debian's Go packages (GOPATH mode: /usr/share/gocode).
# Usage: ./run.sh [ADDRESS]   (BANKAUTH_API_KEY optional)
# Needs: apt-get install golang-go golang-google-grpc-dev \
#   golang-github-golang-protobuf-1-5-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
mkdir "$gen/src"
# The proto has no go_package option, so name the Go package here.
map=Mbankauth/v1/auth_service.proto=bankauth.example/gen/bankauthv1
protoc -I "$here/../../proto" \
    --go_out="$gen/src" --go_opt="$map" \
    --go-grpc_out="$gen/src" --go-grpc_opt="$map" \
    "$here/../../proto/bankauth/v1/auth_service.proto"
cd "$here"
GO111MODULE=off GOFLAGS= GOPATH="$gen:/usr/share/gocode" go run main.go "$@"
