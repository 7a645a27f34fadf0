package testengine

import (
	"strings"
	"testing"
)

// Content strings are counted straight from the request bytes: the same count as for a
// string, and no allocation on non-ASCII text either.
func TestCountWordsBytes(t *testing.T) {
	for _, s := range []string{"", "a b", "héllo wörld", "x\u2003y z", "\xffbad utf-8 é"} {
		b := []byte(s)
		if got, want := countWords(b), len(strings.Fields(s)); got != want {
			t.Errorf("countWords(%q) = %d, want %d", s, got, want)
		}
		if n := testing.AllocsPerRun(100, func() { countWords(b) }); n != 0 {
			t.Errorf("countWords(%q) allocates %.0f times", s, n)
		}
	}
}
