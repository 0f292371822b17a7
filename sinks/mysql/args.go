package mysql

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Arguments go from the record's JSON straight into the SQL text: Write
// renders each JSON scalar as the literal the driver's interpolation
// (interpolateParams=true) produces for scalar.value, the Go value the sink
// used to pass, so the server sees the same bytes without a Go value, an
// interface box and database/sql's conversion per argument. A record's arguments cost no
// allocation unless a string has JSON escapes (see scalarOf).

type scalarKind uint8

const (
	kindNull scalarKind = iota
	kindTrue
	kindFalse
	kindInt  // fits int64
	kindUint // fits uint64 but not int64
	kindText // a string; or a number that fits neither, sent as its text (exact for DECIMAL)
)

// scalar is one JSON argument, decoded. text is the string's content (or the
// number's text) and aliases the record unless the string had escapes.
type scalar struct {
	kind scalarKind
	i    int64
	u    uint64
	text []byte
}

// scalarOf decodes a JSON scalar with the result of encoding/json
// (json.Unmarshal into a string or json.Number), without allocating for
// plain strings (no escapes, valid UTF-8) and numbers.
func scalarOf(a json.RawMessage) (scalar, error) {
	t := trimJSONSpace(a)
	if len(t) == 0 {
		return scalar{}, errors.New("empty value")
	}
	switch c := t[0]; {
	case c == '"':
		if body, ok := plainString(t); ok {
			return scalar{kind: kindText, text: body}, nil
		}
		var s string // escapes or invalid UTF-8: encoding/json decides
		if err := json.Unmarshal(t, &s); err != nil {
			return scalar{}, err
		}
		return scalar{kind: kindText, text: []byte(s)}, nil
	case string(t) == "null":
		return scalar{kind: kindNull}, nil
	case string(t) == "true":
		return scalar{kind: kindTrue}, nil
	case string(t) == "false":
		return scalar{kind: kindFalse}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		if !validNumber(t) {
			var num json.Number // for encoding/json's wording of the error
			if err := json.Unmarshal(t, &num); err != nil {
				return scalar{}, err
			}
			return scalar{}, fmt.Errorf("invalid number %q", t)
		}
		if i, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return scalar{kind: kindInt, i: i}, nil
		}
		if u, err := strconv.ParseUint(string(t), 10, 64); err == nil {
			return scalar{kind: kindUint, u: u}, nil
		}
		return scalar{kind: kindText, text: t}, nil
	case c == '[' || c == '{':
		return scalar{}, errors.New("arrays and objects are not allowed, only JSON scalars")
	default:
		return scalar{}, fmt.Errorf("invalid JSON %q", t)
	}
}

// trimJSONSpace cuts what strings.TrimSpace cuts (all Unicode white space,
// as the sink always did), without converting to a string first.
func trimJSONSpace(a []byte) []byte {
	for len(a) > 0 && (a[0] == ' ' || a[0] == '\t' || a[0] == '\n' || a[0] == '\r') {
		a = a[1:]
	}
	for len(a) > 0 && (a[len(a)-1] == ' ' || a[len(a)-1] == '\t' || a[len(a)-1] == '\n' || a[len(a)-1] == '\r') {
		a = a[:len(a)-1]
	}
	if len(a) > 0 && (a[0] >= utf8.RuneSelf || a[len(a)-1] >= utf8.RuneSelf || a[0] == '\v' || a[0] == '\f' ||
		a[len(a)-1] == '\v' || a[len(a)-1] == '\f') {
		return []byte(strings.TrimSpace(string(a))) // rare: other Unicode space
	}
	return a
}

// plainString returns the content of the JSON string t if it needs no
// decoding: one closing quote at the end, no backslash, no control
// character, valid UTF-8 (encoding/json would replace invalid bytes).
func plainString(t []byte) ([]byte, bool) {
	if len(t) < 2 || t[0] != '"' || t[len(t)-1] != '"' {
		return nil, false
	}
	body := t[1 : len(t)-1]
	ascii := true
	for _, c := range body {
		switch strClass[c] {
		case classPlain, classQuote:
		case classHigh:
			ascii = false
		default:
			return nil, false
		}
	}
	if !ascii && !utf8.Valid(body) {
		return nil, false
	}
	return body, true
}

// appendPlainLiteral is appendLiteral(scalarOf(t)) for a plain JSON string
// t (see plainString) in one pass over its bytes, the common case of
// Write. In a plain string only the single quote needs escaping for SQL:
// the other characters the driver escapes (NUL, \n, \r, \x1a, '"', '\\')
// cannot appear unescaped in JSON. ok is false (and buf unchanged) if t is
// not plain.
func appendPlainLiteral(buf, t []byte, noBackslash bool) ([]byte, bool) {
	if len(t) < 2 || t[0] != '"' || t[len(t)-1] != '"' {
		return buf, false
	}
	body := t[1 : len(t)-1]
	n := len(buf)
	buf = append(buf, '\'')
	start, ascii := 0, true
	for i := 0; i < len(body); i++ {
		switch strClass[body[i]] {
		case classPlain:
		case classQuote:
			buf = append(buf, body[start:i]...)
			if noBackslash {
				buf = append(buf, '\'', '\'')
			} else {
				buf = append(buf, '\\', '\'')
			}
			start = i + 1
		case classHigh:
			ascii = false
		default:
			return buf[:n], false
		}
	}
	if !ascii && !utf8.Valid(body) {
		return buf[:n], false
	}
	buf = append(buf, body[start:]...)
	return append(buf, '\''), true
}

