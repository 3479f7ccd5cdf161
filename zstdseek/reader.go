package zstdseek

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// Options tune a Reader.
type Options struct {
	CacheBytes     int64 // decoded-frame cache bound, default 64 MiB; negative: no cache
	MaxFrameDecode int64 // refuse frames larger, default 64 MiB
	Concurrency    int   // decodes in flight at once, default GOMAXPROCS
}

const (
	defaultCacheBytes = 64 << 20
	defaultMaxFrame   = 64 << 20
	// A read that needs several frames fetches adjacent ones with one
	// ReadAt of the source, up to these bounds per group.
	groupMaxComp = 4 << 20  // compressed bytes read at once
	groupMaxDec  = 8 << 20  // decoded bytes held at once (a single larger frame is fine)
	groupMaxGap  = 64 << 10 // skippable bytes between frames read along
	entryCost    = 128      // cache accounting per entry besides its bytes
)

// Stats counts a Reader's work.
type Stats struct {
	Hits         uint64 // frames served from the cache
	Joins        uint64 // frames another ReadAt was already decoding
	Decodes      uint64 // frames decoded
	DecodedBytes uint64
	SrcReads     uint64 // ReadAt calls on the compressed source
	SrcBytes     uint64
	Errors       uint64 // failed frame decodes (read, structure, size or checksum)
	Evictions    uint64
	CachedFrames int
	CachedBytes  int64
}

// Reader serves the uncompressed bytes of an indexed zstd blob.
type Reader struct {
	src   io.ReaderAt
	ix    Index
	opt   Options
	dec   *zstd.Decoder
	sem   chan struct{}
	mu    sync.Mutex
	lru   list.List // of *entry, most recently used first
	cache map[int]*list.Element
	used  int64
	fly   map[int]*flight

	hits, joins, decodes, decoded, srcReads, srcBytes, errs, evictions atomic.Uint64
}

type entry struct {
	i    int
	data []byte
}

type flight struct {
	done chan struct{}
	data []byte
	err  error
}

// NewReader returns a Reader of the uncompressed bytes of the blob src
// described by ix. It refuses an index that is inconsistent or has a frame
// larger than opt.MaxFrameDecode.
func NewReader(src io.ReaderAt, ix *Index, opt Options) (*Reader, error) {
	if opt.CacheBytes == 0 {
		opt.CacheBytes = defaultCacheBytes
	}
	if opt.MaxFrameDecode <= 0 {
		opt.MaxFrameDecode = defaultMaxFrame
	}
	if opt.MaxFrameDecode > maxLen {
		opt.MaxFrameDecode = maxLen
	}
	if opt.Concurrency <= 0 {
		opt.Concurrency = runtime.GOMAXPROCS(0)
	}
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	for i, f := range ix.Frames {
		if f.Size > opt.MaxFrameDecode {
			return nil, fmt.Errorf("zstdseek: frame %d (compressed at %d) holds %d bytes, above the %d-byte limit for random access", i, f.CompOff, f.Size, opt.MaxFrameDecode)
		}
	}
	// Output is bounded by cap(dst) = the frame's indexed size
	// (WithDecodeAllCapLimit); DecodeAll allocates no window, so windows up
	// to 2 GiB (zstd --long=31) are accepted.
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(opt.Concurrency),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(uint64(max(opt.MaxFrameDecode, 1<<31))),
		zstd.WithDecoderMaxWindow(1<<31))
	if err != nil {
		return nil, fmt.Errorf("zstdseek: decoder: %w", err)
	}
	r := &Reader{src: src, ix: *ix, opt: opt, dec: dec,
		sem: make(chan struct{}, opt.Concurrency), cache: map[int]*list.Element{}, fly: map[int]*flight{}}
	r.ix.Frames = append([]Frame(nil), ix.Frames...)
	return r, nil
}

// Size is the uncompressed size.
func (r *Reader) Size() int64 { return r.ix.Size }

// Close releases the decoder. The Reader must not be used afterwards.
func (r *Reader) Close() error {
	r.dec.Close()
	return nil
}

// Stats returns the counters so far.
func (r *Reader) Stats() Stats {
	r.mu.Lock()
	n, b := r.lru.Len(), r.used
	r.mu.Unlock()
	return Stats{
		Hits: r.hits.Load(), Joins: r.joins.Load(), Decodes: r.decodes.Load(),
		DecodedBytes: r.decoded.Load(), SrcReads: r.srcReads.Load(), SrcBytes: r.srcBytes.Load(),
		Errors: r.errs.Load(), Evictions: r.evictions.Load(), CachedFrames: n, CachedBytes: b,
	}
}

// ReadAt reads uncompressed bytes at off. It is safe for concurrent use;
// each frame is decoded by one ReadAt at a time, others wait for it.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("zstdseek: ReadAt at negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= r.ix.Size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > r.ix.Size-off {
		p, eof = p[:r.ix.Size-off], io.EOF
	}
	end := off + int64(len(p))
	n := 0
	for i := r.ix.find(off); n < len(p); {
		if i >= len(r.ix.Frames) {
			return n, fmt.Errorf("zstdseek: no frame holds uncompressed offset %d", off+int64(n))
		}
		data, fl, claimed := r.acquire(i, end)
		switch {
		case fl != nil:
			<-fl.done
			if fl.err != nil {
				return n, fl.err
			}
			data = fl.data
			fallthrough
		case claimed == 0:
			n += r.copyOut(p[n:], off+int64(n), i, data)
			i++
		default:
			datas, err := r.decodeGroup(i, claimed)
			for k, d := range datas {
				n += r.copyOut(p[n:], off+int64(n), i+k, d)
			}
			if err != nil {
				return n, err
			}
			i += claimed
		}
	}
	return n, eof
}

