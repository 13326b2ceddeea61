package l7

import "testing"

// TestBodyBudgetShare: no agent holds more than its share of the budget — half, or one body of the
// largest size a policy reads — so that one agent's slow bodies leave the others room; what an
// agent releases is its own again.
func TestBodyBudgetShare(t *testing.T) {
	b := &bodyBudget{cap: 100}
	if s := b.share(10); s != 50 {
		t.Fatalf("share with 10-byte bodies: %d, want half of 100", s)
	}
	if s := b.share(70); s != 71 {
		t.Fatalf("share with 70-byte bodies: %d, want one whole body (71)", s)
	}
	if s := b.share(500); s != 100 {
		t.Fatalf("share with 500-byte bodies: %d, want the whole budget", s)
	}
	share := b.share(10)
	for i := range 5 {
		if !b.acquire("greedy", 10, share) {
			t.Fatalf("greedy's reservation %d of 10 bytes refused within its share", i+1)
		}
	}
	if b.acquire("greedy", 1, share) {
		t.Fatal("greedy got past its share")
	}
	if !b.acquire("other", 50, share) {
		t.Fatal("the other agent was left nothing")
	}
	if b.acquire("third", 1, share) {
		t.Fatal("a reservation past the whole budget")
	}
	b.release("greedy", 20)
	if !b.acquire("third", 20, share) || b.acquire("greedy", 1, share) {
		t.Fatal("released bytes are not available to the next agent, or the budget overflowed")
	}
	b.release("greedy", 30)
	b.release("other", 50)
	b.release("third", 20)
	if b.inUse() != 0 || len(b.byAgent) != 0 {
		t.Fatalf("after every release: %d in use, %v held", b.inUse(), b.byAgent)
	}
}
