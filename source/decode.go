package source

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/erofs-blockd/erofs-blockd/gzran"
	"github.com/erofs-blockd/erofs-blockd/zstdseek"
)

// Decoded sources: `gzip:SPEC`, `gzip,zinfo=FILE:SPEC` and `zstd:SPEC`
// serve the uncompressed bytes of SPEC (any other source spec) with random
// access. gzip goes through a checkpoint index (package gzran, SOCI zinfo
// v2); zstd through its seek table or a frame index (package zstdseek),
// and a blob whose frames are too large to decode per read (one frame of
// the whole layer, as `zstd` writes by default) is decoded once into a
// file. An index is built in one streaming pass over the blob on first use
// and kept: under Options.IndexDir (the daemon's --cache-dir) keyed by the
// blob's identity, else next to a local file (FILE.zinfo + FILE.zinfo.meta,
// FILE.zstdidx), else only in memory. Kept indexes carry a checksum and the
// blob's size (and mtime for files); one that does not match is rebuilt.
// Indexes built or saved are also kept in memory for the Opener's life
// (by identity), so a blob merged and then served is read once.

// decodePrefixes are the spec prefixes of decoded sources.
var decodePrefixes = []string{"gzip", "zstd"}

// IsDecoded reports whether spec names a decoded source (gzip:, zstd:).
func IsDecoded(spec string) bool {
	_, _, _, ok := parseDecoded(spec)
	return ok
}

// Inner returns the spec under any gzip:/zstd: prefixes.
func Inner(spec string) string {
	for {
		_, _, inner, ok := parseDecoded(spec)
		if !ok {
			return spec
		}
		spec = inner
	}
}

// WithInner replaces the spec under the gzip:/zstd: prefixes of spec.
func WithInner(spec, inner string) string {
	kind, opts, rest, ok := parseDecoded(spec)
	if !ok {
		return inner
	}
	head := kind
	for _, o := range opts {
		head += "," + o
	}
	return head + ":" + WithInner(rest, inner)
}

// parseDecoded splits "gzip,zinfo=F:INNER" into its kind, options and inner spec.
func parseDecoded(spec string) (kind string, opts []string, inner string, ok bool) {
	head, inner, found := strings.Cut(spec, ":")
	if !found || strings.HasPrefix(inner, "//") { // a URL scheme
		return "", nil, "", false
	}
	parts := strings.Split(head, ",")
	for _, p := range decodePrefixes {
		if parts[0] == p {
			return p, parts[1:], inner, true
		}
	}
	return "", nil, "", false
}

// decoded is a decoded source.
type decoded struct {
	inner Blob
	r     io.ReaderAt
	size  int64
	name  string
	id    string
	spill *os.File // zstd decoded once into a file
}

func (d *decoded) ReadAt(p []byte, off int64) (int, error) { return d.r.ReadAt(p, off) }
func (d *decoded) Size() int64                             { return d.size }
func (d *decoded) Name() string                            { return d.name }
func (d *decoded) Identity() string                        { return d.id }
func (d *decoded) Close() error {
	if d.spill != nil {
		d.spill.Close()
	}
	if sg, ok := d.r.(*spillingGzip); ok {
		if f := sg.file.Load(); f != nil {
			f.Close()
		}
	}
	return d.inner.Close()
}

// Compressed returns the blob under a decoded source (nil if b is not one).
func Compressed(b Blob) Blob {
	if d, ok := b.(*decoded); ok {
		return d.inner
	}
	return nil
}

func (o *Opener) openDecoded(ctx context.Context, spec string) (Blob, error) {
	kind, opts, innerSpec, _ := parseDecoded(spec)
	zinfo := ""
	for _, opt := range opts {
		k, v, _ := strings.Cut(opt, "=")
		switch {
		case kind == "gzip" && k == "zinfo" && v != "":
			zinfo = v
		default:
			return nil, fmt.Errorf("%s: unknown option %q (gzip takes zinfo=FILE)", kind, opt)
		}
	}
	inner, err := o.Open(ctx, innerSpec)
	if err != nil {
		return nil, err
	}
	d := &decoded{inner: inner, name: kind + ":" + inner.Name(), id: kind + ":" + inner.Identity()}
	switch kind {
	case "gzip":
		err = o.openGzip(d, zinfo)
	case "zstd":
		err = o.openZstd(d)
	}
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("%s: %w", d.name, err)
	}
	return d, nil
}

