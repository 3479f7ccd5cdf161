package zstdseek

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// testBlob is a compressed blob with its plain bytes.
type testBlob struct {
	name       string
	blob, data []byte
	minFrames  int // Build must find at least this many data frames
	maxFrames  int // and at most (0: no bound)
}

func testBlobs(t *testing.T) []testBlob {
	data := testData(3<<20, 1)
	var bs []testBlob
	// zstd CLI, one frame.
	bs = append(bs, testBlob{name: "zstd-19", blob: zstdFile(t, data[:1<<20], "-19"), data: data[:1<<20], minFrames: 1, maxFrames: 1})
	// -B and --rsyncable do not cut frames (zstd 1.5.4): still one frame.
	bs = append(bs, testBlob{name: "zstd-B128K", blob: zstdFile(t, data, "-B128K", "-T2"), data: data, minFrames: 1, maxFrames: 1})
	bs = append(bs, testBlob{name: "zstd-rsyncable", blob: zstdFile(t, data, "-T0", "--rsyncable"), data: data, minFrames: 1, maxFrames: 1})
	// split + one zstd per chunk: sizes known (files), unknown (stdin), with and without checksums.
	var cat []byte
	const chunk = 300 << 10
	for i, off := 0, 0; off < len(data); i, off = i+1, off+chunk {
		part := data[off:min(off+chunk, len(data))]
		switch i % 3 {
		case 0:
			cat = append(cat, zstdFile(t, part, "-3")...)
		case 1:
			cat = append(cat, runTool(t, part, "zstd", "-q", "-c", "--no-check", "-1")...) // stdin: no content size
		case 2:
			cat = append(cat, zstdFile(t, part, "-9", "--no-check")...)
		}
	}
	n := (len(data) + chunk - 1) / chunk
	bs = append(bs, testBlob{name: "zstd-concat", blob: cat, data: data, minFrames: n, maxFrames: n})
	// Empty frames in the middle and at the end.
	empty := runTool(t, nil, "zstd", "-q", "-c")
	bs = append(bs, testBlob{name: "zstd-empty-frames", blob: bytes.Join([][]byte{cat[:0], empty, cat, empty}, nil), data: data, minFrames: n + 2, maxFrames: n + 2})
	// pzstd: frames of 2 MiB at -1, each after a skippable frame.
	big := testData(6<<20, 2)
	bs = append(bs, testBlob{name: "pzstd", blob: runTool(t, big, "pzstd", "-q", "-1", "-p", "2", "-c"), data: big, minFrames: 2})
	// klauspost, one frame per 64 KiB (checksums) and per 10 KiB (none).
	kb, _ := klausFrames(t, data, 64<<10)
	bs = append(bs, testBlob{name: "klauspost-64K", blob: kb, data: data, minFrames: len(data) / (64 << 10)})
	kb2, _ := klausFrames(t, data[:1<<20], 10000, zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(zstd.SpeedFastest))
	bs = append(bs, testBlob{name: "klauspost-10K-nocrc", blob: kb2, data: data[:1<<20], minFrames: (1 << 20) / 10000})
	return bs
}

