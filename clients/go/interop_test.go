// The interop test: the example's scenario (package scenario) against a live server at
// $QUOTA_AUTHORITY_TARGET, with every answer asserted. `make interop` (or
// `.venv/bin/python scripts/interop.py go-interop`) starts a fresh server and runs it.
package interop_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/quota-authority/quota-authority/clients/go/gen/quota_authority/v1"
	"github.com/quota-authority/quota-authority/clients/go/scenario"
)

// The default policy for a new seller: tier T0, 50 new creators a week, a starter pack of
// 1000, invites capped at 20,000 followers, 5 messages before a reply.
const (
	weeklyLimit  = 50
	starterPack  = 1000
	followerCap  = 20000
	maxMessages  = 5
	creator      = "creator-1"
	sellerPrefix = "interop-go"
)

func TestScenario(t *testing.T) {
	target := os.Getenv("QUOTA_AUTHORITY_TARGET")
	if target == "" {
		t.Fatal("QUOTA_AUTHORITY_TARGET is not set: the interop test needs a live server. " +
			"Run `make interop` (or `.venv/bin/python scripts/interop.py go-interop`) from " +
			"the repository root, which starts one and sets it.")
	}
	conn, err := scenario.Dial(target, os.Getenv("QUOTA_AUTHORITY_TOKEN"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seller := scenario.NewSellerID(sellerPrefix)
	t.Logf("target %s, seller %s, creator %s", target, seller, creator)

	report := func(step string, answer any) {
		if m, ok := answer.(proto.Message); ok {
			t.Logf("%s: %s", step, protojson.MarshalOptions{EmitUnpopulated: true}.Format(m))
		} else {
			t.Logf("%s: %v", step, answer)
		}
	}
	r, err := scenario.Run(context.Background(), pb.NewQuotaAuthorityServiceClient(conn),
		seller, creator, report)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("1 invite a new creator", func(t *testing.T) {
		checkDecision(t, r.Invite, true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, false)
		checkMessagesLeft(t, r.Invite, maxMessages) // invites do not count toward the five
		s := r.Invite.GetStatus()
		eq(t, "status.seller_id", s.GetSellerId(), seller)
		eq(t, "status.tier", s.GetTier(), "T0")
		eq(t, "status.unlimited", s.GetUnlimited(), false)
		eq(t, "status.weekly_limit", s.GetWeeklyLimit(), int64(weeklyLimit))
		eq(t, "status.used_this_week", s.GetUsedThisWeek(), int64(1))
		eq(t, "status.remaining_this_week", s.GetRemainingThisWeek(), int64(weeklyLimit-1+starterPack))
		eq(t, "status.starter_pack_remaining", s.GetStarterPackRemaining(), int64(starterPack))
		if s.MaxCreatorFollowers == nil {
			t.Error("status.max_creator_followers is absent, want 20000")
		} else {
			eq(t, "status.max_creator_followers", s.GetMaxCreatorFollowers(), int64(followerCap))
		}
		if !s.GetNextRefresh().AsTime().After(s.GetWeekStart().AsTime()) {
			t.Errorf("status.next_refresh %v is not after week_start %v",
				s.GetNextRefresh().AsTime(), s.GetWeekStart().AsTime())
		}
	})
	t.Run("2 message the creator counted this week", func(t *testing.T) {
		checkDecision(t, r.Message, true, pb.Reason_REASON_ALREADY_COUNTED_THIS_WEEK, pb.Charge_CHARGE_NONE, false)
		checkMessagesLeft(t, r.Message, maxMessages-1)
		eq(t, "status.used_this_week", r.Message.GetStatus().GetUsedThisWeek(), int64(1))
	})
	t.Run("3 status", func(t *testing.T) {
		s := r.Status.GetStatus()
		eq(t, "status.seller_id", s.GetSellerId(), seller)
		eq(t, "status.tier", s.GetTier(), "T0")
		eq(t, "status.used_this_week", s.GetUsedThisWeek(), int64(1))
		eq(t, "status.remaining_this_week", s.GetRemainingThisWeek(), int64(weeklyLimit-1+starterPack))
		eq(t, "status.starter_pack_remaining", s.GetStarterPackRemaining(), int64(starterPack))
	})
	t.Run("4 the creator replies", func(t *testing.T) {
		eq(t, "newly_connected", r.Reply.GetNewlyConnected(), true)
		eq(t, "replayed", r.Reply.GetReplayed(), false)
	})
	t.Run("5 message the connected creator", func(t *testing.T) {
		checkDecision(t, r.Connected, true, pb.Reason_REASON_CONNECTED_CREATOR, pb.Charge_CHARGE_NONE, false)
		eq(t, "status.used_this_week", r.Connected.GetStatus().GetUsedThisWeek(), int64(1))
	})
	t.Run("6 the creator blocks the seller", func(t *testing.T) {
		eq(t, "blocked_by_creator", r.Block.GetBlockedByCreator(), true)
		eq(t, "blocked_by_seller", r.Block.GetBlockedBySeller(), false)
		eq(t, "replayed", r.Block.GetReplayed(), false)
	})
	t.Run("7 a blocked message is denied", func(t *testing.T) {
		checkDecision(t, r.Blocked, false, pb.Reason_REASON_BLOCKED_BY_CREATOR, pb.Charge_CHARGE_NONE, false)
	})
	t.Run("8 the first invite again is replayed", func(t *testing.T) {
		checkDecision(t, r.InviteRetry, true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, true)
		eq(t, "status.used_this_week", r.InviteRetry.GetStatus().GetUsedThisWeek(), int64(1))
		eq(t, "status.remaining_this_week", r.InviteRetry.GetStatus().GetRemainingThisWeek(),
			int64(weeklyLimit-1+starterPack))
	})
	t.Run("9 an empty seller_id is INVALID_ARGUMENT naming seller_id", func(t *testing.T) {
		if r.InvalidErr == nil {
			t.Fatal("no error, want INVALID_ARGUMENT")
		}
		st, ok := status.FromError(r.InvalidErr)
		if !ok {
			t.Fatalf("not a gRPC status: %v", r.InvalidErr)
		}
		eq(t, "code", st.Code(), codes.InvalidArgument)
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		found := false
		for _, f := range fields {
			found = found || f == "seller_id"
		}
		if !found {
			t.Errorf("BadRequest field violations name %q, want one naming seller_id (details %v)",
				fields, st.Details())
		}
	})

	// Steps 10 to 18: batches (R15) and releases (R14). Before them, 1 creator is charged
	// (step 1) and the scenario's creator is connected and blocks the seller.
	t.Run("10 a best-effort batch applies the allowed items and denies the others", func(t *testing.T) {
		b := r.BestEffort
		checkBatch(t, b, true, false, []item{
			{true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, ptr(maxMessages)},
			// counted by item 0: free, and counts toward the five (R5, R6)
			{true, pb.Reason_REASON_ALREADY_COUNTED_THIS_WEEK, pb.Charge_CHARGE_NONE, ptr(maxMessages - 1)},
			{false, pb.Reason_REASON_FOLLOWER_LIMIT_EXCEEDED, pb.Charge_CHARGE_NONE, ptr(maxMessages)}, // R7
			{false, pb.Reason_REASON_BLOCKED_BY_CREATOR, pb.Charge_CHARGE_NONE, nil},                   // R8, connected
			{true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, ptr(maxMessages - 1)},
		})
		checkQuota(t, b.GetStatus(), seller, 3, starterPack)
	})
	t.Run("11 an all-or-nothing batch with a denied item applies nothing", func(t *testing.T) {
		b := r.AllOrNothingDenied
		// Every item is answered allowed = false, with the reason it would have had.
		checkBatch(t, b, false, false, []item{
			{false, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_NONE, ptr(maxMessages)},
			{false, pb.Reason_REASON_FOLLOWER_LIMIT_EXCEEDED, pb.Charge_CHARGE_NONE, ptr(maxMessages)},
		})
		checkQuota(t, b.GetStatus(), seller, 3, starterPack)
	})
	t.Run("12 an all-or-nothing batch without a denied item applies every item", func(t *testing.T) {
		b := r.AllOrNothingApplied
		checkBatch(t, b, true, false, []item{
			{true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, ptr(maxMessages)},
			{true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, ptr(maxMessages - 1)},
		})
		checkQuota(t, b.GetStatus(), seller, 5, starterPack)
	})
	t.Run("13 an invite to a new creator is charged", func(t *testing.T) {
		checkDecision(t, r.SingleInvite, true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, false)
		checkQuota(t, r.SingleInvite.GetStatus(), seller, 6, starterPack)
	})
	t.Run("14 releasing the invite by its request_id gives the weekly unit back", func(t *testing.T) {
		checkRelease(t, r.ReleaseSingle, pb.Charge_CHARGE_WEEKLY, false, false)
		checkQuota(t, r.ReleaseSingle.GetStatus(), seller, 5, starterPack)
	})
	t.Run("15 releasing a batch item by its index gives the weekly unit back", func(t *testing.T) {
		checkRelease(t, r.ReleaseItem, pb.Charge_CHARGE_WEEKLY, false, false)
		checkQuota(t, r.ReleaseItem.GetStatus(), seller, 4, starterPack)
	})
	t.Run("16 the same release again is replayed and gives nothing more back", func(t *testing.T) {
		checkRelease(t, r.ReleaseItemAgain, pb.Charge_CHARGE_WEEKLY, false, true)
		checkQuota(t, r.ReleaseItemAgain.GetStatus(), seller, 4, starterPack)
	})
	t.Run("17 releasing an item that charged nothing is FAILED_PRECONDITION NOTHING_CHARGED", func(t *testing.T) {
		checkErrorInfo(t, r.NothingChargedErr, codes.FailedPrecondition, "NOTHING_CHARGED")
	})
	t.Run("18 releasing a request_id never sent is NOT_FOUND OUTREACH_NOT_FOUND", func(t *testing.T) {
		checkErrorInfo(t, r.NotFoundErr, codes.NotFound, "OUTREACH_NOT_FOUND")
	})
}

// item is the expected answer to one item of a batch; messagesLeft nil means absent (set only
// for unconnected creators).
type item struct {
	allowed      bool
	reason       pb.Reason
	charged      pb.Charge
	messagesLeft *int64
}

func ptr(n int64) *int64 { return &n }

// checkBatch asserts a BatchCheckAndConsume answer, item by item.
func checkBatch(t *testing.T, got *pb.BatchCheckAndConsumeResponse, applied, replayed bool, want []item) {
	t.Helper()
	if got == nil {
		t.Fatal("no answer")
	}
	eq(t, "applied", got.GetApplied(), applied)
	eq(t, "replayed", got.GetReplayed(), replayed)
	if len(got.GetResults()) != len(want) {
		t.Fatalf("%d results, want one per item: %d", len(got.GetResults()), len(want))
	}
	for n, w := range want {
		g := got.GetResults()[n]
		at := fmt.Sprintf("results[%d].", n)
		eq(t, at+"allowed", g.GetAllowed(), w.allowed)
		eq(t, at+"reason", g.GetReason(), w.reason)
		eq(t, at+"charged", g.GetCharged(), w.charged)
		switch {
		case w.messagesLeft == nil && g.MessagesBeforeReplyRemaining != nil:
			t.Errorf("%smessages_before_reply_remaining = %d, want it absent", at, g.GetMessagesBeforeReplyRemaining())
		case w.messagesLeft != nil && g.MessagesBeforeReplyRemaining == nil:
			t.Errorf("%smessages_before_reply_remaining is absent, want %d", at, *w.messagesLeft)
		case w.messagesLeft != nil:
			eq(t, at+"messages_before_reply_remaining", g.GetMessagesBeforeReplyRemaining(), *w.messagesLeft)
		}
	}
}

// checkQuota asserts a status after used charged creators this week, all from the weekly
// quota, with pack starter pack units left.
func checkQuota(t *testing.T, s *pb.QuotaStatus, seller string, used, pack int64) {
	t.Helper()
	eq(t, "status.seller_id", s.GetSellerId(), seller)
	eq(t, "status.used_this_week", s.GetUsedThisWeek(), used)
	eq(t, "status.remaining_this_week", s.GetRemainingThisWeek(), weeklyLimit-used+pack)
	eq(t, "status.starter_pack_remaining", s.GetStarterPackRemaining(), pack)
}

// checkRelease asserts a ReleaseOutreach answer.
func checkRelease(t *testing.T, got *pb.ReleaseOutreachResponse, returned pb.Charge, stillCounted, replayed bool) {
	t.Helper()
	if got == nil {
		t.Fatal("no answer")
	}
	eq(t, "returned", got.GetReturned(), returned)
	eq(t, "still_counted", got.GetStillCounted(), stillCounted)
	eq(t, "replayed", got.GetReplayed(), replayed)
}

// checkErrorInfo asserts that err is a gRPC error with code and a google.rpc.ErrorInfo of
// reason.
func checkErrorInfo(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s with ErrorInfo reason %s", code, reason)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a gRPC status: %v", err)
	}
	eq(t, "code", st.Code(), code)
	var reasons []string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reasons = append(reasons, info.GetReason())
		}
	}
	if len(reasons) != 1 || reasons[0] != reason {
		t.Errorf("ErrorInfo reasons %q, want [%q] (details %v)", reasons, reason, st.Details())
	}
}

