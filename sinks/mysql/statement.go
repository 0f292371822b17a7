package mysql

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// statement is one configured statement, cut at its placeholders so Write
// can render a record's arguments into it (see args.go).
type statement struct {
	name string
	n    int    // placeholders, as the server counts them
	sql  string // trimmed (trimSQL): safe to join with "\n;"
	// parts is sql cut at its placeholders: len(parts) == n+1.
	parts []string
	// row is the final "(…)" of an INSERT/REPLACE … VALUES (…) cut at its
	// placeholders (every placeholder is in it): consecutive records of
	// the statement can be sent as one multi-row INSERT. nil otherwise.
	row []string
	// modeDependent: the statement may change the session's sql_mode, or
	// its placeholders are found elsewhere under NO_BACKSLASH_ESCAPES, so
	// literals rendered with the mode read at the branch's start could be
	// wrong: the driver must interpolate (it follows the mode the server
	// reports after every statement).
	modeDependent bool
	// readsInsertResult: the statement reads what an INSERT leaves
	// behind, which differs between one multi-row INSERT and single-row
	// ones (LAST_INSERT_ID() is the first row's id, not the last one's;
	// ROW_COUNT() counts all rows).
	readsInsertResult bool
}

func newStatement(name, q string, n int) (*statement, error) {
	st := &statement{name: name, n: n, sql: trimSQL(q)}
	st.parts = splitPlaceholders(st.sql, false)
	noBackslash := splitPlaceholders(st.sql, true)
	if len(st.parts) != n+1 && len(noBackslash) == n+1 {
		// The server counted under NO_BACKSLASH_ESCAPES (its global
		// sql_mode), e.g. 'a\' then ?: keep the split that agrees. The
		// splits differ, so the statement is mode dependent below and the
		// driver interpolates it under the mode each session reports.
		st.parts = noBackslash
	}
	if len(st.parts) != n+1 {
		// The driver finds placeholders the same way; it would not have
		// interpolated this statement either (e.g. a ? in /*! … */).
		return nil, fmt.Errorf("the server counts %d placeholders, the driver finds %d", n, len(st.parts)-1)
	}
	upper := strings.ToUpper(q)
	st.modeDependent = strings.Contains(upper, "SQL_MODE") ||
		!slices.Equal(splitPlaceholders(st.sql, false), noBackslash)
	st.readsInsertResult = strings.Contains(upper, "LAST_INSERT_ID") || strings.Contains(upper, "@@IDENTITY") ||
		strings.Contains(upper, "ROW_COUNT")
	if tuple, ok := valuesTuple(st.sql); ok {
		off := len(st.sql) - len(tuple)
		if len(st.parts[0]) >= off { // every placeholder is in the tuple
			st.row = append([]string{st.parts[0][off:]}, st.parts[1:]...)
		}
	}
	return st, nil
}

// render appends the statement with r's arguments to q: the whole
// statement, or only its row tuple if asRow. With driverArgs the
// placeholders stay and the arguments' values go to args; otherwise the
// literals are rendered for the session's escaping (noBackslash). extra is
// the most the driver's interpolation can add to len(q) for args.
func (st *statement) render(q []byte, args []any, args0 []json.RawMessage, asRow, driverArgs, noBackslash bool) ([]byte, []any, int, error) {
	if len(args0) != st.n {
		return q, args, 0, fmt.Errorf("statement %q takes %d args, got %d", st.name, st.n, len(args0))
	}
	parts := st.parts
	if asRow {
		parts = st.row
	}
	extra := 0
	q = append(q, parts[0]...)
	for i, a := range args0 {
		if !driverArgs {
			if t := trimJSONSpace(a); len(t) > 0 && t[0] == '"' {
				var ok bool
				if q, ok = appendPlainLiteral(q, t, noBackslash); ok {
					q = append(q, parts[i+1]...)
					continue
				}
			}
		}
		v, err := scalarOf(a)
		if err != nil {
			return q, args, 0, fmt.Errorf("statement %q arg %d: %w", st.name, i, err)
		}
		if driverArgs {
			q = append(q, '?')
			args = append(args, v.value())
			extra += 2*len(v.text) + 24 // quotes and escapes, or a number
		} else {
			q = appendLiteral(q, v, noBackslash)
		}
		q = append(q, parts[i+1]...)
	}
	return q, args, extra, nil
}
