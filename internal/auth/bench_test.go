package auth

import (
	"fmt"
	"runtime"
	"testing"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// benchHeaders is how many distinct keys a benchmark cycles through, so the figure includes
// the cache misses of a large index rather than one hot entry.
const benchHeaders = 1024

// BenchmarkAuthenticateAPIKey is the hit path (parse, SHA-256, lookup, policy check) with
// indexes of different sizes: it should be flat and allocate nothing.
func BenchmarkAuthenticateAPIKey(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		a, headers := benchAuthenticator(b, n)
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			i := 0
			for b.Loop() {
				if _, err := a.Authenticate(headers[i%len(headers)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("keys=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := a.Authenticate(headers[i%len(headers)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// reportCPU pins the benchmark to its OS thread and, when the returned func runs after the
// loop, reports the thread's CPU time per op as cpu-ns/op.
func reportCPU(b *testing.B) func() {
	runtime.LockOSThread()
	start, ok := threadCPUTime()
	return func() {
		defer runtime.UnlockOSThread()
		end, ok2 := threadCPUTime()
		if ok && ok2 && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func benchAuthenticator(b *testing.B, n int) (*Authenticator, []string) {
	b.Helper()
	a, err := NewAuthenticator(testNS, servingv1alpha1.AuthModeAPIKeyOrJWT)
	if err != nil {
		b.Fatal(err)
	}
	headers := make([]string, 0, min(n, benchHeaders))
	for i := range n {
		key, keyID := newKey(b)
		mustUpsert(b, a.Keys(), makeApiKey(fmt.Sprintf("k%d", i)).Key(keyID, key).Models("llama").Obj())
		if len(headers) < cap(headers) {
			headers = append(headers, "Bearer "+key)
		}
	}
	return a, headers
}

func BenchmarkVerifyJWT(b *testing.B) {
	clock := newFakeClock()
	for _, s := range []*testSigner{newRSASigner("rsa-1"), newECSigner(b, "ec-1")} {
		v := NewVerifier(testNS, clock.Now)
		if err := v.SetJWKS(jwksOf(b, s), ""); err != nil {
			b.Fatal(err)
		}
		token := s.sign(b, tokenClaims("chat", "kid123", t0))
		b.Run(s.method.Alg(), func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if _, _, err := v.Verify(token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAuthenticateJWT is a whole token request: verify plus the ApiKey check.
func BenchmarkAuthenticateJWT(b *testing.B) {
	fx := newAuthFixture(b, servingv1alpha1.AuthModeAPIKeyOrJWT, nil)
	header := "Bearer " + fx.token(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fx.a.Authenticate(header); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHashPresentedKey is the SHA-256 of a key alone, the floor under the API key
// figures: run it beside them to see what the rest of the hit path adds on the machine at hand.
func BenchmarkHashPresentedKey(b *testing.B) {
	key, _ := newKey(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	var h KeyHash
	for b.Loop() {
		h = hashPresented(key)
	}
	_ = h
}

// BenchmarkIndexLookup compares, on the same index and keys, the lookup requests take
// (memoized keys: one SHA-256 block) with the lookup by the hash of the whole key (two
// blocks), which is what a key's first request and keys of other shapes take.
func BenchmarkIndexLookup(b *testing.B) {
	a, headers := benchAuthenticator(b, 100000)
	x := a.Keys()
	keys := make([]string, len(headers))
	for i, h := range headers {
		keys[i] = h[len("Bearer "):]
		if x.lookup(keys[i]) == nil {
			b.Fatal("key not found")
		}
	}
	for name, lookup := range map[string]func(string) *keyEntry{"memoized": x.lookup, "whole-key-hash": x.lookupHash} {
		b.Run(name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if lookup(keys[i%len(keys)]) == nil {
					b.Fatal("key not found")
				}
				i++
			}
		})
	}
}
