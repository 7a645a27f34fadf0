package signing

import (
	"testing"
	"time"
)

func BenchmarkSign(b *testing.B) {
	for _, alg := range []Algorithm{RS256, ES256} {
		b.Run(string(alg), func(b *testing.B) {
			var st Store
			st.Set(KeySet{Keys: []Key{mustKey(b, alg, t0)}})
			claims := testClaims(t0, 15*time.Minute)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := st.Sign(claims); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