func (o *Opener) openGzip(d *decoded, zinfo string) error {
	var ix *gzran.Index
	var err error
	if zinfo != "" {
		if ix, err = o.userZinfo(d.inner, zinfo); err != nil {
			return err
		}
	} else if ix = o.loadGzip(d.inner); ix == nil {
		if ix, err = o.buildGzip(d.inner); err != nil {
			return err
		}
		o.SaveGzipIndex(d.inner, ix)
	}
	r, err := gzran.NewReader(d.inner, d.inner.Size(), ix, gzran.Options{})
	if err != nil {
		return err
	}
	d.r, d.size = &spillingGzip{o: o, gz: r, ix: ix, src: d.inner, size: r.Size()}, r.Size()
	return nil
}

// spillingGzip serves a gzip blob through its checkpoint index, and once
// its reads have made it decode more than spillFactor times the blob's
// uncompressed size (random reads all over a layer larger than the span
// cache), decodes the whole stream once into a file in the background
// and serves from that: what nbdkit's gzip filter does up front, done
// here only when the access pattern calls for it.
type spillingGzip struct {
	o    *Opener
	gz   *gzran.Reader
	ix   *gzran.Index // its SpanCRC vouches for the partial file, span by span
	src  Blob
	size int64

	started atomic.Bool
	file    atomic.Pointer[os.File] // complete
	partial atomic.Pointer[os.File] // being written: [0, written) is there and checked
	written atomic.Int64            // end of the last span whose CRC32C matched
}

const spillFactor = 1

func (s *spillingGzip) ReadAt(p []byte, off int64) (int, error) {
	if f := s.file.Load(); f != nil {
		n, err := f.ReadAt(p, off)
		if err == nil && n < len(p) {
			err = io.EOF
		}
		return n, err
	}
	if f := s.partial.Load(); f != nil && off >= 0 && off+int64(len(p)) <= s.written.Load() {
		if n, err := f.ReadAt(p, off); n == len(p) {
			return n, nil
		} else if err != nil && err != io.EOF {
			return n, err
		}
	}
	n, err := s.gz.ReadAt(p, off)
	if !s.started.Load() && s.gz.Stats().BytesDecoded > spillFactor*s.size && s.started.CompareAndSwap(false, true) {
		go s.spill()
	}
	return n, err
}

func (s *spillingGzip) spill() {
	f, err := os.CreateTemp(s.o.opt.IndexDir, ".gzip-decoded-*")
	if err != nil {
		s.o.opt.Logger.Warn("cannot decode a gzip blob whole (random reads stay slower)", "source", s.src.Name(), "err", err)
		return
	}
	os.Remove(f.Name())
	s.partial.Store(f)
	r, dc := pass(s.src)
	b := gzran.NewBuilder(r, 1<<62)
	n, err := io.Copy(&spanWriter{w: f, ix: s.ix, ok: &s.written}, b)
	if err == nil {
		err = dc.check()
	}
	if err == nil && n != s.size {
		err = fmt.Errorf("decoded %d bytes, the index says %d", n, s.size)
	}
	if err != nil {
		// Bytes already served from the partial file came from a stream
		// that failed later: the index's reads check spans by CRC, the
		// stream's members by their trailers; stop using the file.
		s.partial.Store(nil)
		s.o.opt.Logger.Warn("decoding a gzip blob whole failed; serving it through its index", "source", s.src.Name(), "err", err)
		return
	}
	s.o.opt.Logger.Info("random reads all over a gzip blob: decoded it whole into a file", "source", s.src.Name(), "bytes", n)
	s.file.Store(f)
}

func (o *Opener) openZstd(d *decoded) error {
	// A kept index first: reading a seek table costs a fetch of the
	// blob's tail.
	ix := o.loadZstd(d.inner)
	var err error
	if ix == nil {
		ix, err = zstdseek.ReadSeekTable(d.inner, d.inner.Size())
		if err != nil && !errors.Is(err, zstdseek.ErrNoSeekTable) {
			return err
		}
	}
	var spill *os.File
	if ix == nil {
		if ix, spill, err = o.buildZstd(d.inner); err != nil {
			return err
		}
		o.SaveZstdIndex(d.inner, ix)
	}
	if ix.MaxFrame() > maxFrameDecode {
		if spill == nil {
			if spill, err = o.decodeWhole(d.inner, ix); err != nil {
				return err
			}
		}
		d.spill, d.r, d.size = spill, spill, ix.Size
		return nil
	}
	if spill != nil {
		spill.Close()
	}
	r, err := zstdseek.NewReader(d.inner, ix, zstdseek.Options{MaxFrameDecode: maxFrameDecode})
	if err != nil {
		return err
	}
	d.r, d.size = r, r.Size()
	return nil
}

