package serve

import (
	"encoding/json"
	"testing"
)

// FuzzParseCall checks the allocation-free scanner against encoding/json: whenever
// encoding/json reads a request object, the scanner reads the same model, stream and
// include_usage.
func FuzzParseCall(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		`{"messages":[{"role":"user","content":"a \"quoted\" {brace} [x]"}],"model":"llama-3.1-8b"}`,
		` { "model" : "m\u00e9" , "stream" : false , "n" : 1.5e3 , "x" : null } `,
		`{"model":"m","stream_options":null}`,
		`{"model":1}`, `[]`, `{"model":"a"`, `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		model, stream, wantUsage, err := parseCall(body)
		// The reference matches member names exactly, as the engines (Python) do; a struct
		// would not (encoding/json folds case).
		refModel, refStream, refUsage, ok := referenceCall(body)
		if !ok {
			return // not an object of the expected types: the scanner may refuse or pass it on
		}
		if err != nil {
			t.Fatalf("scanner refused valid JSON %q: %v", body, err)
		}
		if string(model) != refModel || stream != refStream || wantUsage != refUsage {
			t.Fatalf("%q: scanner read (%q, %v, %v), encoding/json (%q, %v, %v)", body, model, stream, wantUsage, refModel, refStream, refUsage)
		}
	})
}

func referenceCall(body []byte) (model string, stream, wantUsage, ok bool) {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return "", false, false, false
	}
	if raw, has := top["model"]; has && json.Unmarshal(raw, &model) != nil {
		return "", false, false, false
	}
	stream = string(top["stream"]) == "true"
	var opts map[string]json.RawMessage
	if raw, has := top["stream_options"]; has && json.Unmarshal(raw, &opts) == nil {
		wantUsage = string(opts["include_usage"]) == "true"
	}
	return model, stream, wantUsage, true
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
