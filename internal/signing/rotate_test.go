package signing

import (
	"testing"
	"time"
)

const (
	period = 720 * time.Hour
	maxTTL = time.Hour
)

func rotate(t *testing.T, s KeySet, alg Algorithm, now time.Time) (KeySet, bool) {
	t.Helper()
	out, changed, err := Rotate(s, alg, now, period, maxTTL)
	if err != nil {
		t.Fatal(err)
	}
	return out, changed
}

func kids(s KeySet) []string {
	out := make([]string, len(s.Keys))
	for i, k := range s.Keys {
		out[i] = k.ID
	}
	return out
}

// TestRotationTimeline follows one key through its life: created, active for exactly one
// period, retired, published until the last token it signed has expired, dropped.
func TestRotationTimeline(t *testing.T) {
	s, changed := rotate(t, KeySet{}, ES256, t0)
	if !changed || len(s.Keys) != 1 || !NextEvent(s, period, maxTTL).Equal(t0.Add(period)) {
		t.Fatalf("empty set: changed=%v keys=%v next=%v", changed, kids(s), NextEvent(s, period, maxTTL))
	}
	first := s.Keys[0]
	if _, changed := rotate(t, s, ES256, t0.Add(period-time.Nanosecond)); changed {
		t.Fatal("rotated before the period ended")
	}

	// The last token the first key signs, just before rotation, with the longest lifetime.
	var st Store
	st.Set(s)
	t1 := t0.Add(period)
	lastToken, err := st.Sign(testClaims(t1.Add(-time.Second), maxTTL))
	if err != nil {
		t.Fatal(err)
	}

	s, changed = rotate(t, s, ES256, t1)
	if !changed || len(s.Keys) != 2 || s.Keys[1].ID != first.ID || !s.Keys[1].RetiredAt.Equal(t1) ||
		!s.Keys[0].RetiredAt.IsZero() || !s.Keys[0].CreatedAt.Equal(t1) {
		t.Fatalf("after period: changed=%v keys=%+v", changed, s.Keys)
	}
	drop := t1.Add(maxTTL + RetirementSkew)
	if next := NextEvent(s, period, maxTTL); !next.Equal(drop) {
		t.Fatalf("next event %v, want %v", next, drop)
	}

	// Until the drop instant the retired key stays, and the old token verifies until its exp.
	kept, changed := rotate(t, s, ES256, drop.Add(-time.Nanosecond))
	if changed || len(kept.Keys) != 2 {
		t.Fatalf("retired key dropped early: %v", kids(kept))
	}
	jwks, _ := kept.JWKS()
	if _, err := verify(t, jwks, lastToken, t1.Add(maxTTL-2*time.Second)); err != nil {
		t.Fatalf("token signed before rotation no longer verifies: %v", err)
	}

	s, changed = rotate(t, s, ES256, drop)
	if !changed || len(s.Keys) != 1 || s.Keys[0].ID == first.ID {
		t.Fatalf("at drop time: changed=%v keys=%v", changed, kids(s))
	}
	if next := NextEvent(s, period, maxTTL); !next.Equal(t1.Add(period)) {
		t.Fatalf("next event %v", next)
	}
}

func TestRotateAlgorithmChange(t *testing.T) {
	s, _ := rotate(t, KeySet{}, ES256, t0)
	s2, changed := rotate(t, s, RS256, t0.Add(time.Minute))
	if !changed || s2.Keys[0].Algorithm != RS256 || s2.Keys[1].ID != s.Keys[0].ID {
		t.Fatalf("algorithm change: changed=%v keys=%+v", changed, s2.Keys)
	}
}

// TestRotatePeriodShorterThanTTL keeps several retired keys when tokens outlive the period.
func TestRotatePeriodShorterThanTTL(t *testing.T) {
	const p, ttl = 10 * time.Minute, time.Hour
	var s KeySet
	now := t0
	for range 6 {
		var err error
		if s, _, err = Rotate(s, ES256, now, p, ttl); err != nil {
			t.Fatal(err)
		}
		now = now.Add(p)
	}
	// Keys retired at t0+10m ... t0+50m are all within ttl+skew of t0+50m.
	if len(s.Keys) != 6 {
		t.Fatalf("%d keys, want 6", len(s.Keys))
	}
	for i := 1; i < len(s.Keys); i++ {
		if !s.Keys[i].RetiredAt.Before(s.Keys[i-1].CreatedAt.Add(time.Nanosecond)) {
			t.Fatalf("retired keys not newest first: %+v", s.Keys)
		}
	}
}

func TestRotateDoesNotModifyInput(t *testing.T) {
	s, _ := rotate(t, KeySet{}, ES256, t0)
	active := s.Keys[0]
	if _, _, err := Rotate(s, ES256, t0.Add(period), period, maxTTL); err != nil {
		t.Fatal(err)
	}
	if s.Keys[0] != active {
		t.Fatal("Rotate modified its input")
	}
}

// TestRotateStampsUnretiredKey covers a hand-edited set whose retired key lost its RetiredAt:
// it is kept a full token lifetime from now, not dropped at once.
func TestRotateStampsUnretiredKey(t *testing.T) {
	s := KeySet{Keys: []Key{mustKey(t, ES256, t0), mustKey(t, ES256, t0)}}
	if next := NextEvent(s, period, maxTTL); !next.IsZero() {
		t.Fatalf("next event %v, want now", next)
	}
	now := t0.Add(time.Hour)
	out, changed := rotate(t, s, ES256, now)
	if !changed || len(out.Keys) != 2 || !out.Keys[1].RetiredAt.Equal(now) {
		t.Fatalf("keys %+v", out.Keys)
	}
}

func TestRotateRejectsBadSchedule(t *testing.T) {
	cases := []struct {
		alg         Algorithm
		period, ttl time.Duration
	}{{"none", period, maxTTL}, {ES256, 0, maxTTL}, {ES256, -time.Hour, maxTTL}, {ES256, period, -time.Second}}
	for _, c := range cases {
		if _, _, err := Rotate(KeySet{}, c.alg, t0, c.period, c.ttl); err == nil {
			t.Errorf("Rotate(%q, %v, %v) succeeded", c.alg, c.period, c.ttl)
		}
	}
	if !NextEvent(KeySet{}, period, maxTTL).IsZero() {
		t.Error("NextEvent of an empty set is not now")
	}
}
