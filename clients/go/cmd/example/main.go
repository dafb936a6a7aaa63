// Command example runs the Go client's example scenario against a quota-authority server
// and prints each answer: invite a creator, message them, read the seller's status, record
// the creator's reply, message them again, let the creator block the seller, be denied,
// replay the first invite by its request_id, and send an invalid request; then send batches
// in both modes and release a charged invite and a batch item (twice), and try two releases
// that cannot be made.
//
//	go run ./cmd/example -target 127.0.0.1:50051
//
// The target defaults to $QUOTA_AUTHORITY_TARGET, else 127.0.0.1:50051. When
// $QUOTA_AUTHORITY_TOKEN is set, it is sent as "authorization: Bearer <token>".
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/quota-authority/quota-authority/clients/go/gen/quota_authority/v1"
	"github.com/quota-authority/quota-authority/clients/go/scenario"
)

func main() {
	defaultTarget := os.Getenv("QUOTA_AUTHORITY_TARGET")
	if defaultTarget == "" {
		defaultTarget = "127.0.0.1:50051"
	}
	target := flag.String("target", defaultTarget, "the server's host:port")
	seller := flag.String("seller", "", "the seller id (default: a new one, example-<random hex>)")
	creator := flag.String("creator", "creator-1", "the creator id")
	flag.Parse()
	if *seller == "" {
		*seller = scenario.NewSellerID("example")
	}
	log.SetFlags(0)

	conn, err := scenario.Dial(*target, os.Getenv("QUOTA_AUTHORITY_TOKEN"))
	if err != nil {
		log.Fatalf("example: %v", err)
	}
	defer conn.Close()

	fmt.Printf("target %s, seller %s, creator %s\n", *target, *seller, *creator)
	client := pb.NewQuotaAuthorityServiceClient(conn)
	if _, err := scenario.Run(context.Background(), client, *seller, *creator, printAnswer); err != nil {
		log.Fatalf("example: %v", err)
	}
}

// printAnswer writes one step's answer: a response as compact JSON, or an error's code, message,
// BadRequest field violations and ErrorInfo reason.
func printAnswer(step string, answer any) {
	switch a := answer.(type) {
	case proto.Message:
		fmt.Printf("%s\n  %s\n", step, compactJSON(a))
	case error:
		st := status.Convert(a)
		fmt.Printf("%s\n  error %s: %s\n", step, st.Code(), st.Message())
		for _, detail := range st.Details() {
			switch d := detail.(type) {
			case *errdetails.BadRequest:
				for _, v := range d.GetFieldViolations() {
					fmt.Printf("  field %s: %s\n", v.GetField(), v.GetDescription())
				}
			case *errdetails.ErrorInfo:
				fmt.Printf("  reason %s\n", d.GetReason())
			}
		}
	case nil:
		fmt.Printf("%s\n  no error\n", step)
	}
}

// compactJSON is m in proto JSON without insignificant whitespace. protojson puts a space
// after some commas or not depending on the binary that runs it (on purpose, so that nobody
// depends on its exact bytes); compacting it makes the example print the same bytes whatever
// Go version or build runs it, and so the output in the README.
func compactJSON(m proto.Message) string {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return fmt.Sprintf("(cannot encode %T: %v)", m, err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return string(b)
	}
	return out.String()
}
