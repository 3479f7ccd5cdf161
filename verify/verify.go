// Package verify walks a whole EROFS image and reports every problem it
// finds: unreachable or undecodable inodes, bad directory entries, data
// ranges outside their device or slot, device-0 ranges straddling two
// devices, bad device ids, xattr structure, directory cycles, nlink counts
// and (with Options.Content) unreadable data and ishare fingerprint
// mismatches. Each Problem carries the path, the inode, a byte offset and a
// stable rule name (the Rule* constants).
//
// The walk is iterative and bounded: every inode is decoded once, every
// directory is read once, the depth and the number of reported problems are
// capped. Bad input never panics.
//
// Entry points: Image (an already opened erofs.Image), Devices (a primary
// and its extra devices as separate readers) and Flat (a composed flat
// device, as served).
package verify

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// DefaultMaxProblems is the cap on reported problems when
// Options.MaxProblems is 0.
const DefaultMaxProblems = 10000

// MaxDepth bounds the directory depth walked.
const MaxDepth = 4096

// Options select what Image checks.
type Options struct {
	// Content reads every regular file's full content (decompressing)
	// and checks ishare fingerprints where present.
	Content bool
	// MaxProblems caps the problems kept (DefaultMaxProblems if 0).
	// Report.Truncated is set and the walk stops when the cap is hit.
	MaxProblems int
	// ContentLimit stops content reading after this many bytes (0: no
	// limit); a note says so. Meant for fuzzing and quick checks.
	ContentLimit int64
	// DeviceSizes are the real byte sizes of the extra devices in slot
	// order, as given to erofs.WithDevices. Nil when the image was opened
	// without separate devices.
	DeviceSizes []int64
	// Flat says the image was opened with erofs.WithFlat over a composed
	// flat device: device N lives at uniaddr_N in the image reader.
	Flat bool
}

// Severities of a Problem. An error is something the kernel (fs/erofs) or
// fsck.erofs would refuse; a warning is a stricter check that they accept.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// Problem is one violated rule.
type Problem struct {
	Path string `json:"path"`
	Nid  uint64 `json:"nid"`
	Off  int64  `json:"offset"`
	// Space says what Off is relative to: "" the primary image (or the
	// unified address space for data ranges), "device N", "metabox", or
	// "logical" (an offset inside the inode's decoded data).
	Space  string `json:"space,omitempty"`
	Rule   string `json:"rule"`
	Detail string `json:"detail"`
	// Severity is SeverityError or SeverityWarning ("" is read as an error).
	Severity string `json:"severity"`
}

// IsWarning reports whether p is only a warning.
func (p Problem) IsWarning() bool { return p.Severity == SeverityWarning }

func (p Problem) String() string {
	path := p.Path
	if path == "" {
		path = "-"
	}
	s := fmt.Sprintf("%s (inode %d) offset %#x", path, p.Nid, p.Off)
	if p.IsWarning() {
		s = "warning: " + s
	}
	if p.Space != "" {
		s += " (" + p.Space + ")"
	}
	return s + ": " + p.Rule + ": " + p.Detail
}

// Report is the result of a verification.
type Report struct {
	Problems  []Problem `json:"problems"`
	Truncated bool      `json:"truncated"` // the problem cap was hit; the walk stopped early
	Inodes    int       `json:"inodes"`    // distinct inodes decoded
	Dirs      int       `json:"dirs"`
	Files     int       `json:"files"` // distinct regular files
	Symlinks  int       `json:"symlinks"`
	Specials  int       `json:"specials"`
	Dirents   int       `json:"dirents"`
	Bytes     int64     `json:"bytes"` // content bytes read (Options.Content)
	Notes     []string  `json:"notes,omitempty"`
	// WarningsDropped counts warnings not kept because the problem cap
	// was reached (warnings do not stop the walk).
	WarningsDropped int `json:"warnings_dropped,omitempty"`
}

// OK reports whether no error was found (warnings alone are OK).
func (r *Report) OK() bool { return r.Errors() == 0 && !r.Truncated }

// StrictOK reports whether no problem at all, warnings included, was found.
func (r *Report) StrictOK() bool { return r.OK() && r.Warnings() == 0 }