// maxFrameDecode: larger zstd frames are not decoded per read.
const maxFrameDecode = 64 << 20

// digestCheck hashes a whole pass over an OCI blob and compares the digest.
type digestCheck struct {
	h    hash.Hash
	want string
}

func newDigestCheck(b Blob) *digestCheck {
	id := b.Identity()
	if i := strings.Index(id, "sha256:"); i >= 0 && len(id)-i == 7+64 {
		return &digestCheck{h: sha256.New(), want: id[i+7:]}
	}
	return nil
}

func (c *digestCheck) writer() io.Writer {
	if c == nil {
		return io.Discard
	}
	return c.h
}

func (c *digestCheck) check() error {
	if c == nil {
		return nil
	}
	if got := hex.EncodeToString(c.h.Sum(nil)); got != c.want {
		return fmt.Errorf("blob content is sha256:%s, not its digest sha256:%s", got, c.want)
	}
	return nil
}

// pass reads a whole blob sequentially (through the fetcher's readahead
// for remote blobs), hashing it when its identity is a digest.
func pass(b Blob) (io.Reader, *digestCheck) {
	dc := newDigestCheck(b)
	r := io.TeeReader(io.NewSectionReader(b, 0, b.Size()), dc.writer())
	return bufio.NewReaderSize(r, 1<<20), dc
}

func (o *Opener) buildGzip(b Blob) (*gzran.Index, error) {
	r, dc := pass(b)
	ix, err := gzran.Build(r, 0)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	if err := dc.check(); err != nil {
		return nil, err
	}
	o.opt.Logger.Info("built a gzip index", "source", b.Name(), "points", len(ix.Points), "size", ix.Size)
	return ix, nil
}

// buildZstd indexes the frames; the decoded stream goes to an unlinked
// temporary file on the way, kept only when frames turn out too large.
func (o *Opener) buildZstd(b Blob) (*zstdseek.Index, *os.File, error) {
	r, dc := pass(b)
	zb := zstdseek.NewBuilder(r)
	spill, err := os.CreateTemp(o.opt.IndexDir, ".zstd-decoded-*")
	if err != nil {
		return nil, nil, err
	}
	os.Remove(spill.Name())
	if _, err := io.Copy(spill, zb); err != nil {
		spill.Close()
		return nil, nil, fmt.Errorf("index: %w", err)
	}
	ix, err := zb.Index()
	if err == nil {
		err = dc.check()
	}
	if err != nil {
		spill.Close()
		return nil, nil, err
	}
	o.opt.Logger.Info("built a zstd frame index", "source", b.Name(), "frames", len(ix.Frames), "size", ix.Size)
	return ix, spill, nil
}

// decodeWhole decodes a blob with a known index into an unlinked file.
func (o *Opener) decodeWhole(b Blob, ix *zstdseek.Index) (*os.File, error) {
	r, dc := pass(b)
	zb := zstdseek.NewBuilder(r)
	spill, err := os.CreateTemp(o.opt.IndexDir, ".zstd-decoded-*")
	if err != nil {
		return nil, err
	}
	os.Remove(spill.Name())
	n, err := io.Copy(spill, zb)
	if err == nil {
		err = dc.check()
	}
	if err == nil && n != ix.Size {
		err = fmt.Errorf("decoded %d bytes, the index says %d", n, ix.Size)
	}
	if err != nil {
		spill.Close()
		return nil, err
	}
	return spill, nil
}

// spanWriter writes the decoded stream and moves ok to the end of each
// span whose CRC32C matches the index (no SpanCRC: ok stays 0, and the
// file is used only once complete).
type spanWriter struct {
	w    io.Writer
	ix   *gzran.Index
	ok   *atomic.Int64
	n    int64
	span int
	crc  uint32
}

