package zstdseek

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// frameAtComp returns the frame holding compressed offset off, or -1.
func frameAtComp(ix *Index, off int64) int {
	for i, f := range ix.Frames {
		if off >= f.CompOff && off < f.CompOff+f.CompSize {
			return i
		}
	}
	return -1
}

func TestCorruption(t *testing.T) {
	data := testData(1<<20, 11)
	var cat []byte
	for i, off := 0, 0; off < len(data); i, off = i+1, off+200000 {
		part := data[off:min(off+200000, len(data))]
		if i%2 == 0 {
			cat = append(cat, zstdFile(t, part, "-3")...) // checksum
		} else {
			cat = append(cat, zstdFile(t, part, "-3", "--no-check")...)
		}
	}
	nocrc, _ := klausFrames(t, data, 30000, zstd.WithEncoderCRC(false))
	for _, tc := range []struct {
		name string
		blob []byte
	}{{"zstd-19", zstdFile(t, data, "-19")}, {"zstd-mixed", cat}, {"klauspost-nocrc", nocrc}} {
		t.Run(tc.name, func(t *testing.T) {
			ix, _ := buildStream(t, tc.blob)
			rng := rand.New(rand.NewPCG(1, 2))
			readErrs := 0
			for k := 0; k < 40; k++ {
				bad := bytes.Clone(tc.blob)
				pos := rng.Int64N(int64(len(bad)))
				bad[pos] ^= byte(1 << rng.IntN(8))
				fi := frameAtComp(ix, pos)
				// Index from the clean blob, bytes damaged (a remote blob that changed).
				r, err := NewReader(bytes.NewReader(bad), ix, Options{})
				if err != nil {
					t.Fatal(err)
				}
				readErrs += readsNeverWrong(t, r, data)
				// Building over damaged bytes: a frame with a checksum must not decode silently wrong.
				b := NewBuilder(bytes.NewReader(bad))
				out, err := io.ReadAll(b)
				if err == nil && !bytes.Equal(out, data) {
					if fi < 0 || ix.Frames[fi].Checksum {
						t.Fatalf("flip at %d (frame %d, checksum): Build returned wrong bytes without error", pos, fi)
					}
					// Undetectable without a checksum; the Reader must agree with the Builder.
					bix, err := b.Index()
					if err != nil {
						t.Fatal(err)
					}
					r2, err := NewReader(bytes.NewReader(bad), bix, Options{})
					if err != nil {
						t.Fatal(err)
					}
					checkReader(t, r2, out, uint64(k))
				}
			}
			if readErrs == 0 {
				t.Fatal("no flipped byte was detected by reads")
			}
			// Truncated inside the last frame.
			last := ix.Frames[len(ix.Frames)-1]
			for _, cut := range []int64{1, 3, 4, 5, last.CompSize / 2, last.CompSize - 1} {
				short := tc.blob[:last.CompOff+last.CompSize-cut]
				if _, err := Build(bytes.NewReader(short)); err == nil {
					t.Fatalf("truncated by %d: Build succeeded", cut)
				}
				r, _ := NewReader(bytes.NewReader(short), ix, Options{})
				p := make([]byte, 10)
				if _, err := r.ReadAt(p, ix.Size-10); err == nil || errors.Is(err, io.EOF) {
					t.Fatalf("truncated by %d: ReadAt of the last frame: %v", cut, err)
				}
			}
		})
	}
}

func TestGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	junk := make([]byte, 5000)
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	frame := zstdFile(t, []byte("hello, frames"))
	var fe *FormatError
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"empty", nil},
		{"junk", junk},
		{"junk-after-frame", append(bytes.Clone(frame), junk...)},
		{"short-magic", append(bytes.Clone(frame), 0x28, 0xb5)},
		{"truncated-skippable", append(bytes.Clone(frame), skippable(3, make([]byte, 100))[:50]...)},
		{"reserved-bit", func() []byte { b := bytes.Clone(frame); b[4] |= 8; return b }()},
		{"dictionary", func() []byte { b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x21, 0x07, 0x58}; return append(b, frame[6:]...) }()},
		{"block-type-3", append([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00}, 0x07, 0, 0)},
		{"huge-window", append([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xF8}, 0x01, 0, 0)},
		{"huge-content-size", []byte{0x28, 0xb5, 0x2f, 0xfd, 0xE0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0, 0}},
	} {
		_, err := Build(bytes.NewReader(tc.blob))
		if err == nil {
			t.Fatalf("%s: Build succeeded", tc.name)
		}
		if tc.name != "junk-after-frame" && tc.name != "empty" && tc.name != "huge-window" && !errors.As(err, &fe) {
			t.Logf("%s: %v (not a FormatError)", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
		if _, err := ReadSeekTable(bytes.NewReader(tc.blob), int64(len(tc.blob))); !errors.Is(err, ErrNoSeekTable) {
			t.Fatalf("%s: ReadSeekTable: %v", tc.name, err)
		}
	}
}

func TestLyingSeekTable(t *testing.T) {
	data := testData(1<<20, 12)
	good, frames := klausFrames(t, data, 100000, zstd.WithEncoderCRC(false))
	sizes := make([]int, len(frames))
	for i := range sizes {
		sizes[i] = min(100000, len(data)-i*100000)
	}
	mk := func(edit func(sizes []int, frames [][]byte)) []byte {
		s := append([]int(nil), sizes...)
		f := append([][]byte(nil), frames...)
		edit(s, f)
		var cs [][]byte
		for _, x := range f {
			cs = append(cs, x)
		}
		return appendSeekTable(bytes.Clone(good), cs, s, nil)
	}
	// Sizes that do not match the frames (totals unchanged): errors at read, never wrong bytes.
	lies := map[string][]byte{
		"d_size": mk(func(s []int, _ [][]byte) { s[3]++; s[4]-- }),
		"c_size": mk(func(_ []int, f [][]byte) { f[2] = append(bytes.Clone(f[2]), 0, 0, 0, 0, 0); f[3] = f[3][:len(f[3])-5] }),
	}
	for name, blob := range lies {
		ix, err := ReadSeekTable(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r, _ := NewReader(bytes.NewReader(blob), ix, Options{})
		if readsNeverWrong(t, r, data) == 0 {
			t.Fatalf("%s: lying seek table not detected", name)
		}
	}
	// Wrong checksums in the table.
	sums := make([]uint32, len(frames))
	for i := range sums {
		sums[i] = sum32(data[i*100000 : i*100000+sizes[i]])
	}
	sums[5] ^= 1
	blob := appendSeekTable(bytes.Clone(good), frames, sizes, sums)
	ix, err := ReadSeekTable(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewReader(bytes.NewReader(blob), ix, Options{})
	if _, err := r.ReadAt(make([]byte, 10), 5*100000+7); err == nil {
		t.Fatal("wrong seek table checksum not detected")
	}
	if _, err := r.ReadAt(make([]byte, 10), 4*100000+7); err != nil {
		t.Fatalf("frame 4: %v", err)
	}
	// Damaged tables: format errors.
	ok := appendSeekTable(bytes.Clone(good), frames, sizes, nil)
	footer := len(ok) - 9
	for name, edit := range map[string]func(b []byte) []byte{
		"reserved-bits":   func(b []byte) []byte { b[footer+4] |= 0x04; return b },
		"too-many-frames": func(b []byte) []byte { binary.LittleEndian.PutUint32(b[footer:], 1<<32-1); return b },
		"count+1":         func(b []byte) []byte { binary.LittleEndian.PutUint32(b[footer:], uint32(len(frames)+1)); return b },
		"frame-size":      func(b []byte) []byte { b[len(good)+4]++; return b },
		"table-magic":     func(b []byte) []byte { b[len(good)]++; return b },
		"c_size-sum":      func(b []byte) []byte { b[len(good)+8]++; return b },
		"c_size-zero":     func(b []byte) []byte { binary.LittleEndian.PutUint32(b[len(good)+8:], 0); return b },
		"prefix-missing":  func(b []byte) []byte { return b[len(frames[0]):] },
	} {
		b := edit(bytes.Clone(ok))
		_, err := ReadSeekTable(bytes.NewReader(b), int64(len(b)))
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("%s: %v, want a FormatError", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestIndexLies(t *testing.T) {
	data := testData(300000, 13)
	blob, _ := klausFrames(t, data, 50000)
	ix, _ := buildStream(t, blob)
	for name, edit := range map[string]func(ix *Index){
		"sum": func(ix *Index) { ix.Frames[1].Sum32++ },
		"merged": func(ix *Index) { // two frames as one: refused (one frame per entry)
			ix.Frames[1].CompSize += ix.Frames[2].CompSize
			ix.Frames[1].Size += ix.Frames[2].Size
			ix.Frames[1].HasSum32 = false
			ix.Frames = append(ix.Frames[:2], ix.Frames[3:]...)
			for i := 2; i < len(ix.Frames); i++ {
				ix.Frames[i].Off = ix.Frames[i-1].Off + ix.Frames[i-1].Size
			}
		},
	} {
		lie := *ix
		lie.Frames = append([]Frame(nil), ix.Frames...)
		edit(&lie)
		if err := lie.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r, _ := NewReader(bytes.NewReader(blob), &lie, Options{})
		if readsNeverWrong(t, r, data) == 0 {
			t.Fatalf("%s: not detected", name)
		}
	}
	// The index claims a content checksum the frame does not have.
	nocrc, _ := klausFrames(t, data, 50000, zstd.WithEncoderCRC(false))
	nix, _ := buildStream(t, nocrc)
	nix.Frames[1].Checksum = true
	r, _ := NewReader(bytes.NewReader(nocrc), nix, Options{})
	if _, err := r.ReadAt(make([]byte, 10), 50000); err == nil {
		t.Fatal("checksum flag lie not detected")
	}
	// Inconsistent indexes are refused by Validate / NewReader.
	for name, edit := range map[string]func(ix *Index){
		"gap":      func(ix *Index) { ix.Frames[1].Off++ },
		"overlap":  func(ix *Index) { ix.Frames[1].CompOff-- },
		"size":     func(ix *Index) { ix.Size++ },
		"beyond":   func(ix *Index) { ix.Frames[len(ix.Frames)-1].CompSize++ },
		"negative": func(ix *Index) { ix.Frames[0].Size = -1 },
	} {
		lie := *ix
		lie.Frames = append([]Frame(nil), ix.Frames...)
		edit(&lie)
		if _, err := NewReader(bytes.NewReader(blob), &lie, Options{}); err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if _, err := lie.MarshalBinary(); err == nil {
			t.Fatalf("%s: marshalled", name)
		}
	}
	// Persisted form damage.
	bin, _ := ix.MarshalBinary()
	for i := 0; i < len(bin); i++ {
		b := bytes.Clone(bin)
		b[i] ^= 0x10
		var x Index
		if x.UnmarshalBinary(b) == nil {
			t.Fatalf("flip at %d accepted", i)
		}
	}
	for n := 0; n < len(bin); n++ {
		var x Index
		if x.UnmarshalBinary(bin[:n]) == nil {
			t.Fatalf("truncated to %d accepted", n)
		}
	}
}
