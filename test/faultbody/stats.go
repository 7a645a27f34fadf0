package faultbody

import (
	"maps"
	"net/http"
	"slices"
)

// Stats counts what a test double served since it started or was reset. K names the kinds
// of request the double tells apart.
type Stats[K comparable] struct {
	// Requests counts requests per kind, whatever their answer.
	Requests map[K]int
	// BodyBytes is the number of content bytes written, including bytes of responses cut
	// short.
	BodyBytes int64
	// ItemBytes splits BodyBytes per file or object (the double documents its keys).
	ItemBytes map[string]int64
	// Auth holds the Authorization header of each request per kind, in arrival order ("" when
	// absent).
	Auth map[K][]string
}

// NewStats returns empty counters.
func NewStats[K comparable]() Stats[K] {
	return Stats[K]{Requests: map[K]int{}, ItemBytes: map[string]int64{}, Auth: map[K][]string{}}
}

// TotalRequests is the number of requests of all kinds.
func (s Stats[K]) TotalRequests() int {
	n := 0
	for _, c := range s.Requests {
		n += c
	}
	return n
}

// Clone returns a deep copy, for handing out while the double keeps counting.
func (s Stats[K]) Clone() Stats[K] {
	out := Stats[K]{Requests: maps.Clone(s.Requests), BodyBytes: s.BodyBytes, ItemBytes: maps.Clone(s.ItemBytes), Auth: map[K][]string{}}
	for k, v := range s.Auth {
		out.Auth[k] = slices.Clone(v)
	}
	return out
}

// Request counts a request of kind. Callers hold their own lock.
func (s *Stats[K]) Request(kind K, r *http.Request) {
	s.Requests[kind]++
	s.Auth[kind] = append(s.Auth[kind], r.Header.Get("Authorization"))
}

// Body counts n body bytes of item (negative to correct a short write). Callers hold their
// own lock.
func (s *Stats[K]) Body(item string, n int64) {
	s.BodyBytes += n
	s.ItemBytes[item] += n
}
