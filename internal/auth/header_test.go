package auth

import (
	"strings"
	"testing"
)

func TestParseAuthorization(t *testing.T) {
	long := "Bearer " + strings.Repeat("a", MaxAuthorizationHeaderBytes-len("Bearer "))
	cases := []struct {
		name, header, want string
		wantErr            *Error
	}{
		{name: "bearer", header: "Bearer hfk_abc_def", want: "hfk_abc_def"},
		{name: "lowercase scheme", header: "bearer abc", want: "abc"},
		{name: "uppercase scheme", header: "BEARER abc", want: "abc"},
		{name: "several spaces", header: "Bearer    abc", want: "abc"},
		{name: "tab", header: "Bearer\tabc", want: "abc"},
		{name: "surrounding spaces", header: "  Bearer abc  ", want: "abc"},
		{name: "jwt", header: "Bearer aaa.bbb.ccc", want: "aaa.bbb.ccc"},
		{name: "at the cap", header: long, want: long[len("Bearer "):]},

		{name: "empty", header: "", wantErr: ErrMissingCredentials},
		{name: "only spaces", header: "   ", wantErr: ErrMissingCredentials},
		{name: "over the cap", header: long + "a", wantErr: ErrHeaderTooLarge},
		{name: "basic scheme", header: "Basic dXNlcjpwYXNz", wantErr: ErrMalformedAuthorization},
		{name: "no credential", header: "Bearer", wantErr: ErrMalformedAuthorization},
		{name: "no credential, trailing space", header: "Bearer   ", wantErr: ErrMalformedAuthorization},
		{name: "no separator", header: "Bearerabc", wantErr: ErrMalformedAuthorization},
		{name: "credential with a space", header: "Bearer abc def", wantErr: ErrMalformedAuthorization},
		{name: "control character", header: "Bearer abc\x00", wantErr: ErrMalformedAuthorization},
		{name: "newline", header: "Bearer abc\ndef", wantErr: ErrMalformedAuthorization},
		{name: "non-ASCII", header: "Bearer clé", wantErr: ErrMalformedAuthorization},
		{name: "bare credential", header: "hfk_abc_def", wantErr: ErrMalformedAuthorization},
		{name: "scheme lookalike", header: "Bearor abc", wantErr: ErrMalformedAuthorization},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAuthorization(tc.header)
			if tc.wantErr != nil {
				wantErr(t, err, tc.wantErr)
				if got != "" {
					t.Errorf("credential %q returned with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthorization(%q): %v", tc.header, err)
			}
			if got != tc.want {
				t.Errorf("credential = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseAuthorizationAllocatesNothing(t *testing.T) {
	for _, h := range []string{"Bearer hfk_abc_def", "", "Basic x", strings.Repeat("x", MaxAuthorizationHeaderBytes+1)} {
		if n := testing.AllocsPerRun(100, func() { _, _ = ParseAuthorization(h) }); n != 0 {
			t.Errorf("ParseAuthorization(%.20q...) allocates %v times", h, n)
		}
	}
}

// isCredentialByByte is the plain definition isCredential's word-at-a-time loop must match.
func isCredentialByByte(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// TestIsCredentialEveryByte puts every byte value at every position of 1- to 17-byte strings
// (word loop, tail loop and both), so each check of the word-at-a-time loop is exercised.
func TestIsCredentialEveryByte(t *testing.T) {
	for n := 1; n <= 17; n++ {
		for pos := range n {
			for c := range 256 {
				b := []byte(strings.Repeat("a", n))
				b[pos] = byte(c)
				s := string(b)
				if got, want := isCredential(s), isCredentialByByte(s); got != want {
					t.Fatalf("isCredential(%q) = %v, want %v", s, got, want)
				}
			}
		}
	}
}
