package decompress

// lz4Block decodes one raw LZ4 block from src into out.
//
// With partial set it behaves like LZ4_decompress_safe_partial with
// targetOutputSize == len(out): it stops as soon as out is full and ignores
// whatever follows. Without it, like LZ4_decompress_safe: the block must end
// exactly at the end of src and produce exactly len(out) bytes.
func lz4Block(out, src []byte, partial bool) error {
	si, di := 0, 0
	readLen := func(n int) (int, bool) {
		if n != 15 {
			return n, true
		}
		for {
			if si >= len(src) {
				return 0, false
			}
			b := src[si]
			si++
			n += int(b)
			if n > MaxDecodedSize+MaxPclusterSize {
				return 0, false
			}
			if b != 255 {
				return n, true
			}
		}
	}
	for {
		if si >= len(src) {
			return corrupt(LZ4, "input ends at %d before a token, output %d of %d", si, di, len(out))
		}
		tok := src[si]
		si++
		lit, ok := readLen(int(tok >> 4))
		if !ok {
			return corrupt(LZ4, "bad literal length at input %d", si)
		}
		if lit > len(src)-si {
			return corrupt(LZ4, "literal run of %d at input %d past end %d", lit, si, len(src))
		}
		if lit > len(out)-di {
			if !partial {
				return corrupt(LZ4, "literal run of %d overflows output at %d of %d", lit, di, len(out))
			}
			copy(out[di:], src[si:])
			return nil
		}
		copy(out[di:], src[si:si+lit])
		si += lit
		di += lit
		if partial && di == len(out) {
			return nil
		}
		if si == len(src) {
			// Last sequence: literals only.
			if di != len(out) {
				return corrupt(LZ4, "block decodes to %d bytes, want %d", di, len(out))
			}
			return nil
		}
		if len(src)-si < 2 {
			return corrupt(LZ4, "truncated match offset at input %d", si)
		}
		off := int(src[si]) | int(src[si+1])<<8
		si += 2
		if off == 0 || off > di {
			return corrupt(LZ4, "match offset %d at output %d", off, di)
		}
		ml, ok := readLen(int(tok & 15))
		if !ok {
			return corrupt(LZ4, "bad match length at input %d", si)
		}
		ml += 4
		if ml > len(out)-di {
			if !partial {
				return corrupt(LZ4, "match of %d overflows output at %d of %d", ml, di, len(out))
			}
			ml = len(out) - di
		}
		if off >= ml {
			copy(out[di:di+ml], out[di-off:])
		} else {
			for i := 0; i < ml; i++ {
				out[di+i] = out[di-off+i]
			}
		}
		di += ml
		if partial && di == len(out) {
			return nil
		}
	}
}