// TestHolds: the holds scenario (R16, scenario.RunHolds) against the live server: a hold
// confirmed (CONFIRMED, the unit kept: held_this_week back to 0, used_this_week unchanged),
// then a 1-second hold left to expire (waited for until the status shows its unit back),
// which confirming then refuses: FAILED_PRECONDITION HOLD_EXPIRED.
func TestHolds(t *testing.T) {
	target := os.Getenv("QUOTA_AUTHORITY_TARGET")
	if target == "" {
		t.Fatal("QUOTA_AUTHORITY_TARGET is not set: run `make interop`")
	}
	conn, err := scenario.Dial(target, os.Getenv("QUOTA_AUTHORITY_TOKEN"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seller := scenario.NewSellerID(sellerPrefix + "-holds")
	report := func(step string, answer any) {
		if m, ok := answer.(proto.Message); ok {
			t.Logf("%s: %s", step, protojson.MarshalOptions{EmitUnpopulated: true}.Format(m))
		} else {
			t.Logf("%s: %v", step, answer)
		}
	}
	r, err := scenario.RunHolds(context.Background(), pb.NewQuotaAuthorityServiceClient(conn),
		seller, report)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("a hold confirmed", func(t *testing.T) {
		checkDecision(t, r.Held, true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, false)
		if r.Held.GetHoldExpiresAt() == nil {
			t.Error("hold_expires_at is absent, want the hold's expiry")
		}
		checkQuota(t, r.WhileHeld.GetStatus(), seller, 1, starterPack)
		eq(t, "held_this_week while held", r.WhileHeld.GetStatus().GetHeldThisWeek(), int64(1))
		eq(t, "state", r.Confirmed.GetState(), pb.HoldState_HOLD_STATE_CONFIRMED)
		eq(t, "charged", r.Confirmed.GetCharged(), pb.Charge_CHARGE_WEEKLY)
		checkQuota(t, r.AfterConfirm.GetStatus(), seller, 1, starterPack) // the unit kept
		eq(t, "held_this_week once confirmed", r.AfterConfirm.GetStatus().GetHeldThisWeek(), int64(0))
		eq(t, "state again", r.ConfirmAgain.GetState(), pb.HoldState_HOLD_STATE_CONFIRMED)
	})
	t.Run("a hold expired", func(t *testing.T) {
		checkDecision(t, r.ShortHold, true, pb.Reason_REASON_NEW_CREATOR, pb.Charge_CHARGE_WEEKLY, false)
		checkQuota(t, r.ShortHold.GetStatus(), seller, 2, starterPack)
		// Within scenario.ExpiryDeadline, the unit went back by itself.
		checkQuota(t, r.AfterExpiry.GetStatus(), seller, 1, starterPack)
		eq(t, "held_this_week once expired", r.AfterExpiry.GetStatus().GetHeldThisWeek(), int64(0))
		checkErrorInfo(t, r.ConfirmLateErr, codes.FailedPrecondition, "HOLD_EXPIRED")
	})
}

// TestAdjustmentRefusedWithoutTheRole: on the server with a callers file
// ($QUOTA_AUTHORITY_GUARDED_TARGET, which `make interop` starts), a caller with every role
// but admin ($QUOTA_AUTHORITY_GUARDED_TOKEN) may read the seller's status but not adjust its
// limit: AdjustQuota is admin only (R17), PERMISSION_DENIED, and the limit is unchanged.
func TestAdjustmentRefusedWithoutTheRole(t *testing.T) {
	target, token := os.Getenv("QUOTA_AUTHORITY_GUARDED_TARGET"), os.Getenv("QUOTA_AUTHORITY_GUARDED_TOKEN")
	if target == "" || token == "" {
		t.Skip("QUOTA_AUTHORITY_GUARDED_TARGET and _TOKEN are not set: `make interop` sets them")
	}
	conn, err := scenario.Dial(target, token)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewQuotaAuthorityServiceClient(conn)
	ctx := context.Background()
	seller := scenario.NewSellerID(sellerPrefix + "-adjust")

	_, err = client.AdjustQuota(ctx, &pb.AdjustQuotaRequest{
		SellerId: seller, Delta: 10, Note: "incident 7", RequestId: seller + "-adjust-1"})
	if got := status.Code(err); got != codes.PermissionDenied {
		t.Fatalf("AdjustQuota without the admin role: %v (%v), want PermissionDenied", got, err)
	}
	read, err := client.GetStatus(ctx, &pb.GetStatusRequest{SellerId: seller})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "status.weekly_limit", read.GetStatus().GetWeeklyLimit(), int64(weeklyLimit))
	eq(t, "status.adjusted_this_week", read.GetStatus().GetAdjustedThisWeek(), int64(0))
}

// checkDecision asserts a CheckAndConsume answer.
func checkDecision(t *testing.T, got *pb.CheckAndConsumeResponse, allowed bool, reason pb.Reason,
	charged pb.Charge, replayed bool) {
	t.Helper()
	if got == nil {
		t.Fatal("no answer")
	}
	eq(t, "allowed", got.GetAllowed(), allowed)
	eq(t, "reason", got.GetReason(), reason)
	eq(t, "charged", got.GetCharged(), charged)
	eq(t, "replayed", got.GetReplayed(), replayed)
}

// checkMessagesLeft asserts messages_before_reply_remaining, which is set only for
// unconnected creators.
func checkMessagesLeft(t *testing.T, got *pb.CheckAndConsumeResponse, want int64) {
	t.Helper()
	if got.MessagesBeforeReplyRemaining == nil {
		t.Errorf("messages_before_reply_remaining is absent, want %d", want)
		return
	}
	eq(t, "messages_before_reply_remaining", got.GetMessagesBeforeReplyRemaining(), want)
}

func eq[T comparable](t *testing.T, field string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", field, got, want)
	}
}
