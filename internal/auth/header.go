package auth

// MaxAuthorizationHeaderBytes caps the Authorization header the runtime reads: 8 KiB holds
// any token the token service signs with room to spare, and longer input is refused (431)
// before any parsing or hashing work is spent on it.
const MaxAuthorizationHeaderBytes = 8 << 10

// bearerScheme is the only scheme accepted (RFC 6750); it is matched case-insensitively.
const bearerScheme = "bearer"

// ParseAuthorization returns the credential of an "Authorization: Bearer <credential>" header.
// The scheme is case-insensitive and may be followed by one or more spaces; surrounding
// spaces and tabs are ignored. The credential must be visible ASCII with no spaces, which
// covers API keys (including brought-in ones) and JWTs. It allocates nothing: the credential
// is a substring of header.
//
// Errors are *Error: ErrMissingCredentials for an empty header, ErrHeaderTooLarge over
// MaxAuthorizationHeaderBytes, ErrMalformedAuthorization otherwise.
func ParseAuthorization(header string) (string, error) {
	if len(header) > MaxAuthorizationHeaderBytes {
		return "", ErrHeaderTooLarge
	}
	header = trimSpace(header)
	if header == "" {
		return "", ErrMissingCredentials
	}
	if len(header) <= len(bearerScheme) || !hasPrefixFold(header, bearerScheme) || !isSpace(header[len(bearerScheme)]) {
		return "", ErrMalformedAuthorization
	}
	cred := trimSpace(header[len(bearerScheme):])
	if cred == "" || !isCredential(cred) {
		return "", ErrMalformedAuthorization
	}
	return cred, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func trimSpace(s string) string {
	for s != "" && isSpace(s[0]) {
		s = s[1:]
	}
	for s != "" && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// hasPrefixFold is an ASCII case-insensitive prefix test for a lowercase prefix.
func hasPrefixFold(s, lowerPrefix string) bool {
	for i := 0; i < len(lowerPrefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lowerPrefix[i] {
			return false
		}
	}
	return true
}

// isCredential accepts visible ASCII only: RFC 6750's token68 is narrower, but keys brought
// by users may use any printable character, and anything else (spaces, controls, non-ASCII)
// is never part of a credential and would only make logs and comparisons ambiguous.
// It checks eight bytes at a time because it runs on every request, on every byte of the key.
func isCredential(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := load64(s[i : i+8])
		if hasByteBelow(w, '!') || hasByteAbove(w, '~') {
			return false
		}
	}
	for ; i < len(s); i++ {
		// One unsigned comparison for '!' <= c <= '~'.
		if s[i]-'!' > '~'-'!' {
			return false
		}
	}
	return true
}

const (
	lowBits  = 0x0101010101010101
	highBits = 0x8080808080808080
)

// load64 reads 8 bytes little-endian; the compiler turns it into one load.
func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// hasByteBelow reports whether a byte of w is < n, for n <= 128 ("hasless", Bit Twiddling Hacks).
func hasByteBelow(w uint64, n byte) bool { return (w-lowBits*uint64(n))&^w&highBits != 0 }

// hasByteAbove reports whether a byte of w is > n, for n <= 127 ("hasmore", Bit Twiddling Hacks).
func hasByteAbove(w uint64, n byte) bool { return ((w+lowBits*uint64(127-n))|w)&highBits != 0 }
