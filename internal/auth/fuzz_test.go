package auth

import (
	"errors"
	"strings"
	"testing"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func FuzzParseAuthorization(f *testing.F) {
	for _, seed := range []string{
		"", " ", "Bearer", "Bearer ", "Bearer abc", "bearer\tabc", "BEARER  hfk_a_b  ", "Basic abc",
		// The 8 KiB cap is covered by TestParseAuthorization: a seed that large slows every
		// mutation and minimization to a crawl.
		"Bearer a.b.c", "Bearer abc def", "Bearer \x00", "Bearer é", "Bearerabc",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		if isCredential(header) != isCredentialByByte(header) {
			t.Fatalf("isCredential(%q) disagrees with the byte-by-byte definition", header)
		}
		cred, err := ParseAuthorization(header)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || (e.Status != 401 && e.Status != 431) {
				t.Fatalf("error %v is not a 401/431 *Error", err)
			}
			if cred != "" {
				t.Fatalf("credential %q returned with an error", cred)
			}
			return
		}
		if cred == "" || len(header) > MaxAuthorizationHeaderBytes || !strings.Contains(header, cred) {
			t.Fatalf("ParseAuthorization(%q) = %q: empty, over the cap or not from the header", header, cred)
		}
		if !hasPrefixFold(trimSpace(header), bearerScheme) {
			t.Fatalf("ParseAuthorization(%q) accepted a scheme other than Bearer", header)
		}
		for i := 0; i < len(cred); i++ {
			if cred[i] <= ' ' || cred[i] > '~' {
				t.Fatalf("credential %q has byte %#x", cred, cred[i])
			}
		}
		// Parsing is stable: the canonical header gives the same credential back.
		if again, err := ParseAuthorization("Bearer " + cred); err != nil || again != cred {
			t.Fatalf("re-parsing %q gave %q, %v", cred, again, err)
		}
	})
}

// longestMessageWord bounds the credentials checked for appearing in a message: a short
// credential may be a word of a fixed message by chance ("invalid"), which leaks nothing.
const longestMessageWord = 24

// FuzzAuthenticate feeds arbitrary headers to an authenticator that knows one key and one
// token: nothing but those is accepted, refusals are typed, and no message quotes the input.
func FuzzAuthenticate(f *testing.F) {
	fx := newAuthFixture(f, servingv1alpha1.AuthModeAPIKeyOrJWT, nil)
	token := fx.token(f, nil)
	for _, seed := range []string{
		"Bearer " + fx.key, "Bearer " + token, "Bearer " + fx.ak.Status.KeyHash, "Bearer " + fx.key + "x",
		"Bearer " + token[:len(token)-2], "Bearer a.b.c", "Bearer eyJhbGciOiJub25lIn0.e30.", "bearer hfk_x_y",
		"", "Basic a", "Bearer ..", "Bearer hfk_a.b.c",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		p, err := fx.a.Authenticate(header)
		if err == nil {
			checkAccepted(t, fx, token, header, p)
			return
		}
		var e *Error
		if !errors.As(err, &e) || p != nil {
			t.Fatalf("Authenticate(%q) = %v, %v: want a nil principal and an *Error", header, p, err)
		}
		quoted := []string{trimSpace(header)}
		if cred, err := ParseAuthorization(header); err == nil {
			quoted = append(quoted, cred)
		}
		for _, q := range quoted {
			if len(q) > longestMessageWord && strings.Contains(e.Message, q) {
				t.Fatalf("message %q quotes the presented credential", e.Message)
			}
		}
	})
}

func checkAccepted(t *testing.T, fx *authFixture, token, header string, p *Principal) {
	t.Helper()
	cred, err := ParseAuthorization(header)
	if err != nil {
		t.Fatalf("Authenticate accepted %q that ParseAuthorization refuses: %v", header, err)
	}
	switch {
	case p.Method == MethodAPIKey && cred == fx.key:
	case p.Method == MethodJWT && cred == token:
	default:
		t.Fatalf("Authenticate(%q) accepted a credential that is neither the key nor the token: %+v", header, p)
	}
}
