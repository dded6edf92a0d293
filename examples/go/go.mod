// The Go example, built offline: every dependency is Debian's source package
// under /usr/share/gocode/src (see run.sh), and the stubs are the module that
// buf generate writes to gen/go.
module github.com/bankauth/bankauth/examples/go

go 1.19

require (
	github.com/bankauth/bankauth/gen/go v0.0.0
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.3.0 // indirect
	golang.org/x/sys v0.5.0 // indirect
	golang.org/x/text v0.7.0 // indirect
)

// The versions above are nominal: each module is the directory Debian installs.
replace (
	github.com/bankauth/bankauth/gen/go => ./gen/go
	github.com/golang/protobuf => /usr/share/gocode/src/github.com/golang/protobuf
	github.com/google/go-cmp => /usr/share/gocode/src/github.com/google/go-cmp
	golang.org/x/net => /usr/share/gocode/src/golang.org/x/net
	golang.org/x/oauth2 => /usr/share/gocode/src/golang.org/x/oauth2
	golang.org/x/sys => /usr/share/gocode/src/golang.org/x/sys
	golang.org/x/text => /usr/share/gocode/src/golang.org/x/text
	google.golang.org/genproto => /usr/share/gocode/src/google.golang.org/genproto
	google.golang.org/grpc => /usr/share/gocode/src/google.golang.org/grpc
	google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
)

// Modules that Debian's go.mod files require but no package here imports,
// and Debian does not ship: excluded so that the module graph resolves
// without the module proxy.
exclude (
	cloud.google.com/go/compute/metadata v0.2.0
	github.com/cncf/udpa/go v0.0.0-20191209042840-269d4d468f6f
	github.com/envoyproxy/go-control-plane v0.9.4
	github.com/golang/glog v0.0.0-20160126235308-23def4e6c14b
	github.com/google/uuid v1.1.2
	golang.org/x/lint v0.0.0-20190313153728-d0100b6bd8b3
	golang.org/x/mod v0.6.0-dev.0.20220419223038-86c51ed26bb4
	golang.org/x/term v0.5.0
	golang.org/x/tools v0.0.0-20190524140312-2c0ae7006135
	golang.org/x/tools v0.1.12
	google.golang.org/appengine v1.6.7
	honnef.co/go/tools v0.0.0-20190523083050-ea95bdfd59fc
)
