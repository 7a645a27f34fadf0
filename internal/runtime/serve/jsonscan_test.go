package serve

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseCall checks the allocation-free scanner against encoding/json: whenever
// encoding/json reads a request object that the rules accept, the scanner reads the same
// model, stream and include_usage; whenever the rules refuse it (a name that folds to a
// field, a non-boolean stream), so does the scanner, so that no body streams unmetered.
func FuzzParseCall(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		`{"messages":[{"role":"user","content":"a \"quoted\" {brace} [x]"}],"model":"llama-3.1-8b"}`,
		` { "model" : "m\u00e9" , "stream" : false , "n" : 1.5e3 , "x" : null } `,
		`{"model":"m","stream_options":null}`,
		`{"model":1}`, `[]`, `{"model":"a"`, `{}`, `{"model":null}`,
		`{"model":"m","str\u0065am":true}`, `{"model":"m","Stream":true}`, `{"model":"m","ſtream":true}`,
		`{"model":"m","stream":"true"}`, `{"model":"m","stream":1}`, `{"model":"m","stream":false,"stream":true}`,
		`{"model":"m","stream":true,"stream_options":{"Include_usage":false}}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":"yes"}}`,
		`{"model":"m","stream":true,"stream_options":[]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		model, stream, wantUsage, err := parseCall(body)
		ref, verdict := referenceCall(body)
		switch verdict {
		case notJSON:
			return // not an object: the scanner may refuse it or pass it on to the engine's 400
		case refused:
			if err == nil {
				t.Fatalf("%q: scanner read (%q, %v, %v), the rules refuse it", body, model, stream, wantUsage)
			}
			return
		}
		if err != nil {
			t.Fatalf("scanner refused valid JSON %q: %v", body, err)
		}
		if string(model) != ref.model || stream != ref.stream || wantUsage != ref.wantUsage {
			t.Fatalf("%q: scanner read (%q, %v, %v), encoding/json (%q, %v, %v)", body, model, stream, wantUsage, ref.model, ref.stream, ref.wantUsage)
		}
	})
}

type refFields struct {
	model             string
	stream, wantUsage bool
}

type refVerdict int

const (
	accepted refVerdict = iota
	refused
	notJSON
)

// referenceCall reads body with encoding/json's decoder, member by member in order (a
// repeated member's last value counts), by parseCall's rules.
func referenceCall(body []byte) (refFields, refVerdict) {
	// encoding/json replaces invalid UTF-8 where the scanner keeps the bytes; either way
	// such a model name is no served model's.
	var top map[string]json.RawMessage
	if !utf8.Valid(body) || json.Unmarshal(body, &top) != nil || top == nil {
		return refFields{}, notJSON
	}
	var out refFields
	verdict := accepted
	refMembers(body, func(name string, raw json.RawMessage) {
		switch refField(name, "model", "stream", "stream_options") {
		case "":
		case "model":
			if raw[0] != '"' || json.Unmarshal(raw, &out.model) != nil {
				verdict = refused
			}
		case "stream":
			if !refBool(raw, &out.stream) {
				verdict = refused
			}
		case "stream_options":
			out.wantUsage = false
			switch raw[0] {
			case 'n':
			case '{':
				refMembers(raw, func(name string, raw json.RawMessage) {
					switch refField(name, "include_usage") {
					case "include_usage":
						if !refBool(raw, &out.wantUsage) {
							verdict = refused
						}
					case "?":
						verdict = refused
					}
				})
			default:
				verdict = refused
			}
		default: // "?": a field's name in another case
			verdict = refused
		}
	})
	return out, verdict
}

// refMembers calls fn with each member of the JSON object obj, in order.
func refMembers(obj []byte, fn func(string, json.RawMessage)) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	_, _ = dec.Token() // {
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		var raw json.RawMessage
		if dec.Decode(&raw) != nil {
			return
		}
		fn(tok.(string), raw)
	}
}

func refField(name string, fields ...string) string {
	for _, f := range fields {
		if name == f {
			return f
		}
		if strings.EqualFold(name, f) {
			return "?"
		}
	}
	return ""
}

func refBool(raw json.RawMessage, out *bool) bool {
	if string(raw) == "null" {
		*out = false
		return true
	}
	return json.Unmarshal(raw, out) == nil
}

func TestTopLevelUsage(t *testing.T) {
	for _, tc := range []struct {
		in        string
		want      *Usage
		noChoices bool
	}{
		{`{"id":"x","choices":[{"text":"\"usage\": {\"prompt_tokens\": 9}"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`, &Usage{3, 5, 8}, false},
		{`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`, &Usage{1, 2, 3}, true},
		{`{"choices":[{"delta":{}}],"usage":null}`, nil, false},
		{`{"choices":[{"delta":{}}]}`, nil, false},
		// Odd answers are read, not a panic.
		{`{"choices":0,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`, &Usage{1, 2, 3}, false},
		{`{"choices":"","usage":{}}`, &Usage{}, false},
	} {
		u, noChoices := topLevelUsage([]byte(tc.in))
		if (u == nil) != (tc.want == nil) || (u != nil && *u != *tc.want) || noChoices != tc.noChoices {
			t.Errorf("%s: got %+v %v, want %+v %v", tc.in, u, noChoices, tc.want, tc.noChoices)
		}
	}
}

func BenchmarkParseCall(b *testing.B) {
	body := []byte(chatBody)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := parseCall(body); err != nil {
			b.Fatal(err)
		}
	}
}

func TestChunkCarriesText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{`{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}`, true},
		{`{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`, false},
		{`{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}`, true},
		{`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}`, true},
		{`{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}`, false},
		{`{"choices":[{"index":0,"text":" world","finish_reason":null}]}`, true},
		{`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`, false},
		{`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`, false},
		{`{"choices":0}`, false}, {`{"choices":[0]}`, false}, {`{"choices":[{"delta":"x"}]}`, false}, {`[]`, false},
	} {
		if got := chunkCarriesText([]byte(tc.in)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestParseCallAllocatesNothing: the fast path reads every body with it, whatever the
// member names (a long one included).
func TestParseCallAllocatesNothing(t *testing.T) {
	for _, body := range []string{
		chatBody,
		`{"model":"m","a_member_name_well_over_thirty_two_bytes_long":1,"stream":false,"stream_options":{"another_member_name_over_thirty_two_bytes":true}}`,
	} {
		b := []byte(body)
		if n := testing.AllocsPerRun(100, func() { _, _, _, _ = parseCall(b) }); n != 0 {
			t.Errorf("%d allocations reading %s", int(n), body)
		}
	}
}
