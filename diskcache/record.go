package diskcache

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// On-disk record, the whole content of one file (chunk or meta):
//
//	off  size  field
//	0    4     magic "EBDC" (chunk) or "EBDM" (meta)
//	4    1     version (1)
//	5    1     reserved, 0
//	6    2     key length (little endian, at most MaxKey)
//	8    8     chunk index (int64 >= 0; 0 for meta)
//	16   8     data length
//	24   k     key
//	24+k n     data
//	24+k+n 4   CRC32C (Castagnoli) of every byte before it
//
// The file is exactly 28+k+n bytes long; anything else is damage.
const (
	hdrFixed   = 24
	trailerLen = 4
	minRecord  = hdrFixed + trailerLen
	version    = 1

	// MaxKey is the longest key accepted (bytes).
	MaxKey = 4096
	// MaxMeta is the largest value PutMeta stores.
	MaxMeta = 1 << 20
	// maxData bounds a chunk's length (sanity, not policy).
	maxData = 1 << 32
)

var (
	magicChunk = [4]byte{'E', 'B', 'D', 'C'}
	magicMeta  = [4]byte{'E', 'B', 'D', 'M'}
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type kind uint8

const (
	kindChunk kind = iota
	kindMeta
)

func (k kind) magic() [4]byte {
	if k == kindMeta {
		return magicMeta
	}
	return magicChunk
}

// record is a parsed record.
type record struct {
	kind kind
	key  string
	idx  int64
	data []byte
}

var errRecord = errors.New("diskcache: damaged record")

// recordSize is the length of the file holding a record.
func recordSize(keyLen, dataLen int) int64 {
	return int64(hdrFixed + keyLen + dataLen + trailerLen)
}

// header encodes the header and key of a record (everything before data).
func header(k kind, key string, idx int64, dataLen int) []byte {
	h := make([]byte, hdrFixed+len(key))
	m := k.magic()
	copy(h, m[:])
	h[4] = version
	binary.LittleEndian.PutUint16(h[6:], uint16(len(key)))
	binary.LittleEndian.PutUint64(h[8:], uint64(idx))
	binary.LittleEndian.PutUint64(h[16:], uint64(dataLen))
	copy(h[hdrFixed:], key)
	return h
}

// trailer is the CRC32C of header and data.
func trailer(hdr, data []byte) []byte {
	crc := crc32.Update(crc32.Update(0, castagnoli, hdr), castagnoli, data)
	return binary.LittleEndian.AppendUint32(nil, crc)
}

// encodeRecord returns the whole file content of a record.
func encodeRecord(r record) []byte {
	h := header(r.kind, r.key, r.idx, len(r.data))
	out := append(h, r.data...)
	return append(out, trailer(h, r.data)...)
}

// checkHeader checks a header (fixed part and key, len(hdr) = 24+key length)
// read from a file expected to hold kind k, key and idx, with dataLen bytes
// of data; the CRC is checked by checkCRC.
func checkHeader(hdr []byte, k kind, key string, idx int64, dataLen int64) bool {
	if len(hdr) != hdrFixed+len(key) {
		return false
	}
	m := k.magic()
	if [4]byte(hdr[:4]) != m || hdr[4] != version || hdr[5] != 0 {
		return false
	}
	if int(binary.LittleEndian.Uint16(hdr[6:])) != len(key) ||
		binary.LittleEndian.Uint64(hdr[8:]) != uint64(idx) ||
		binary.LittleEndian.Uint64(hdr[16:]) != uint64(dataLen) {
		return false
	}
	return string(hdr[hdrFixed:]) == key
}

func checkCRC(hdr, data, tr []byte) bool {
	crc := crc32.Update(crc32.Update(0, castagnoli, hdr), castagnoli, data)
	return len(tr) == trailerLen && binary.LittleEndian.Uint32(tr) == crc
}

// parseRecord parses a whole file. It accepts exactly what encodeRecord
// produces: a record it returns encodes back to the same bytes.
func parseRecord(b []byte) (record, error) {
	if len(b) < minRecord {
		return record{}, errRecord
	}
	var k kind
	switch [4]byte(b[:4]) {
	case magicChunk:
		k = kindChunk
	case magicMeta:
		k = kindMeta
	default:
		return record{}, errRecord
	}
	kl := int(binary.LittleEndian.Uint16(b[6:]))
	idx := binary.LittleEndian.Uint64(b[8:])
	dl := binary.LittleEndian.Uint64(b[16:])
	if kl > MaxKey || idx > 1<<63-1 || (k == kindMeta && idx != 0) || dl >= maxData ||
		uint64(len(b)) != uint64(hdrFixed+kl+trailerLen)+dl {
		return record{}, errRecord
	}
	end := hdrFixed + kl
	key := string(b[hdrFixed:end])
	hdr, data, tr := b[:end], b[end:len(b)-trailerLen], b[len(b)-trailerLen:]
	if !checkHeader(hdr, k, key, int64(idx), int64(len(data))) || !checkCRC(hdr, data, tr) {
		return record{}, errRecord
	}
	return record{kind: k, key: key, idx: int64(idx), data: data}, nil
}
