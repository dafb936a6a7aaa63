package scenario

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/quota-authority/quota-authority/clients/go/gen/quota_authority/v1"
)

// The holds' request_ids (R16), and their durations: one confirmed well within its time,
// one too short to be confirmed, left to expire.
const (
	ConfirmedHoldRequestID = "hold-1"
	ExpiredHoldRequestID   = "hold-2"
	LongHoldSeconds        = 300
	ShortHoldSeconds       = 1
)

// ExpiryDeadline bounds the wait for the short hold's expiry: the wait ends as soon as the
// seller's status shows the unit back (the server's sweep gave it back), and this is only
// the point at which RunHolds stops waiting and returns what it saw.
const ExpiryDeadline = 60 * time.Second

// HoldResult holds the answer to every step of RunHolds.
type HoldResult struct {
	Held           *pb.CheckAndConsumeResponse // H1. an invite held for LongHoldSeconds
	WhileHeld      *pb.GetStatusResponse       // H2. the status while it is held
	Confirmed      *pb.ConfirmOutreachResponse // H3. its confirmation
	AfterConfirm   *pb.GetStatusResponse       // H4. the status once confirmed
	ConfirmAgain   *pb.ConfirmOutreachResponse // H5. the same confirmation again
	ShortHold      *pb.CheckAndConsumeResponse // H6. a message held for ShortHoldSeconds
	AfterExpiry    *pb.GetStatusResponse       // H7. the status once it expired (or at the deadline)
	ConfirmLateErr error                       // H8. confirming it then: FAILED_PRECONDITION HOLD_EXPIRED
}

// RunHolds runs the holds scenario (R16) for a new seller: a hold confirmed, then a hold
// left to expire, waited for by polling GetStatus until the unit is back (never for a fixed
// time), then confirmed too late. report, when not nil, is called after each step. An error
// in any step but the last ends the run.
func RunHolds(ctx context.Context, client pb.QuotaAuthorityServiceClient, seller string,
	report func(step string, answer any)) (*HoldResult, error) {
	if report == nil {
		report = func(string, any) {}
	}
	r := &HoldResult{}
	status := &pb.GetStatusRequest{SellerId: seller}
	var err error

	const held = "H1. CheckAndConsume invite, held"
	if r.Held, err = call(ctx, client.CheckAndConsume, &pb.CheckAndConsumeRequest{
		SellerId: seller, CreatorId: "creator-h1", Action: pb.Action_ACTION_INVITE,
		CreatorFollowerCount: proto.Int64(UnderCapFollowerCount),
		RequestId:            ConfirmedHoldRequestID, HoldSeconds: LongHoldSeconds,
	}); err != nil {
		return r, fmt.Errorf("%s: %w", held, err)
	}
	report(held, r.Held)
	if r.WhileHeld, err = call(ctx, client.GetStatus, status); err != nil {
		return r, fmt.Errorf("H2. GetStatus while held: %w", err)
	}
	report("H2. GetStatus while held", r.WhileHeld)
	confirm := &pb.ConfirmOutreachRequest{SellerId: seller, RequestId: ConfirmedHoldRequestID}
	if r.Confirmed, err = call(ctx, client.ConfirmOutreach, confirm); err != nil {
		return r, fmt.Errorf("H3. ConfirmOutreach: %w", err)
	}
	report("H3. ConfirmOutreach", r.Confirmed)
	if r.AfterConfirm, err = call(ctx, client.GetStatus, status); err != nil {
		return r, fmt.Errorf("H4. GetStatus once confirmed: %w", err)
	}
	report("H4. GetStatus once confirmed", r.AfterConfirm)
	if r.ConfirmAgain, err = call(ctx, client.ConfirmOutreach, confirm); err != nil {
		return r, fmt.Errorf("H5. ConfirmOutreach again: %w", err)
	}
	report("H5. ConfirmOutreach again", r.ConfirmAgain)

	const short = "H6. CheckAndConsume message, held 1 s"
	if r.ShortHold, err = call(ctx, client.CheckAndConsume, &pb.CheckAndConsumeRequest{
		SellerId: seller, CreatorId: "creator-h2", Action: pb.Action_ACTION_MESSAGE,
		RequestId: ExpiredHoldRequestID, HoldSeconds: ShortHoldSeconds,
	}); err != nil {
		return r, fmt.Errorf("%s: %w", short, err)
	}
	report(short, r.ShortHold)
	deadline := time.Now().Add(ExpiryDeadline)
	for {
		if r.AfterExpiry, err = call(ctx, client.GetStatus, status); err != nil {
			return r, fmt.Errorf("H7. GetStatus until the hold expired: %w", err)
		}
		s := r.AfterExpiry.GetStatus()
		if (s.GetHeldThisWeek() == 0 && s.GetUsedThisWeek() == 1) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	report("H7. GetStatus once the hold expired", r.AfterExpiry)
	_, r.ConfirmLateErr = call(ctx, client.ConfirmOutreach,
		&pb.ConfirmOutreachRequest{SellerId: seller, RequestId: ExpiredHoldRequestID})
	report("H8. ConfirmOutreach of the expired hold", r.ConfirmLateErr)
	return r, nil
}
