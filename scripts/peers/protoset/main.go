// Command protoset writes a FileDescriptorSet for one proto file that is
// compiled into this binary, with all its transitive imports (imports first),
// so that ghz can call a peer that neither serves reflection nor ships .proto
// files.
//
//	protoset envoy/service/ratelimit/v3/rls.proto ratelimit.protoset
//	protoset gubernator.proto gubernator.protoset
package main

import (
	"fmt"
	"os"

	_ "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	_ "github.com/gubernator-io/gubernator/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: protoset PROTO_FILE OUT")
		os.Exit(2)
	}
	fd, err := protoregistry.GlobalFiles.FindFileByPath(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "protoset:", err)
		os.Exit(1)
	}
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imports := f.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	add(fd)
	out, err := proto.Marshal(set)
	if err == nil {
		err = os.WriteFile(os.Args[2], out, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "protoset:", err)
		os.Exit(1)
	}
}
