package usage

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// maxGoneUIDs bounds the uids goneUIDs remembers; beyond, the oldest are forgotten (and
// confirmed again if they come back).
const maxGoneUIDs = 16384

// goneUIDs remembers the ApiKey uids the API server confirmed gone: their key was deleted, or
// created again as another object. A uid never comes back, so later usage for one is dropped
// without another read. This is what lets a batch naming many deleted keys through the
// limited confirming reads: each resend confirms some more, and none twice.
type goneUIDs struct {
	mu   sync.Mutex
	set  map[types.UID]struct{}
	ring []types.UID // insertion order, for forgetting the oldest
	next int
}

func (g *goneUIDs) has(uid types.UID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.set[uid]
	return ok
}

// addEntries remembers the uids of entries, except the live one (that of the key as the API
// server holds it; "" when the key does not exist) and entries without a uid.
func (g *goneUIDs) addEntries(entries []entry, live types.UID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.set == nil {
		g.set = make(map[types.UID]struct{})
	}
	for _, e := range entries {
		if e.uid == "" || e.uid == live {
			continue
		}
		if _, ok := g.set[e.uid]; ok {
			continue
		}
		if len(g.ring) < maxGoneUIDs {
			g.ring = append(g.ring, e.uid)
		} else {
			delete(g.set, g.ring[g.next])
			g.ring[g.next] = e.uid
			g.next = (g.next + 1) % maxGoneUIDs
		}
		g.set[e.uid] = struct{}{}
	}
}
