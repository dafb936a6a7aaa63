// Package scenario is the Go client's example scenario, shared by the example program
// (cmd/example), which prints each answer, and the interop test, which asserts them: a new
// seller invites a creator, messages them, reads its status, gets a reply, messages the
// now-connected creator, is blocked by the creator, is denied, retries the first invite with
// the same request_id, and sends an invalid request. Then it sends batches and releases
// (R14, R15): a best-effort batch invite and message to new creators, one over the follower
// cap and one to the blocking creator; an all-or-nothing batch with a denied item, which
// applies nothing; one with none, which applies all; an invite and its release; the release
// of a batch item by index, twice (the second replays); and two releases that cannot be
// made: of an item that charged nothing, and of a request_id never sent.
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

// The request_ids of the batches (steps 10 to 12), of the invite released in step 14, and
// the one step 18 never sent. Request ids are unique per seller; batches share them with
// CheckAndConsume.
const (
	BestEffortRequestID          = "batch-1"
	AllOrNothingDeniedRequestID  = "batch-2"
	AllOrNothingAppliedRequestID = "batch-3"
	ReleasedInviteRequestID      = "invite-7"
	NeverSentRequestID           = "never-sent"
)

// The follower counts of the batches' invites: under and over the default tier T0's cap of
// 20,000.
const (
	UnderCapFollowerCount = 1000
	OverCapFollowerCount  = 30000
)

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

	BestEffort          *pb.BatchCheckAndConsumeResponse // 10. best effort: some denied, the rest applied
	AllOrNothingDenied  *pb.BatchCheckAndConsumeResponse // 11. all or nothing, one denied: nothing applied
	AllOrNothingApplied *pb.BatchCheckAndConsumeResponse // 12. all or nothing, none denied: all applied
	SingleInvite        *pb.CheckAndConsumeResponse      // 13. an invite whose send is then said to fail
	ReleaseSingle       *pb.ReleaseOutreachResponse      // 14. release step 13 by its request_id
	ReleaseItem         *pb.ReleaseOutreachResponse      // 15. release item 1 of step 12
	ReleaseItemAgain    *pb.ReleaseOutreachResponse      // 16. step 15 again: replayed
	NothingChargedErr   error                            // 17. release item 1 of step 10, free: FAILED_PRECONDITION
	NotFoundErr         error                            // 18. release a request_id never sent: NOT_FOUND
}

// Run runs the scenario for seller and creator against client and calls report, when not
// nil, after each step with the step's name and its answer (a response message, or the error
// of steps 9, 17 and 18). Those three are expected to fail; an error in any other step ends
// the run.
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
	if err := runBulk(ctx, client, seller, creator, r, report); err != nil {
		return r, err
	}
	return r, nil
}