// copyOut copies frame i's bytes from uncompressed offset pos into p.
func (r *Reader) copyOut(p []byte, pos int64, i int, data []byte) int {
	f := r.ix.Frames[i]
	if pos < f.Off || pos >= f.Off+f.Size {
		return 0 // empty frame
	}
	return copy(p, data[pos-f.Off:])
}

// acquire returns frame i from the cache, or the flight decoding it, or
// claims it together with the following frames up to uncompressed offset
// end that are neither cached nor in flight (claimed > 0: the caller decodes them).
func (r *Reader) acquire(i int, end int64) (data []byte, fl *flight, claimed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.cache[i]; ok {
		r.lru.MoveToFront(e)
		r.hits.Add(1)
		return e.Value.(*entry).data, nil, 0
	}
	if fl, ok := r.fly[i]; ok {
		r.joins.Add(1)
		return nil, fl, 0
	}
	first := r.ix.Frames[i]
	dec := int64(0)
	for j := i; j < len(r.ix.Frames); j++ {
		f := r.ix.Frames[j]
		if j > i {
			prev := r.ix.Frames[j-1]
			_, cached := r.cache[j]
			_, flying := r.fly[j]
			if f.Off >= end || cached || flying ||
				f.CompOff-(prev.CompOff+prev.CompSize) > groupMaxGap ||
				f.CompOff+f.CompSize-first.CompOff > groupMaxComp ||
				dec+f.Size > groupMaxDec {
				break
			}
		}
		r.fly[j] = &flight{done: make(chan struct{})}
		dec += f.Size
		claimed++
	}
	return nil, nil, claimed
}

// decodeGroup reads frames i..i+k-1 (claimed by the caller) with one ReadAt,
// decodes them, completes their flights and caches them. It returns the
// frames decoded before the first failure, and that failure.
func (r *Reader) decodeGroup(i, k int) (datas [][]byte, err error) {
	r.sem <- struct{}{}
	defer func() { <-r.sem }()
	frames := r.ix.Frames[i : i+k]
	start, last := frames[0].CompOff, frames[k-1]
	buf := make([]byte, last.CompOff+last.CompSize-start)
	r.srcReads.Add(1)
	rerr := readFull(r.src, buf, start)
	if rerr == nil {
		r.srcBytes.Add(uint64(len(buf)))
	}
	for j, f := range frames {
		var data []byte
		var ferr error
		if rerr != nil {
			ferr = fmt.Errorf("zstdseek: frame %d (compressed %d+%d): %w", i+j, f.CompOff, f.CompSize, rerr)
		} else {
			data, ferr = r.decodeFrame(i+j, buf[f.CompOff-start:][:f.CompSize])
		}
		if ferr != nil && err == nil {
			err = ferr
		}
		if err == nil {
			datas = append(datas, data)
		}
		r.finish(i+j, data, ferr)
	}
	return datas, err
}

func (r *Reader) finish(i int, data []byte, err error) {
	r.mu.Lock()
	fl := r.fly[i]
	delete(r.fly, i)
	if err == nil && r.opt.CacheBytes > 0 && int64(len(data))+entryCost <= r.opt.CacheBytes {
		r.cache[i] = r.lru.PushFront(&entry{i: i, data: data})
		r.used += int64(len(data)) + entryCost
		for r.used > r.opt.CacheBytes {
			e := r.lru.Back()
			old := e.Value.(*entry)
			r.lru.Remove(e)
			delete(r.cache, old.i)
			r.used -= int64(len(old.data)) + entryCost
			r.evictions.Add(1)
		}
	}
	r.mu.Unlock()
	fl.data, fl.err = data, err
	close(fl.done)
}

// decodeFrame decodes frame i from its compressed bytes b and checks the
// result against the index: one whole frame, exactly Size bytes, checksums.
func (r *Reader) decodeFrame(i int, b []byte) ([]byte, error) {
	f := r.ix.Frames[i]
	fail := func(err error) ([]byte, error) {
		r.errs.Add(1)
		return nil, fmt.Errorf("zstdseek: frame %d (compressed %d+%d, uncompressed %d+%d): %w", i, f.CompOff, f.CompSize, f.Off, f.Size, err)
	}
	h, n, err := frameExtent(b, f.CompOff)
	if err != nil {
		return fail(err)
	}
	if n != f.CompSize {
		return fail(fmt.Errorf("the frame is %d bytes long, the index says %d", n, f.CompSize))
	}
	if h.contentSize >= 0 && h.contentSize != f.Size {
		return fail(fmt.Errorf("frame content size %d, the index says %d", h.contentSize, f.Size))
	}
	if f.Checksum && !h.checksum {
		return fail(errors.New("the index says the frame has a content checksum, it has none"))
	}
	if f.HasSum32 && h.checksum {
		if got := binary.LittleEndian.Uint32(b[n-4:]); got != f.Sum32 {
			return fail(fmt.Errorf("frame checksum %#08x, the index says %#08x", got, f.Sum32))
		}
	}
	r.decodes.Add(1)
	var dst []byte
	if f.Size > 0 {
		dst = make([]byte, 0, f.Size)
	}
	dst, err = r.dec.DecodeAll(b, dst)
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return fail(fmt.Errorf("decodes to more than the %d bytes the index says", f.Size))
		}
		return fail(err)
	}
	if int64(len(dst)) != f.Size {
		return fail(fmt.Errorf("decodes to %d bytes, the index says %d", len(dst), f.Size))
	}
	if f.HasSum32 && !h.checksum {
		if got := sum32(dst); got != f.Sum32 {
			return fail(fmt.Errorf("XXH64 low 32 bits %#08x, the index says %#08x", got, f.Sum32))
		}
	}
	r.decoded.Add(uint64(len(dst)))
	return dst, nil
}
