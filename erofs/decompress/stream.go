package decompress

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// readExact fills out from r. Without partial the stream must end right
// after out is full.
func readExact(alg Alg, r io.Reader, out []byte, partial bool) error {
	n, err := io.ReadFull(r, out)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return corrupt(alg, "stream decodes to %d bytes, want %d", n, len(out))
		}
		return corrupt(alg, "after %d of %d bytes: %v", n, len(out), err)
	}
	if partial {
		return nil
	}
	var one [1]byte
	for {
		m, err := r.Read(one[:])
		if m > 0 {
			return corrupt(alg, "stream decodes to more than %d bytes", len(out))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return corrupt(alg, "at end of %d bytes: %v", len(out), err)
		}
	}
}

// inflate decodes raw deflate (RFC 1951, no zlib or gzip header), as the
// kernel's z_erofs_deflate_decompress does (zlib windowBits -15).
func inflate(out, src []byte, partial bool) error {
	fr := flate.NewReader(bytes.NewReader(src))
	defer fr.Close()
	return readExact(Deflate, fr, out, partial)
}

// zstdMaxWindow bounds the frame window a corrupt header can demand.
const zstdMaxWindow = 16 << 20

var zstdPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(MaxDecodedSize+zstdMaxWindow),
	)
	if err != nil {
		return err
	}
	return d
}}

// unzstd decodes a zstd frame (kernel z_erofs_zstd_decompress).
func unzstd(out, src []byte, partial bool) error {
	v := zstdPool.Get()
	d, ok := v.(*zstd.Decoder)
	if !ok {
		return corrupt(Zstd, "decoder: %v", v)
	}
	if err := d.Reset(bytes.NewReader(src)); err != nil {
		zstdPool.Put(d)
		return corrupt(Zstd, "%v", err)
	}
	err := readExact(Zstd, d, out, partial)
	// Drop references to src before pooling.
	if rerr := d.Reset(nil); rerr == nil {
		zstdPool.Put(d)
	}
	return err
}