// runBulk runs steps 10 to 18: batches and releases, after step 9, for the same seller,
// whose creator (creator) is now connected and blocks the seller.
func runBulk(ctx context.Context, client pb.QuotaAuthorityServiceClient, seller, creator string,
	r *Result, report func(step string, answer any)) error {
	invite := func(creatorID string, followers int64) *pb.OutreachItem {
		return &pb.OutreachItem{CreatorId: creatorID, Action: pb.Action_ACTION_INVITE,
			CreatorFollowerCount: proto.Int64(followers)}
	}
	message := func(creatorID string) *pb.OutreachItem {
		return &pb.OutreachItem{CreatorId: creatorID, Action: pb.Action_ACTION_MESSAGE}
	}
	batch := func(mode pb.BatchMode, requestID string, items ...*pb.OutreachItem) *pb.BatchCheckAndConsumeRequest {
		return &pb.BatchCheckAndConsumeRequest{SellerId: seller, Items: items, Mode: mode,
			RequestId: requestID}
	}
	release := func(requestID string, itemIndex *int32) *pb.ReleaseOutreachRequest {
		return &pb.ReleaseOutreachRequest{SellerId: seller, RequestId: requestID, ItemIndex: itemIndex}
	}
	var err error

	const best = "10. BatchCheckAndConsume best effort"
	if r.BestEffort, err = call(ctx, client.BatchCheckAndConsume, batch(
		pb.BatchMode_BATCH_MODE_BEST_EFFORT, BestEffortRequestID,
		invite("creator-2", UnderCapFollowerCount), // new: charged
		message("creator-2"),                       // counted by item 0: free
		invite("creator-3", OverCapFollowerCount),  // over the cap: denied
		message(creator),                           // the creator blocks the seller: denied
		message("creator-4"),                       // new: charged
	)); err != nil {
		return fmt.Errorf("%s: %w", best, err)
	}
	report(best, r.BestEffort)
	const denied = "11. BatchCheckAndConsume all or nothing, one item denied"
	if r.AllOrNothingDenied, err = call(ctx, client.BatchCheckAndConsume, batch(
		pb.BatchMode_BATCH_MODE_ALL_OR_NOTHING, AllOrNothingDeniedRequestID,
		invite("creator-5", UnderCapFollowerCount),
		invite("creator-6", OverCapFollowerCount),
	)); err != nil {
		return fmt.Errorf("%s: %w", denied, err)
	}
	report(denied, r.AllOrNothingDenied)
	const applied = "12. BatchCheckAndConsume all or nothing, none denied"
	if r.AllOrNothingApplied, err = call(ctx, client.BatchCheckAndConsume, batch(
		pb.BatchMode_BATCH_MODE_ALL_OR_NOTHING, AllOrNothingAppliedRequestID,
		invite("creator-5", UnderCapFollowerCount),
		message("creator-6"),
	)); err != nil {
		return fmt.Errorf("%s: %w", applied, err)
	}
	report(applied, r.AllOrNothingApplied)
	const single = "13. CheckAndConsume invite, to be released"
	if r.SingleInvite, err = call(ctx, client.CheckAndConsume, &pb.CheckAndConsumeRequest{
		SellerId: seller, CreatorId: "creator-7", Action: pb.Action_ACTION_INVITE,
		CreatorFollowerCount: proto.Int64(UnderCapFollowerCount), RequestId: ReleasedInviteRequestID,
	}); err != nil {
		return fmt.Errorf("%s: %w", single, err)
	}
	report(single, r.SingleInvite)
	const releaseSingle = "14. ReleaseOutreach of step 13, by its request_id"
	if r.ReleaseSingle, err = call(ctx, client.ReleaseOutreach, release(ReleasedInviteRequestID, nil)); err != nil {
		return fmt.Errorf("%s: %w", releaseSingle, err)
	}
	report(releaseSingle, r.ReleaseSingle)
	const releaseItem = "15. ReleaseOutreach of step 12's item 1"
	if r.ReleaseItem, err = call(ctx, client.ReleaseOutreach,
		release(AllOrNothingAppliedRequestID, proto.Int32(1))); err != nil {
		return fmt.Errorf("%s: %w", releaseItem, err)
	}
	report(releaseItem, r.ReleaseItem)
	const releaseAgain = "16. ReleaseOutreach of step 12's item 1 again"
	if r.ReleaseItemAgain, err = call(ctx, client.ReleaseOutreach,
		release(AllOrNothingAppliedRequestID, proto.Int32(1))); err != nil {
		return fmt.Errorf("%s: %w", releaseAgain, err)
	}
	report(releaseAgain, r.ReleaseItemAgain)
	// Two releases that cannot be made: errors, not answers.
	_, r.NothingChargedErr = call(ctx, client.ReleaseOutreach,
		release(BestEffortRequestID, proto.Int32(1)))
	report("17. ReleaseOutreach of step 10's item 1, which charged nothing", r.NothingChargedErr)
	_, r.NotFoundErr = call(ctx, client.ReleaseOutreach, release(NeverSentRequestID, nil))
	report("18. ReleaseOutreach of a request_id never sent", r.NotFoundErr)
	return nil
}

// call makes one call with its own deadline of CallTimeout.
func call[Req, Resp any](ctx context.Context,
	method func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return method(ctx, req)
}
