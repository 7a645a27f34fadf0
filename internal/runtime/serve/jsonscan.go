package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// The runtime reads three fields of each request (model, stream, stream_options) and one of
// each answer (usage), and passes the bodies on untouched. Decoding whole bodies with
// encoding/json for that was the largest cost of the runtime's own code in the benchmark
// profile; this scanner walks the top level of an object without allocating. It checks the
// structure it walks, not the whole grammar: the engine validates the rest.

var errNotObject = errors.New("not a JSON object")

// scanObject calls fn with each top-level member of the JSON object in data: the key as
// written (without quotes) and the raw value. fn returning false stops the walk.
func scanObject(data []byte, fn func(key, value []byte) bool) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return errNotObject
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return trailing(data, i+1)
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return fmt.Errorf("expected a member name at offset %d", i)
		}
		end, err := skipString(data, i)
		if err != nil {
			return err
		}
		key := data[i+1 : end-1]
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return fmt.Errorf("expected ':' at offset %d", i)
		}
		start := skipSpace(data, i+1)
		if end, err = skipValue(data, start); err != nil {
			return err
		}
		if !fn(key, data[start:end]) {
			return nil
		}
		i = skipSpace(data, end)
		switch {
		case i < len(data) && data[i] == ',':
			i = skipSpace(data, i+1)
		case i < len(data) && data[i] == '}':
			return trailing(data, i+1)
		default:
			return fmt.Errorf("expected ',' or '}' at offset %d", i)
		}
	}
}

func trailing(data []byte, i int) error {
	if skipSpace(data, i) != len(data) {
		return fmt.Errorf("unexpected data after the object at offset %d", i)
	}
	return nil
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' || data[i] == '\t') {
		i++
	}
	return i
}

// skipString returns the offset after the string starting at data[i] == '"'.
func skipString(data []byte, i int) (int, error) {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errors.New("unterminated string")
}

// skipValue returns the offset after the value starting at data[i].
func skipValue(data []byte, i int) (int, error) {
	if i >= len(data) {
		return 0, errors.New("unexpected end of JSON")
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				end, err := skipString(data, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errors.New("unterminated object or array")
	}
	j := i
	for j < len(data) && !isDelimiter(data[j]) {
		j++
	}
	if j == i {
		return 0, fmt.Errorf("expected a value at offset %d", i)
	}
	return j, nil
}

func isDelimiter(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\n', '\r', '\t':
		return true
	}
	return false
}

// parseCall reads the fields the runtime needs from a request body.
//
// The engine must read the same fields as the runtime, or a call could stream while the
// runtime meters it as a plain answer (no usage: free tokens). So member names are compared
// as decoded (an escaped "str\u0065am" is "stream"), and what some engine could read
// differently is refused with 400 rather than guessed: a name that differs from a field only
// in case (Go engines fold case, Python ones do not), and a "stream" or "include_usage" that
// is not a boolean (Pydantic reads "true" and 1 as true). OpenAI's API refuses both too.
// A repeated member counts as its last value, as every JSON decoder the engines use reads it.
func parseCall(body []byte) (model []byte, stream, wantUsage bool, err error) {
	var inner error
	err = scanObject(body, func(k, v []byte) bool {
		var name string
		if name, inner = callMember(k, "model", "stream", "stream_options"); inner != nil {
			return false
		}
		switch name {
		case "model":
			model, inner = jsonStringBytes(v)
		case "stream":
			stream, inner = jsonBool("stream", v)
		case "stream_options":
			wantUsage = false
			switch v[0] {
			case '{':
				var opt error
				if inner = scanObject(v, func(k, v []byte) bool {
					var name string
					if name, opt = callMember(k, "include_usage"); name != "" && opt == nil {
						wantUsage, opt = jsonBool("stream_options.include_usage", v)
					}
					return opt == nil
				}); inner == nil {
					inner = opt
				}
			default:
				if string(v) != "null" {
					inner = fieldErrorf(`"stream_options" must be an object`)
				}
			}
		}
		return inner == nil
	})
	if err == nil {
		err = inner
	}
	return model, stream, wantUsage, err
}