func (c *spanWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	if c.ix == nil || len(c.ix.SpanCRC) != len(c.ix.Points) {
		return k, err
	}
	q := p[:k]
	for len(q) > 0 && c.span < len(c.ix.Points) {
		end := c.ix.Size
		if c.span+1 < len(c.ix.Points) {
			end = c.ix.Points[c.span+1].Out
		}
		m := min(int64(len(q)), end-c.n)
		c.crc = crc32.Update(c.crc, castagnoli, q[:m])
		c.n += m
		q = q[m:]
		if c.n == end {
			if c.crc != c.ix.SpanCRC[c.span] {
				return k, fmt.Errorf("decoded span %d (bytes %d-%d) does not match its CRC32C", c.span, c.ix.Points[c.span].Out, end-1)
			}
			c.ok.Store(end)
			c.span++
			c.crc = 0
		}
	}
	return k, err
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Index persistence.

// indexStamp names the blob an index belongs to: its identity and size,
// and a local file's mtime.
func indexStamp(b Blob) string {
	s := remoteStamp(b.Identity(), b.Size())
	if f, ok := b.(*File); ok {
		if st, err := f.Stat(); err == nil {
			s += fmt.Sprintf(" mtime=%d", st.ModTime().UnixNano())
		}
	}
	return s
}

func remoteStamp(identity string, size int64) string {
	return fmt.Sprintf("%s size=%d", identity, size)
}

// AdoptGzipIndex gives the gzip index of the (remote) blob with this
// identity and size, e.g. from an image's kept or pushed artifacts: a
// gzip: source over it then opens without a pass.
func (o *Opener) AdoptGzipIndex(identity string, size int64, ix *gzran.Index) {
	o.memIndex.Store("gzip:"+remoteStamp(identity, size), ix)
}

// AdoptZstdIndex is AdoptGzipIndex for zstd frame indexes.
func (o *Opener) AdoptZstdIndex(identity string, size int64, ix *zstdseek.Index) {
	o.memIndex.Store("zstd:"+remoteStamp(identity, size), ix)
}

// indexPath returns where an index of b with extension ext lives ("" if
// nowhere).
func (o *Opener) indexPath(b Blob, ext string) string {
	if o.opt.IndexDir != "" {
		h := sha256.Sum256([]byte(b.Identity()))
		return filepath.Join(o.opt.IndexDir, hex.EncodeToString(h[:16])+ext)
	}
	if f, ok := b.(*File); ok {
		return f.File.Name() + ext
	}
	return ""
}

const envelopeMagic = "erofs-blockd index v1\n"

// envelope: magic, stamp line, sha256 of the payload file (if any), then
// the payload.
func envelope(stamp string, sum []byte, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString(envelopeMagic)
	b.WriteString(stamp + "\n")
	b.WriteString(hex.EncodeToString(sum) + "\n")
	h := sha256.Sum256(payload)
	b.WriteString(hex.EncodeToString(h[:]) + "\n")
	b.Write(payload)
	return b.Bytes()
}

// openEnvelope checks an envelope and returns the payload and the
// recorded sum of the companion file.
func openEnvelope(b []byte, stamp string) (payload, sum []byte, ok bool) {
	rest, found := bytes.CutPrefix(b, []byte(envelopeMagic))
	if !found {
		return nil, nil, false
	}
	lines := bytes.SplitN(rest, []byte("\n"), 4)
	if len(lines) != 4 || string(lines[0]) != stamp {
		return nil, nil, false
	}
	sum, err1 := hex.DecodeString(string(lines[1]))
	want, err2 := hex.DecodeString(string(lines[2]))
	h := sha256.Sum256(lines[3])
	if err1 != nil || err2 != nil || !bytes.Equal(want, h[:]) {
		return nil, nil, false
	}
	return lines[3], sum, true
}

// writeAtomic writes a file through a temporary name and rename.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err2 := tmp.Close(); err == nil {
		err = err2
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// userZinfo reads a zinfo given with gzip,zinfo=FILE:. A zinfo has no
// checksums, so the first use checks it against one pass over the blob
// (gzran.Complete: member CRCs, windows, span CRCs) and keeps the result
// (FILE.meta, or under IndexDir) for the next start.
func (o *Opener) userZinfo(b Blob, path string) (*gzran.Index, error) {
	zb, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("zinfo: %w", err)
	}
	ix, err := gzran.ReadZinfo(bytes.NewReader(zb))
	if err != nil {
		return nil, fmt.Errorf("zinfo %s: %w", path, err)
	}
	sum := sha256.Sum256(zb)
	meta := path + ".meta"
	if o.opt.IndexDir != "" {
		h := sha256.Sum256([]byte(b.Identity()))
		meta = filepath.Join(o.opt.IndexDir, hex.EncodeToString(h[:16])+"-"+hex.EncodeToString(sum[:8])+".zinfo.meta")
	}
	if kept, err := os.ReadFile(meta); err == nil {
		if payload, ksum, ok := openEnvelope(kept, indexStamp(b)); ok && bytes.Equal(ksum, sum[:]) && ix.UnmarshalMeta(payload) == nil {
			return ix, nil
		}
	}
	r, dc := pass(b)
	if err := gzran.Complete(r, ix); err != nil {
		return nil, fmt.Errorf("zinfo %s does not fit this blob: %w", path, err)
	}
	if err := dc.check(); err != nil {
		return nil, err
	}
	if err := writeAtomic(meta, envelope(indexStamp(b), sum[:], ix.MarshalMeta())); err != nil {
		o.opt.Logger.Warn("could not keep the zinfo check (it is redone at the next start)", "path", meta, "err", err)
	}
	return ix, nil
}

