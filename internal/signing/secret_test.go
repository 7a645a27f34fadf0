package signing

import (
	"bytes"
	"crypto"
	"strings"
	"testing"
	"time"
)

func TestSecretDataRoundTrip(t *testing.T) {
	in := KeySet{Keys: []Key{mustKey(t, RS256, t0.Add(time.Hour)), mustKey(t, ES256, t0)}}
	in.Keys[1].RetiredAt = t0.Add(time.Hour)
	data, err := EncodeSecretData(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeSecretData(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Keys) != 2 {
		t.Fatalf("%d keys", len(out.Keys))
	}
	for i, k := range out.Keys {
		w := in.Keys[i]
		if k.ID != w.ID || k.Algorithm != w.Algorithm || !k.CreatedAt.Equal(w.CreatedAt) || !k.RetiredAt.Equal(w.RetiredAt) {
			t.Errorf("key %d: got %+v want %+v", i, k, w)
		}
		if !k.Private.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(w.Private.Public()) {
			t.Errorf("key %d: private key differs", i)
		}
	}
	again, _ := EncodeSecretData(out)
	if !bytes.Equal(again[SecretDataKey], data[SecretDataKey]) {
		t.Fatal("encoding is not stable across a round trip")
	}
	if empty, err := DecodeSecretData(mustEncode(t, KeySet{})); err != nil || len(empty.Keys) != 0 {
		t.Fatalf("empty set: %v, %v", empty, err)
	}
}

func mustEncode(t *testing.T, s KeySet) map[string][]byte {
	t.Helper()
	d, err := EncodeSecretData(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDecodeSecretDataErrors(t *testing.T) {
	rs, ec := mustKey(t, RS256, t0), mustKey(t, ES256, t0)
	good := string(mustEncode(t, KeySet{Keys: []Key{rs}})[SecretDataKey])
	ecPEM := string(mustEncode(t, KeySet{Keys: []Key{ec}})[SecretDataKey])
	retired := rs
	retired.RetiredAt = t0
	cases := map[string]string{
		"garbage":         "\x00\x01 not json",
		"wrong version":   strings.Replace(good, `"version": 1`, `"version": 2`, 1),
		"unknown field":   strings.Replace(good, `"version": 1`, `"version": 1, "extra": true`, 1),
		"no kid":          strings.Replace(good, rs.ID, "", 1),
		"bad alg":         strings.Replace(good, `"RS256"`, `"HS256"`, 1),
		"alg mismatch":    strings.Replace(good, `"RS256"`, `"ES256"`, 1),
		"bad PEM":         strings.Replace(good, "MII", "!!!", 1),
		"not PEM":         `{"version":1,"keys":[{"kid":"a","alg":"ES256","createdAt":"2026-01-01T00:00:00Z","privateKey":"hello"}]}`,
		"active retired":  string(mustEncode(t, KeySet{Keys: []Key{retired}})[SecretDataKey]),
		"retired no time": string(mustEncode(t, KeySet{Keys: []Key{ec, rs}})[SecretDataKey]),
		"duplicate kid":   ecPEM[:strings.LastIndex(ecPEM, "]")] + "," + keyJSON(t, ec) + "]}",
	}
	for name, raw := range cases {
		_, err := DecodeSecretData(map[string][]byte{SecretDataKey: []byte(raw)})
		if err == nil {
			t.Errorf("%s: decoded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := DecodeSecretData(map[string][]byte{"other": []byte(good)}); err == nil ||
		!strings.Contains(err.Error(), SecretDataKey) {
		t.Errorf("missing entry: %v", err)
	}
}

// keyJSON is the stored form of k, retired, to splice into a Secret.
func keyJSON(t *testing.T, k Key) string {
	k.RetiredAt = t0
	raw := string(mustEncode(t, KeySet{Keys: []Key{k}})[SecretDataKey])
	start := strings.Index(raw, "[") + 1
	end := strings.LastIndex(raw, "]")
	return raw[start:end]
}