// callMember returns which of fields the member name k (as written, without quotes) is, or
// "" for another member; a name equal to a field but for case is an error.
func callMember(k []byte, fields ...string) (string, error) {
	if bytes.IndexByte(k, '\\') >= 0 {
		var s string
		if err := json.Unmarshal(append(append([]byte{'"'}, k...), '"'), &s); err != nil {
			return "", err
		}
		k = []byte(s)
	}
	for _, f := range fields {
		if string(k) == f {
			return f, nil
		}
		// Most members differ in their first byte already: an ASCII one folds only to the
		// same letter (fields are lower case), a non-ASCII one ("ſtream") is compared whole.
		// []byte(f) of a field name is short enough to stay on the stack; string(k) of a
		// long member name would not.
		if len(k) > 0 && (k[0] >= utf8.RuneSelf || k[0]|0x20 == f[0]) && bytes.EqualFold(k, []byte(f)) {
			return "", fieldErrorf("unrecognized request argument %.64q (the field is %q)", k, f)
		}
	}
	return "", nil
}

// fieldError is a body that is valid JSON with a field the runtime cannot accept.
type fieldError string

func (e fieldError) Error() string { return string(e) }

func fieldErrorf(format string, args ...any) error { return fieldError(fmt.Sprintf(format, args...)) }

// jsonBool reads a JSON boolean; null is false.
func jsonBool(name string, v []byte) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false", "null":
		return false, nil
	}
	if 'a' <= v[0] && v[0] <= 'z' {
		return false, fmt.Errorf("invalid literal %.16q", v) // not JSON at all
	}
	return false, fieldErrorf("%q must be a boolean", name)
}

// jsonStringBytes returns the content of a JSON string value; escapes are decoded (rare in
// model names, so only then is there an allocation).
func jsonStringBytes(v []byte) ([]byte, error) {
	if len(v) < 2 || v[0] != '"' {
		return nil, fieldErrorf(`"model" must be a string`)
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// usageOf reads the top-level "usage" of an engine answer; zero when absent or malformed.
func usageOf(data []byte) Usage {
	u, _ := topLevelUsage(data)
	if u == nil {
		return Usage{}
	}
	return *u
}

// topLevelUsage returns the "usage" member of a chunk or answer (nil when absent or null)
// and whether its "choices" is an empty array (the extra chunk include_usage adds).
func topLevelUsage(data []byte) (u *Usage, noChoices bool) {
	var raw []byte
	noChoices = true
	_ = scanObject(data, func(k, v []byte) bool {
		switch string(k) {
		case "usage":
			raw = v
		case "choices":
			// Only an empty array is the usage chunk's; any other value, however odd, is not.
			noChoices = len(v) >= 2 && v[0] == '[' && len(bytes.TrimSpace(v[1:len(v)-1])) == 0
		}
		return true
	})
	if len(raw) == 0 || raw[0] != '{' {
		return nil, noChoices
	}
	var out Usage
	_ = scanObject(raw, func(k, v []byte) bool {
		switch string(k) {
		case "prompt_tokens":
			out.PromptTokens = jsonInt(v)
		case "completion_tokens":
			out.CompletionTokens = jsonInt(v)
		case "total_tokens":
			out.TotalTokens = jsonInt(v)
		}
		return true
	})
	return &out, noChoices
}

// chunkCarriesText reports whether a stream chunk carries generated output: a first choice
// with a non-empty delta.content, delta.reasoning_content, delta.tool_calls or (completions)
// text. Each such chunk holds at least one token; streams that end without the engine's usage
// are charged by them.
func chunkCarriesText(data []byte) bool {
	choice := firstElement(member(data, "choices"))
	if nonEmptyString(member(choice, "text")) {
		return true
	}
	delta := member(choice, "delta")
	return nonEmptyString(member(delta, "content")) || nonEmptyString(member(delta, "reasoning_content")) ||
		len(firstElement(member(delta, "tool_calls"))) > 0
}

// member returns the raw value of the top-level member name of the JSON object obj, or nil
// (absent, or obj not an object).
func member(obj []byte, name string) []byte {
	var out []byte
	_ = scanObject(obj, func(k, v []byte) bool {
		if string(k) == name {
			out = v
			return false
		}
		return true
	})
	return out
}

// firstElement returns the first element of the JSON array v, or nil.
func firstElement(v []byte) []byte {
	if len(v) == 0 || v[0] != '[' {
		return nil
	}
	i := skipSpace(v, 1)
	if i >= len(v) || v[i] == ']' {
		return nil
	}
	end, err := skipValue(v, i)
	if err != nil {
		return nil
	}
	return v[i:end]
}

func nonEmptyString(v []byte) bool { return len(v) > 2 && v[0] == '"' }

// jsonInt reads a non-negative JSON integer; anything else counts as 0.
func jsonInt(v []byte) int64 {
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
