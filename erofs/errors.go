package erofs

import (
	"errors"
	"fmt"
)

// FormatError reports a violation of an on-disk rule. Off is the byte offset
// of the offending structure in its source (the primary device, or the
// metabox data when InMetabox is set), Rule is a short stable description of
// the rule that was broken and Val the offending value (may be nil).
//
// Rule strings are stable: tests and the verify package match on them.
type FormatError struct {
	Off       int64
	Rule      string
	Val       any
	Nid       uint64 // inode context; valid when HasNid
	HasNid    bool
	InMetabox bool
	Err       error // optional underlying error (ErrUnsupported, I/O errors)
}

// ErrUnsupported is wrapped by FormatErrors for valid but unimplemented
// features (reserved layouts, unknown algorithms, ...).
var ErrUnsupported = errors.ErrUnsupported

// ErrMissingDevice is returned when data lives on an extra device that was
// neither given with WithDevices nor reachable through WithFlat.
var ErrMissingDevice = errors.New("erofs: extra device not available")

func (e *FormatError) Error() string {
	s := fmt.Sprintf("erofs: offset %#x", e.Off)
	if e.InMetabox {
		s += " (metabox)"
	}
	if e.HasNid {
		s += fmt.Sprintf(": inode %d", e.Nid)
	}
	s += ": " + e.Rule
	if e.Val != nil {
		s += fmt.Sprintf(" (%v)", e.Val)
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

func unsup(off int64, rule string, val any) *FormatError {
	return &FormatError{Off: off, Rule: rule, Val: val, Err: ErrUnsupported}
}

// withNid adds inode context to err if it is a FormatError without one.
func withNid(err error, nid uint64) error {
	var fe *FormatError
	if errors.As(err, &fe) && !fe.HasNid {
		c := *fe
		c.Nid, c.HasNid = nid, true
		return &c
	}
	return err
}
