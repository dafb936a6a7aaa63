// Package scenario is the Go client's example scenario, shared by the example program
// (cmd/example), which prints each answer, and the interop test, which asserts them: a new
// seller invites a creator, messages them, reads its status, gets a reply, messages the
// now-connected creator, is blocked by the creator, is denied, retries the first invite with
// the same request_id, and finally sends an invalid request.
package scenario

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	pb "github.com/quota-authority/quota-authority/clients/go/gen/quota_authority/v1"
)

// CallTimeout is the deadline of each call.
const CallTimeout = 5 * time.Second

// InviteRequestID is the request_id of the first invite, sent again in step 8.
const InviteRequestID = "invite-1"

// Dial opens a plaintext client connection to target ("host:port"). A non-empty token is
// sent with every call as "authorization: Bearer <token>". Connections are made lazily, on
// the first call.
func Dial(target, token string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return grpc.NewClient(target, opts...)
}

// bearer sends a token as "authorization: Bearer <token>". It allows plaintext because the
// example talks to a server on loopback; over a network, use TLS credentials instead.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// NewSellerID returns a seller id no earlier run has used, so runs against one server do
// not share state.
func NewSellerID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return prefix + "-" + hex.EncodeToString(b)
}

// Result holds the answer to every step of the scenario.
type Result struct {
	Invite      *pb.CheckAndConsumeResponse // 1. invite an unconnected creator
	Message     *pb.CheckAndConsumeResponse // 2. message the creator, already counted
	Status      *pb.GetStatusResponse       // 3. the seller's status
	Reply       *pb.RecordReplyResponse     // 4. the creator replies
	Connected   *pb.CheckAndConsumeResponse // 5. message the now-connected creator
	Block       *pb.BlockResponse           // 6. the creator blocks the seller
	Blocked     *pb.CheckAndConsumeResponse // 7. message the blocking creator: denied
	InviteRetry *pb.CheckAndConsumeResponse // 8. step 1 again, same request_id: replayed
	InvalidErr  error                       // 9. an empty seller_id: INVALID_ARGUMENT
}

// Run runs the scenario for seller and creator against client and calls report, when not
// nil, after each step with the step's name and its answer (a response message, or the error
// of step 9). Step 9 is expected to fail; an error in any other step ends the run.
func Run(ctx context.Context, client pb.QuotaAuthorityServiceClient, seller, creator string,
	report func(step string, answer any)) (*Result, error) {
	if report == nil {
		report = func(string, any) {}
	}
	invite := &pb.CheckAndConsumeRequest{
		SellerId:             seller,
		CreatorId:            creator,
		Action:               pb.Action_ACTION_INVITE,
		CreatorFollowerCount: proto.Int64(1000),
		RequestId:            InviteRequestID,
	}
	message := &pb.CheckAndConsumeRequest{
		SellerId: seller, CreatorId: creator, Action: pb.Action_ACTION_MESSAGE,
	}
	r := &Result{}
	var err error

	if r.Invite, err = call(ctx, client.CheckAndConsume, invite); err != nil {
		return r, fmt.Errorf("1. CheckAndConsume invite: %w", err)
	}
	report("1. CheckAndConsume invite", r.Invite)
	if r.Message, err = call(ctx, client.CheckAndConsume, message); err != nil {
		return r, fmt.Errorf("2. CheckAndConsume message: %w", err)
	}
	report("2. CheckAndConsume message", r.Message)
	if r.Status, err = call(ctx, client.GetStatus, &pb.GetStatusRequest{SellerId: seller}); err != nil {
		return r, fmt.Errorf("3. GetStatus: %w", err)
	}
	report("3. GetStatus", r.Status)
	if r.Reply, err = call(ctx, client.RecordReply, &pb.RecordReplyRequest{
		SellerId: seller, CreatorId: creator, Source: pb.ConnectionSource_CONNECTION_SOURCE_REPLY,
	}); err != nil {
		return r, fmt.Errorf("4. RecordReply: %w", err)
	}
	report("4. RecordReply", r.Reply)
	if r.Connected, err = call(ctx, client.CheckAndConsume, message); err != nil {
		return r, fmt.Errorf("5. CheckAndConsume message, connected: %w", err)
	}
	report("5. CheckAndConsume message, connected", r.Connected)
	if r.Block, err = call(ctx, client.Block, &pb.BlockRequest{
		SellerId: seller, CreatorId: creator, BlockedBy: pb.Party_PARTY_CREATOR,
	}); err != nil {
		return r, fmt.Errorf("6. Block by the creator: %w", err)
	}
	report("6. Block by the creator", r.Block)
	if r.Blocked, err = call(ctx, client.CheckAndConsume, message); err != nil {
		return r, fmt.Errorf("7. CheckAndConsume message, blocked: %w", err)
	}
	report("7. CheckAndConsume message, blocked", r.Blocked)
	if r.InviteRetry, err = call(ctx, client.CheckAndConsume, invite); err != nil {
		return r, fmt.Errorf("8. CheckAndConsume invite again, same request_id: %w", err)
	}
	report("8. CheckAndConsume invite again, same request_id", r.InviteRetry)
	// An invalid request is an error, not an answer.
	_, r.InvalidErr = call(ctx, client.CheckAndConsume, &pb.CheckAndConsumeRequest{
		SellerId: "", CreatorId: creator, Action: pb.Action_ACTION_MESSAGE,
	})
	report("9. CheckAndConsume with an empty seller_id", r.InvalidErr)
	return r, nil
}

// call makes one call with its own deadline of CallTimeout.
func call[Req, Resp any](ctx context.Context,
	method func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return method(ctx, req)
}
