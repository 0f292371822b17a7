package kafka

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// plainRef is the obvious definition plainString must agree with.
func plainRef(b []byte) bool {
	return utf8.Valid(b) && bytes.IndexByte(b, '"') < 0 && bytes.IndexByte(b, '\\') < 0 && !hasControl(b)
}

func TestPlainString(t *testing.T) {
	long := strings.Repeat("abcdefgh", 5)
	cases := []string{"", "a", long, long + "\"", "\x1f" + long, long[:13] + "\\" + long, long + "é", long[:9] + "\xff" + long,
		long[:16] + "\x7f\x20\x21\x5b\x5d", long[:7] + "\x00", "ü€𝄞" + long, long[:8] + "\xe2\x82" + long}
	for _, c := range cases {
		if got, want := plainString([]byte(c)), plainRef([]byte(c)); got != want {
			t.Errorf("plainString(%q): got %v, want %v", c, got, want)
		}
	}
}

func FuzzPlainString(f *testing.F) {
	for _, s := range []string{"", "abcdefghijklmnop", "abcdefg\"ijklmnop", "ab\x00", "abcdefgh\xc3\xa9ijk"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := plainString(b), plainRef(b); got != want {
			t.Fatalf("plainString(%q): got %v, want %v", b, got, want)
		}
	})
}
