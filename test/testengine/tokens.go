package testengine

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/fnv"
	"math"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// words is the fixed vocabulary of the completions: token i is words[i%len(words)].
var words = [...]string{
	"the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
	"seven", "helix", "flows", "stream", "tokens", "to", "every", "client",
}

// TokenText returns the text of completion token i (from 0): a word from a fixed list, with a
// leading space for every token but the first. The completion of n tokens is the concatenation
// of TokenText(0..n-1), which is what CompletionText returns.
func TokenText(i int) string {
	w := words[i%len(words)]
	if i == 0 {
		return w
	}
	return spaced[i%len(words)]
}

var spaced = func() (s [len(words)]string) {
	for i, w := range words {
		s[i] = " " + w
	}
	return s
}()

// CompletionText returns the full completion of n tokens.
func CompletionText(n int) string {
	var b []byte
	for i := range n {
		b = append(b, TokenText(i)...)
	}
	return string(b)
}

// appendCompletionText appends CompletionText(n) as a JSON string. The words need no escaping.
func appendCompletionText(b []byte, n int) []byte {
	b = append(b, '"')
	for i := range n {
		b = append(b, TokenText(i)...)
	}
	return append(b, '"')
}

// CountWords returns the number of whitespace-separated words in s, as len(strings.Fields(s))
// would, without allocating. It is the test engine's token count for text.
func CountWords(s string) int { return countWords(s) }

func countWords[T string | []byte](s T) int {
	n, in := 0, false
	for i := 0; i < len(s); {
		c := s[i]
		var space bool
		if c < utf8.RuneSelf {
			space = asciiSpace[c]
			i++
		} else {
			// At most UTFMax bytes: the conversion uses a stack buffer, no allocation.
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			space = unicode.IsSpace(r)
			i += size
		}
		if space {
			in = false
		} else if !in {
			in = true
			n++
		}
	}
	return n
}

var asciiSpace = [utf8.RuneSelf]bool{'\t': true, '\n': true, '\v': true, '\f': true, '\r': true, ' ': true}

// countMessages counts the prompt tokens of chat messages (see contentWords).
func countMessages(msgs []message) int {
	n := 0
	for _, m := range msgs {
		n += int(m.Content)
	}
	return n
}

// contentWords is a chat message "content" decoded into its word count: the words of a string,
// or of the "text" of each part of an array of content parts (other parts count 0); absent or
// null counts 0.
type contentWords int

var errContent = errors.New("message content must be a string or an array of content parts")

// UnmarshalJSON implements json.Unmarshaler. A string without escapes is counted in place,
// without allocating.
func (c *contentWords) UnmarshalJSON(raw []byte) error {
	switch firstByte(raw) {
	case 'n':
		*c = 0
		return nil
	case '"':
		if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 {
			*c = contentWords(countWords(raw[1 : len(raw)-1]))
			return nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		*c = contentWords(CountWords(s))
		return nil
	case '[':
		var parts []struct {
			Text contentWords `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return errContent
		}
		n := 0
		for _, p := range parts {
			n += int(p.Text)
		}
		*c = contentWords(n)
		return nil
	}
	return errContent
}

// countInput counts the tokens of a completions prompt: words of a string or of each string of
// an array, one per id of a token-id array (or of each array of an array of arrays).
func countInput(raw json.RawMessage) (int, error) {
	ins, err := embeddingInputs(raw)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, in := range ins {
		n += in.tokens
	}
	return n, nil
}

type input struct {
	tokens int
	seed   uint64
}

// embeddingInputs splits an OpenAI "input" or "prompt": a string, an array of strings, an
// array of token ids or an array of arrays of token ids.
func embeddingInputs(raw json.RawMessage) ([]input, error) {
	const msg = "input must be a string, an array of strings, an array of token ids or an array of arrays of token ids"
	switch firstByte(raw) {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return []input{textInput(s)}, nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, errors.New(msg)
		}
		if len(items) == 0 {
			return nil, errors.New("input must not be empty")
		}
		switch firstByte(items[0]) {
		case '"':
			out := make([]input, len(items))
			for i, it := range items {
				var s string
				if err := json.Unmarshal(it, &s); err != nil {
					return nil, errors.New(msg)
				}
				out[i] = textInput(s)
			}
			return out, nil
		case '[':
			out := make([]input, len(items))
			for i, it := range items {
				var ids []int64
				if err := json.Unmarshal(it, &ids); err != nil {
					return nil, errors.New(msg)
				}
				out[i] = idsInput(ids)
			}
			return out, nil
		default:
			var ids []int64
			if err := json.Unmarshal(raw, &ids); err != nil {
				return nil, errors.New(msg)
			}
			return []input{idsInput(ids)}, nil
		}
	case 0:
		return nil, errors.New("input is required")
	}
	return nil, errors.New(msg)
}

func textInput(s string) input {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return input{tokens: CountWords(s), seed: h.Sum64()}
}

func idsInput(ids []int64) input {
	h := fnv.New64a()
	var b [8]byte
	for _, id := range ids {
		binary.LittleEndian.PutUint64(b[:], uint64(id))
		_, _ = h.Write(b[:])
	}
	return input{tokens: len(ids), seed: h.Sum64()}
}

func firstByte(raw []byte) byte {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c
	}
	return 0
}

// Embedding fills vec with the deterministic unit vector for seed (the FNV-1a hash of the
// input text, or of its token ids as little-endian uint64s).
func Embedding(vec []float32, seed uint64) {
	x := seed | 1
	var sum float64
	for i := range vec {
		// xorshift64*
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		v := float64(int64(x*2685821657736338717)>>11) / float64(1<<52) // in [-1, 1)
		vec[i] = float32(v)
		sum += v * v
	}
	if sum == 0 {
		return
	}
	norm := float32(1 / math.Sqrt(sum))
	for i := range vec {
		vec[i] *= norm
	}
}

// EmbeddingOf returns the embedding the test engine answers for text with dimension dim.
func EmbeddingOf(text string, dim int) []float32 {
	v := make([]float32, dim)
	Embedding(v, textInput(text).seed)
	return v
}

func appendFloats(b []byte, vec []float32) []byte {
	b = append(b, '[')
	for i, v := range vec {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
	}
	return append(b, ']')
}

// appendBase64Floats appends vec as OpenAI's "base64" encoding: the little-endian float32
// bytes, standard base64, as a JSON string.
func appendBase64Floats(b []byte, vec []float32) []byte {
	raw := make([]byte, 4*len(vec))
	for i, v := range vec {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, raw)
	return append(b, '"')
}

func appendInt(b []byte, v int64) []byte { return strconv.AppendInt(b, v, 10) }

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string (control characters, quotes and backslashes
// escaped; invalid UTF-8 replaced by U+FFFD, as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
