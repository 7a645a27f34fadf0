package signing

import (
	"errors"
	"fmt"
	"time"
)

// RetirementSkew is how much longer than the longest token lifetime a retired key stays
// published. A token signed by a key expires at most maxTokenTTL after the key retired, but
// (1) other manager replicas keep signing with the old key until their caches see the
// rotation, (2) runtimes' clocks may run behind the manager's, and (3) verifiers may allow a
// little leeway on exp. Five minutes covers all three with room to spare and costs nothing
// but one extra key in the JWKS for a few minutes.
const RetirementSkew = 5 * time.Minute

// KeySet is the manager's signing keys. Keys[0] is the active key, which signs every new
// token; the rest are retired keys, newest first, still published so the tokens they signed
// keep verifying until those expire.
type KeySet struct {
	Keys []Key
}

// Active returns the signing key, if there is one.
func (s KeySet) Active() (Key, bool) {
	if len(s.Keys) == 0 {
		return Key{}, false
	}
	return s.Keys[0], true
}

// Rotate brings s up to date at now: an empty set gets a key; an active key at least period
// old, or of another algorithm than alg, is retired at now behind a new active key; a retired
// key is dropped once every token it can have signed has expired (RetiredAt + maxTokenTTL +
// RetirementSkew). changed reports whether the result differs from s, which is not modified.
// Apart from key generation the result depends only on the arguments.
func Rotate(s KeySet, alg Algorithm, now time.Time, period, maxTokenTTL time.Duration) (KeySet, bool, error) {
	if err := checkSchedule(alg, period, maxTokenTTL); err != nil {
		return s, false, err
	}
	now = now.UTC()
	keys, changed := dropExpired(s.Keys, now, maxTokenTTL)
	if needsNewKey(keys, alg, now, period) {
		k, err := NewKey(alg, now)
		if err != nil {
			return s, false, err
		}
		if len(keys) > 0 {
			keys[0].RetiredAt = now // keys is dropExpired's copy
		}
		keys = append([]Key{k}, keys...)
		changed = true
	}
	return KeySet{Keys: keys}, changed, nil
}

func checkSchedule(alg Algorithm, period, maxTokenTTL time.Duration) error {
	if _, err := ParseAlgorithm(string(alg)); err != nil {
		return err
	}
	if period <= 0 {
		return fmt.Errorf("key rotation period must be positive, got %s", period)
	}
	if maxTokenTTL < 0 {
		return errors.New("maximum token lifetime must not be negative")
	}
	return nil
}

// dropExpired returns a copy of keys without the retired keys no token can need any more.
// A retired key with no RetiredAt (a hand-edited Secret) is treated as retired at now, so it
// is kept for a full token lifetime rather than dropped at once.
func dropExpired(keys []Key, now time.Time, maxTokenTTL time.Duration) ([]Key, bool) {
	out := make([]Key, 0, len(keys)+1)
	changed := false
	for i, k := range keys {
		if i > 0 && k.RetiredAt.IsZero() {
			k.RetiredAt, changed = now, true
		}
		if i > 0 && !now.Before(dropTime(k, maxTokenTTL)) {
			changed = true
			continue
		}
		out = append(out, k)
	}
	return out, changed
}

// dropTime is when a retired key may leave the JWKS.
func dropTime(k Key, maxTokenTTL time.Duration) time.Time {
	return k.RetiredAt.Add(maxTokenTTL + RetirementSkew)
}

func needsNewKey(keys []Key, alg Algorithm, now time.Time, period time.Duration) bool {
	if len(keys) == 0 {
		return true
	}
	active := keys[0]
	return active.Algorithm != alg || !now.Before(active.CreatedAt.Add(period))
}

// NextEvent is when Rotate would next change s on its own: the active key reaching period
// or the earliest retired key becoming droppable. The controller requeues at that instant.
// For an empty set it returns the zero Time: Rotate has work to do now. A change of algorithm
// is not an event in time; the controller calls Rotate on every reconcile anyway.
func NextEvent(s KeySet, period, maxTokenTTL time.Duration) time.Time {
	if len(s.Keys) == 0 {
		return time.Time{}
	}
	next := s.Keys[0].CreatedAt.Add(period)
	for _, k := range s.Keys[1:] {
		if k.RetiredAt.IsZero() {
			return time.Time{} // Rotate will stamp it now
		}
		next = earliest(next, dropTime(k, maxTokenTTL))
	}
	return next
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
