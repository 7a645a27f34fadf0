package signing

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// jwkSet is an RFC 7517 JWK Set.
type jwkSet struct {
	Keys []publicJWK `json:"keys"`
}

// JWKS renders the public keys of s (active first, then retired, newest first) as an RFC 7517
// JWK Set. It never contains private parameters. The output is deterministic, so a publisher
// can skip writes when nothing changed.
func (s KeySet) JWKS() ([]byte, error) {
	set := jwkSet{Keys: make([]publicJWK, 0, len(s.Keys))}
	for _, k := range s.Keys {
		j, err := jwkOf(k.Private.Public())
		if err != nil {
			return nil, fmt.Errorf("publishing signing key %s: %w", k.ID, err)
		}
		j.Use, j.Alg, j.Kid = "sig", string(k.Algorithm), k.ID
		set.Keys = append(set.Keys, j)
	}
	out, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("encoding JWKS: %w", err)
	}
	return out, nil
}

// ParseJWKS reads a JWK Set as JWKS writes it and returns the public keys by kid: an
// *rsa.PublicKey for RS256 and an *ecdsa.PublicKey for ES256. Verifiers should accept a key
// only with its own algorithm (golang-jwt refuses a key of the wrong Go type for the
// token's alg, which rules out alg confusion such as HS256 signed with a public key). A set
// that carries private parameters is refused: it is a leak, not a JWKS to trust.
func ParseJWKS(data []byte) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS is not valid JSON: %w", err)
	}
	out := make(map[string]crypto.PublicKey, len(set.Keys))
	for i, raw := range set.Keys {
		kid, pub, err := parseJWK(raw)
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		if _, dup := out[kid]; dup {
			return nil, fmt.Errorf("JWKS key %d: kid %q appears twice", i, kid)
		}
		out[kid] = pub
	}
	return out, nil
}

// privateMembers are the JWK members of RSA and EC private keys (RFC 7518 section 6).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth"}

func parseJWK(raw json.RawMessage) (string, crypto.PublicKey, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return "", nil, fmt.Errorf("not a JSON object: %w", err)
	}
	for _, m := range privateMembers {
		if _, ok := members[m]; ok {
			return "", nil, fmt.Errorf("carries private member %q", m)
		}
	}
	var j publicJWK
	if err := json.Unmarshal(raw, &j); err != nil {
		return "", nil, fmt.Errorf("malformed JWK: %w", err)
	}
	if j.Kid == "" || (j.Use != "" && j.Use != "sig") {
		return "", nil, errors.New("no kid, or not a signature key")
	}
	pub, err := publicKeyOf(j)
	return j.Kid, pub, err
}

func publicKeyOf(j publicJWK) (crypto.PublicKey, error) {
	switch {
	case j.Kty == "RSA" && j.Alg == string(RS256):
		return rsaPublicKey(j)
	case j.Kty == "EC" && j.Alg == string(ES256) && j.Crv == "P-256":
		return ecPublicKey(j)
	}
	return nil, fmt.Errorf("unsupported key: kty %q alg %q crv %q", j.Kty, j.Alg, j.Crv)
}

func rsaPublicKey(j publicJWK) (*rsa.PublicKey, error) {
	n, errN := b64.DecodeString(j.N)
	e, errE := b64.DecodeString(j.E)
	if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New("malformed RSA n or e")
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pub.N.BitLen() < rsaBits || pub.E < 3 {
		return nil, fmt.Errorf("RSA key of %d bits is too weak", pub.N.BitLen())
	}
	return pub, nil
}

func ecPublicKey(j publicJWK) (*ecdsa.PublicKey, error) {
	x, errX := b64.DecodeString(j.X)
	y, errY := b64.DecodeString(j.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New("malformed EC x or y")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("EC point: %w", err)
	}
	return pub, nil
}