// Classes of a byte inside a JSON string, for plainString.
const (
	classPlain = iota // taken as is
	classQuote        // ': plain, escaped in SQL
	classHigh         // part of a multi-byte character: UTF-8 must be checked
	classBail         // '"', '\\' or a control character: encoding/json decodes the string
)

var strClass = func() (t [256]uint8) {
	for c := range t {
		switch {
		case c < 0x20 || c == '"' || c == '\\':
			t[c] = classBail
		case c == '\'':
			t[c] = classQuote
		case c >= utf8.RuneSelf:
			t[c] = classHigh
		}
	}
	return t
}()

// validNumber reports whether t is a JSON number (RFC 8259 grammar).
func validNumber(t []byte) bool {
	i := 0
	if i < len(t) && t[i] == '-' {
		i++
	}
	switch {
	case i < len(t) && t[i] == '0':
		i++
	case i < len(t) && t[i] >= '1' && t[i] <= '9':
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(t) && t[i] == '.' {
		i++
		j := i
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		j := i
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	return i == len(t)
}

// value is what the driver is given for the scalar when it interpolates
// (see Sink.driverArgs): strings, int64 or uint64, bool, nil, as the
// sink always converted JSON arguments.
func (v scalar) value() any {
	switch v.kind {
	case kindTrue:
		return true
	case kindFalse:
		return false
	case kindInt:
		return v.i
	case kindUint:
		return v.u
	case kindText:
		return string(v.text)
	}
	return nil
}

// appendLiteral appends the SQL literal of v exactly as the driver's
// interpolateParams renders v.value(): NULL, 1/0, decimal integers, and
// quoted strings escaped for the session's NO_BACKSLASH_ESCAPES mode.
func appendLiteral(buf []byte, v scalar, noBackslash bool) []byte {
	switch v.kind {
	case kindNull:
		return append(buf, "NULL"...)
	case kindTrue:
		return append(buf, '1')
	case kindFalse:
		return append(buf, '0')
	case kindInt:
		return strconv.AppendInt(buf, v.i, 10)
	case kindUint:
		return strconv.AppendUint(buf, v.u, 10)
	}
	buf = append(buf, '\'')
	if noBackslash {
		for _, c := range v.text {
			if c == '\'' {
				buf = append(buf, '\'')
			}
			buf = append(buf, c)
		}
	} else {
		start := 0
		for i, c := range v.text {
			if esc := backslashEscape[c]; esc != 0 {
				buf = append(buf, v.text[start:i]...)
				buf = append(buf, '\\', esc)
				start = i + 1
			}
		}
		buf = append(buf, v.text[start:]...)
	}
	return append(buf, '\'')
}

// backslashEscape is the driver's table (escapeStringBackslash).
var backslashEscape = [256]byte{0: '0', '\n': 'n', '\r': 'r', 0x1a: 'Z', '\'': '\'', '"': '"', '\\': '\\'}

// splitPlaceholders cuts q at its ? placeholders, finding them as the
// driver's interpolateParams does (not inside '…', "…", `…`, or comments;
// backslash escapes inside strings unless noBackslash): the statement's
// text is parts joined by the arguments' literals.
func splitPlaceholders(q string, noBackslash bool) []string {
	const (
		normal = iota
		str
		escape
		eolComment
		blockComment
		backtick
	)
	var parts []string
	state, single, last, from := normal, false, byte(0), 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		if state == escape && !((c == '\'' && single) || (c == '"' && !single)) {
			state, last = str, c
			continue
		}
		switch c {
		case '*':
			if state == normal && last == '/' {
				state = blockComment
			}
		case '/':
			if state == blockComment && last == '*' {
				state, last = normal, 0
				continue
			}
		case '#':
			if state == normal {
				state = eolComment
			}
		case '-':
			if state == normal && last == '-' {
				if i+1 >= len(q) || q[i+1] == ' ' || q[i+1] == '\t' || q[i+1] == '\n' || q[i+1] == '\r' {
					state = eolComment
				}
			}
		case '\n':
			if state == eolComment {
				state = normal
			}
		case '"':
			switch state {
			case normal:
				state, single = str, false
			case str:
				if !single {
					state = normal
				}
			case escape:
				state = str
			}
		case '\'':
			switch state {
			case normal:
				state, single = str, true
			case str:
				if single {
					state = normal
				}
			case escape:
				state = str
			}
		case '\\':
			if state == str && !noBackslash {
				state = escape
			}
		case '?':
			if state == normal {
				parts = append(parts, q[from:i])
				from = i + 1
			}
		case '`':
			switch state {
			case backtick:
				state = normal
			case normal:
				state = backtick
			}
		}
		last = c
	}
	return append(parts, q[from:])
}