// Errors returns the number of problems that are errors.
func (r *Report) Errors() int { return len(r.Problems) - r.Warnings() + r.WarningsDropped }

// Warnings returns the number of problems that are only warnings,
// including WarningsDropped.
func (r *Report) Warnings() int {
	n := r.WarningsDropped
	for _, p := range r.Problems {
		if p.IsWarning() {
			n++
		}
	}
	return n
}

// Rules returns the distinct rule names reported, sorted.
func (r *Report) Rules() []string {
	m := map[string]bool{}
	for _, p := range r.Problems {
		m[p.Rule] = true
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Has reports whether a problem with the given rule was reported.
func (r *Report) Has(rule string) bool {
	for _, p := range r.Problems {
		if p.Rule == rule {
			return true
		}
	}
	return false
}

// WriteText writes one line per problem and a summary line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, p := range r.Problems {
		b.WriteString(p.String())
		b.WriteByte('\n')
	}
	for _, n := range r.Notes {
		b.WriteString("note: " + n + "\n")
	}
	b.WriteString(r.Summary())
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// Summary is a one-line verdict.
func (r *Report) Summary() string {
	verdict := "clean"
	if !r.StrictOK() {
		verdict = fmt.Sprintf("%d problem(s)", r.Errors())
		if w := r.Warnings(); w > 0 {
			if r.Errors() == 0 {
				verdict = "clean"
			}
			verdict += fmt.Sprintf(" (%d warning(s))", w)
		}
		if r.Truncated {
			verdict += " (truncated: walk stopped at the cap)"
		}
	}
	s := fmt.Sprintf("%s: %d inodes, %d dirs, %d files, %d symlinks, %d special, %d dirents",
		verdict, r.Inodes, r.Dirs, r.Files, r.Symlinks, r.Specials, r.Dirents)
	if r.Bytes > 0 {
		s += fmt.Sprintf(", %d content bytes read", r.Bytes)
	}
	return s
}

// Image verifies img. The error is non-nil only for unusable input (nil
// image or no root); everything else is reported as a Problem.
func Image(img *erofs.Image, opt Options) (rep *Report, err error) {
	if img == nil || img.SB == nil || img.Root() == nil {
		return nil, errors.New("verify: no usable image")
	}
	c := newChecker(img, opt)
	defer func() {
		// Last-resort guard: a decoder bug must not take the server down.
		if r := recover(); r != nil {
			c.add(Problem{Rule: RuleInternal, Detail: fmt.Sprintf("verifier panic: %v", r)})
			rep, err = c.rep, nil
		}
	}()
	c.run()
	return c.rep, nil
}

// Dev is a device given to Devices.
type Dev = erofs.Dev

// Devices opens primary with its extra devices as separate readers
// (erofs.WithDevices) so that data ranges are checked against each device's
// real size, and verifies it. An error means the input is unusable (no
// superblock, wrong device count, no root).
func Devices(primary Dev, devices []Dev, opt Options) (*Report, error) {
	var opts []erofs.Option
	opt.DeviceSizes = nil
	opt.Flat = false
	if len(devices) > 0 {
		cached := make([]Dev, len(devices))
		for i, d := range devices {
			opt.DeviceSizes = append(opt.DeviceSizes, d.Size)
			cached[i] = Dev{R: newSegCache(d.R, d.Size), Size: d.Size}
		}
		opts = append(opts, erofs.WithDevices(cached...))
	}
	img, err := erofs.Open(newSegCache(primary.R, primary.Size), primary.Size, opts...)
	if err != nil {
		return nil, err
	}
	if n := img.SB.NumDevices(); n != len(devices) {
		return nil, fmt.Errorf("verify: the image has %d extra device(s), %d given", n, len(devices))
	}
	return Image(img, opt)
}

// Flat verifies a composed flat device (primary with the device table
// filled in, blobs at their uniaddr), as `serve --check full` serves it.
func Flat(dev io.ReaderAt, size int64, opt Options) (*Report, error) {
	img, err := erofs.Open(newSegCache(dev, size), size, erofs.WithFlat())
	if err != nil {
		return nil, err
	}
	opt.DeviceSizes = nil
	opt.Flat = true
	return Image(img, opt)
}