// SaveGzipIndex keeps ix for the compressed blob b (best effort, logged):
// FILE.zinfo is plain SOCI zinfo v2, FILE.zinfo.meta what zinfo lacks.
func (o *Opener) SaveGzipIndex(b Blob, ix *gzran.Index) {
	o.memIndex.Store("gzip:"+indexStamp(b), ix)
	p := o.indexPath(b, ".zinfo")
	if p == "" {
		return
	}
	var z bytes.Buffer
	err := ix.WriteZinfo(&z)
	if err == nil {
		err = writeAtomic(p, z.Bytes())
	}
	if err == nil {
		sum := sha256.Sum256(z.Bytes())
		err = writeAtomic(p+".meta", envelope(indexStamp(b), sum[:], ix.MarshalMeta()))
	}
	if err != nil {
		o.opt.Logger.Warn("could not keep the gzip index (it is rebuilt at the next start)", "source", b.Name(), "path", p, "err", err)
	}
}

func (o *Opener) loadGzip(b Blob) *gzran.Index {
	if ix, ok := o.memIndex.Load("gzip:" + indexStamp(b)); ok {
		return ix.(*gzran.Index)
	}
	p := o.indexPath(b, ".zinfo")
	if p == "" {
		return nil
	}
	meta, err := os.ReadFile(p + ".meta")
	if err != nil {
		return nil
	}
	payload, sum, ok := openEnvelope(meta, indexStamp(b))
	z, err := os.ReadFile(p)
	if !ok || err != nil {
		return nil
	}
	if h := sha256.Sum256(z); !bytes.Equal(h[:], sum) {
		o.opt.Logger.Warn("kept gzip index does not match its checksum; rebuilding", "path", p)
		return nil
	}
	ix, err := gzran.ReadZinfo(bytes.NewReader(z))
	if err == nil {
		err = ix.UnmarshalMeta(payload)
	}
	if err != nil {
		o.opt.Logger.Warn("kept gzip index unusable; rebuilding", "path", p, "err", err)
		return nil
	}
	return ix
}

// SaveZstdIndex keeps a frame index for the compressed blob b.
func (o *Opener) SaveZstdIndex(b Blob, ix *zstdseek.Index) {
	o.memIndex.Store("zstd:"+indexStamp(b), ix)
	p := o.indexPath(b, ".zstdidx")
	if p == "" {
		return
	}
	data, err := ix.MarshalBinary()
	if err == nil {
		err = writeAtomic(p, envelope(indexStamp(b), nil, data))
	}
	if err != nil {
		o.opt.Logger.Warn("could not keep the zstd index (it is rebuilt at the next start)", "source", b.Name(), "path", p, "err", err)
	}
}

func (o *Opener) loadZstd(b Blob) *zstdseek.Index {
	if ix, ok := o.memIndex.Load("zstd:" + indexStamp(b)); ok {
		return ix.(*zstdseek.Index)
	}
	p := o.indexPath(b, ".zstdidx")
	if p == "" {
		return nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	payload, _, ok := openEnvelope(data, indexStamp(b))
	if !ok {
		return nil
	}
	ix := new(zstdseek.Index)
	if err := ix.UnmarshalBinary(payload); err != nil {
		return nil
	}
	return ix
}
