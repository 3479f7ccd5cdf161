package tarscan

import "fmt"

// FormatError reports a violation of a tar format rule, or a failure to read
// the stream, at byte offset Off of the tar stream. Rule is a short stable
// description of the rule that was broken, Val the offending value (may be
// nil) and Err an optional underlying error (io.ErrUnexpectedEOF for a
// truncated archive, I/O errors of the underlying reader).
type FormatError struct {
	Off  int64
	Rule string
	Val  any
	Err  error
}

func (e *FormatError) Error() string {
	s := fmt.Sprintf("tarscan: offset %d: %s", e.Off, e.Rule)
	if e.Val != nil {
		s += fmt.Sprintf(" (%q)", fmt.Sprint(e.Val))
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

func ferr(off int64, rule string, val any) *FormatError {
	return &FormatError{Off: off, Rule: rule, Val: val}
}