func TestRealBlobs(t *testing.T) {
	for _, tb := range testBlobs(t) {
		t.Run(tb.name, func(t *testing.T) {
			ix, out := buildStream(t, tb.blob)
			if !bytes.Equal(out, tb.data) {
				t.Fatalf("Builder stream differs from the data (%d vs %d bytes)", len(out), len(tb.data))
			}
			if len(ix.Frames) < tb.minFrames || tb.maxFrames > 0 && len(ix.Frames) > tb.maxFrames {
				t.Fatalf("%d frames, want %d..%d", len(ix.Frames), tb.minFrames, tb.maxFrames)
			}
			if ix.Size != int64(len(tb.data)) || ix.CompSize != int64(len(tb.blob)) {
				t.Fatalf("index sizes %d/%d, want %d/%d", ix.Size, ix.CompSize, len(tb.data), len(tb.blob))
			}
			if err := ix.Validate(); err != nil {
				t.Fatal(err)
			}
			ix2, err := Build(bytes.NewReader(tb.blob))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(ix2) != fmt.Sprint(ix) {
				t.Fatal("Build and Builder disagree")
			}
			// Every frame's Sum32 is the XXH64 of its bytes (from the zstd
			// trailer when the frame has one: this checks our XXH64 too).
			for i, f := range ix.Frames {
				if !f.HasSum32 || f.Sum32 != sum32(tb.data[f.Off:f.Off+f.Size]) {
					t.Fatalf("frame %d (checksum %v): Sum32 %#x, want %#x", i, f.Checksum, f.Sum32, sum32(tb.data[f.Off:f.Off+f.Size]))
				}
			}
			// Round trip of the persisted form.
			bin, err := ix.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var ix3 Index
			if err := ix3.UnmarshalBinary(bin); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(&ix3) != fmt.Sprint(ix) {
				t.Fatal("UnmarshalBinary(MarshalBinary) differs")
			}
			t.Logf("%d frames, max frame %d, index %d bytes", len(ix.Frames), ix.MaxFrame(), len(bin))
			r, err := NewReader(bytes.NewReader(tb.blob), &ix3, Options{MaxFrameDecode: 8 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			checkReader(t, r, tb.data, 3)
			checkConcurrent(t, bytes.NewReader(tb.blob), ix, tb.data)
			if _, err := ReadSeekTable(bytes.NewReader(tb.blob), int64(len(tb.blob))); !errors.Is(err, ErrNoSeekTable) {
				t.Fatalf("ReadSeekTable on a blob without one: %v", err)
			}
		})
	}
}

func TestSeekable(t *testing.T) {
	data := testData(2<<20, 4)
	for _, crc := range []bool{false, true} {
		for _, sums := range []bool{false, true} {
			t.Run(fmt.Sprintf("crc=%v/sums=%v", crc, sums), func(t *testing.T) {
				blob, frames := klausFrames(t, data, 100000, zstd.WithEncoderCRC(crc))
				sizes := make([]int, len(frames))
				var ss []uint32
				for i := range frames {
					part := data[i*100000 : min((i+1)*100000, len(data))]
					sizes[i] = len(part)
					if sums {
						ss = append(ss, sum32(part))
					}
				}
				blob = appendSeekTable(blob, frames, sizes, ss)
				st, err := ReadSeekTable(bytes.NewReader(blob), int64(len(blob)))
				if err != nil {
					t.Fatal(err)
				}
				ix, out := buildStream(t, blob)
				if !bytes.Equal(out, data) {
					t.Fatal("Builder stream differs")
				}
				if len(st.Frames) != len(ix.Frames) || st.Size != ix.Size || st.CompSize != ix.CompSize {
					t.Fatalf("seek table %d frames %d/%d, Build %d frames %d/%d", len(st.Frames), st.Size, st.CompSize, len(ix.Frames), ix.Size, ix.CompSize)
				}
				for i, f := range st.Frames {
					g := ix.Frames[i]
					if f.CompOff != g.CompOff || f.CompSize != g.CompSize || f.Off != g.Off || f.Size != g.Size || f.HasSum32 != sums || g.Checksum != crc || sums && f.Sum32 != g.Sum32 {
						t.Fatalf("frame %d: seek table %+v, Build %+v", i, f, g)
					}
				}
				r, err := NewReader(bytes.NewReader(blob), st, Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				checkReader(t, r, data, 5)
			})
		}
	}
}

// TestChunkedLike builds a blob shaped like a containers/storage zstd:chunked
// layer: a tar whose file contents each start a new frame (streaming encoder,
// no content size), with skippable frames (TOC, tar-split, footer) between
// and after the data frames.
func TestChunkedLike(t *testing.T) {
	var plain, blob bytes.Buffer
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(&plain)
	flushFrame := func() {
		if plain.Len() == 0 {
			return
		}
		enc.Reset(&blob)
		enc.Write(plain.Bytes())
		enc.Close()
		plain.Reset()
	}
	var all bytes.Buffer
	data := testData(1<<20, 5)
	off := 0
	for i := 0; off < len(data); i++ {
		n := []int{0, 1, 17, 300, 4096, 70000, 200000}[i%7]
		n = min(n, len(data)-off)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg})
		all.Write(plain.Bytes())
		flushFrame() // header frame
		tw.Write(data[off : off+n])
		off += n
		all.Write(plain.Bytes())
		flushFrame() // content frame
		if i%10 == 3 {
			blob.Write(skippable(0, []byte("tar-split chunk")))
		}
	}
	tw.Close()
	all.Write(plain.Bytes())
	flushFrame()
	blob.Write(skippable(0, bytes.Repeat([]byte("TOC "), 1000)))
	blob.Write(skippable(0, make([]byte, 64))) // footer
	ix, out := buildStream(t, blob.Bytes())
	if !bytes.Equal(out, all.Bytes()) {
		t.Fatalf("Builder stream differs (%d vs %d bytes)", len(out), all.Len())
	}
	if len(ix.Frames) < 20 {
		t.Fatalf("only %d frames", len(ix.Frames))
	}
	// The stream is a valid tar.
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		if _, err := tr.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewReader(bytes.NewReader(blob.Bytes()), ix, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkReader(t, r, all.Bytes(), 6)
	st := r.Stats()
	if st.SrcReads >= st.Decodes {
		t.Errorf("small frames not grouped: %d source reads for %d decodes", st.SrcReads, st.Decodes)
	}
	checkConcurrent(t, bytes.NewReader(blob.Bytes()), ix, all.Bytes())
}

func TestReaderLimits(t *testing.T) {
	data := testData(1<<20, 6)
	blob := zstdFile(t, data, "-3")
	ix, _ := buildStream(t, blob)
	if _, err := NewReader(bytes.NewReader(blob), ix, Options{MaxFrameDecode: 1 << 19}); err == nil {
		t.Fatal("a 1 MiB frame passed MaxFrameDecode 512 KiB")
	}
	// No cache: still correct, and every read decodes.
	r, err := NewReader(bytes.NewReader(blob), ix, Options{CacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 10)
	for k := 0; k < 3; k++ {
		if _, err := r.ReadAt(p, 12345); err != nil || !bytes.Equal(p, data[12345:12355]) {
			t.Fatal(err)
		}
	}
	if s := r.Stats(); s.Decodes != 3 || s.CachedFrames != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Cache: one decode.
	r, _ = NewReader(bytes.NewReader(blob), ix, Options{})
	for k := 0; k < 3; k++ {
		r.ReadAt(p, int64(k*1000))
	}
	if s := r.Stats(); s.Decodes != 1 || s.Hits != 2 || s.CachedFrames != 1 {
		t.Fatalf("stats %+v", s)
	}
	// A window above the Builder's limit is refused before decoding.
	big := zstdFile(t, data[:4096], "--long=28", "-c")
	if _, err := NewBuilderOptions(bytes.NewReader(runTool(t, data, "zstd", "-q", "-c", "--long=28")), BuildOptions{MaxWindow: 1 << 20}).Read(make([]byte, 10)); err == nil {
		t.Fatal("window above MaxWindow accepted")
	}
	if _, err := Build(bytes.NewReader(big)); err != nil {
		t.Fatalf("small --long frame: %v", err)
	}
	// From stdin the frame keeps its declared 128 MiB window: the Builder
	// accepts it (the zstd CLI's default limit), the Reader decodes it
	// without allocating the window.
	long := runTool(t, data[:200000], "zstd", "-q", "-c", "--long=27")
	lix, lout := buildStream(t, long)
	if !bytes.Equal(lout, data[:200000]) {
		t.Fatal("--long=27 stream differs")
	}
	lr, err := NewReader(bytes.NewReader(long), lix, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lr.ReadAt(p, 150000); err != nil || !bytes.Equal(p, data[150000:150010]) {
		t.Fatalf("--long=27 frame: %v", err)
	}
}

func TestXXH64(t *testing.T) {
	var d xxh64
	d.reset()
	if got := d.Sum64(); got != 0xEF46DB3751D8E999 {
		t.Fatalf("XXH64(\"\") = %#x", got)
	}
	data := testData(5000, 8)
	for _, n := range []int{1, 3, 31, 32, 33, 100, 4999} {
		d.reset()
		for off := 0; off < len(data); off += n {
			d.Write(data[off:min(off+n, len(data))])
		}
		if uint32(d.Sum64()) != sum32(data) {
			t.Fatalf("pieces of %d: streaming digest differs", n)
		}
	}
}

// gatedSource blocks every ReadAt until open is closed.
type gatedSource struct {
	r    io.ReaderAt
	open chan struct{}
}

func (g *gatedSource) ReadAt(p []byte, off int64) (int, error) {
	<-g.open
	return g.r.ReadAt(p, off)
}

func TestSingleflight(t *testing.T) {
	data := testData(1<<20, 14)
	blob, _ := klausFrames(t, data, 256<<10)
	ix, _ := buildStream(t, blob)
	src := &gatedSource{r: bytes.NewReader(blob), open: make(chan struct{})}
	r, err := NewReader(src, ix, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const g = 6
	errc := make(chan error, g)
	for k := 0; k < g; k++ {
		go func(k int) {
			p := make([]byte, 1000)
			off := int64(300000 + k*1000) // all in frame 1
			_, err := r.ReadAt(p, off)
			if err == nil && !bytes.Equal(p, data[off:off+1000]) {
				err = fmt.Errorf("reader %d: wrong bytes", k)
			}
			errc <- err
		}(k)
	}
	for r.Stats().Joins < g-1 { // wait (no deadline: the test timeout bounds it) until all but one wait
		runtime.Gosched()
	}
	close(src.open)
	for k := 0; k < g; k++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if s := r.Stats(); s.Decodes != 1 || s.SrcReads != 1 || s.Joins != g-1 {
		t.Fatalf("stats %+v, want one decode and %d joins", s, g-1)
	}
}
