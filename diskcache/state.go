package diskcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"
)

// # Trusted records and the state file
//
// Checking a record's CRC costs a read of all of it into memory, which
// would make a warm cache read every byte twice. A record is therefore
// checked at most once per boot: once written by us (Put) or once its CRC
// passed, the file's stamp (device, inode, size, mtime, ctime) is
// remembered, and while the file still has that stamp its data is read (or
// handed out for sendfile, Lease) without the header and CRC. Any write,
// truncation, rename or copy over the file changes its ctime (which user
// space cannot set), so a file changed behind our back is checked again. A
// check only trusts a stamp whose ctime and mtime are older than trustSlack,
// so that a change in the same coarse timestamp tick cannot keep the old
// stamp. Such records are "pending" (trusted in this process) until the
// saver's next syncfs of the file system succeeds, which says they were
// written back without error; only then are they "trusted" and kept so in
// the state file. A syncfs that reports a write-back error demotes every
// pending record (each is checked again when next read).
//
// dir/state keeps, across restarts, the eviction order (with the hit
// counts) and the trusted stamps, tagged with the kernel's boot id: a
// restart in the same boot (kill -9, upgrade) trusts what was checked,
// while after a reboot or a power cut, where a renamed file may never have
// been written back whole (records are not fsynced), every record is
// checked again on first read. The file is written (tmp + rename) at Close
// and every stateEvery while something changed; a missing, damaged or stale
// one only costs checks (a stamp that does not match the file is ignored),
// never a wrong byte. It is not counted in maxBytes (66 bytes per chunk).

// stamp identifies a file's content state; the zero stamp never matches a
// file (inode 0 is not used).
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
}

const (
	trustSlack = 50 * time.Millisecond
	stateEvery = 15 * time.Second
	stateName  = "state"
)

// trustworthy: st, seen at a check at now, is old enough to be trusted.
func trustworthy(st stamp, now time.Time) bool {
	ns := now.UnixNano()
	return st.ino != 0 && ns-st.ctime > int64(trustSlack) && ns-st.mtime > int64(trustSlack)
}

// fstamp stats an open file.
func fstamp(f *os.File) (stamp, bool) {
	fi, err := f.Stat()
	if err != nil {
		return stamp{}, false
	}
	return stampOf(fi)
}

func readBootID() []byte {
	if bootIDPath == "" {
		return nil
	}
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return nil
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > 64 {
		return nil
	}
	return b
}

// State file layout (little endian):
//
//	0   4   magic "EBDS"
//	4   1   version (1)
//	5   1   boot id length b (0: none)
//	6   2   reserved, 0
//	8   8   number of entries n
//	16  b   boot id
//	    n × 66: hash [16], index [8], dev [8], ino [8], size [8], mtime [8],
//	            ctime [8], flags [1] (1: trusted), freq [1]
//	    4   CRC32C of all of the above
//
// Entries are in eviction order: the first is evicted first.
var magicState = [4]byte{'E', 'B', 'D', 'S'}

const stateEntry = 66

type stateEnt struct {
	ck      ckey
	st      stamp
	trusted bool
	freq    uint8
}

func encodeState(boot []byte, ents []stateEnt) []byte {
	b := make([]byte, 16, 16+len(boot)+len(ents)*stateEntry+4)
	copy(b, magicState[:])
	b[4] = 1
	b[5] = byte(len(boot))
	binary.LittleEndian.PutUint64(b[8:], uint64(len(ents)))
	b = append(b, boot...)
	for _, e := range ents {
		b = append(b, e.ck.h[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.ck.idx))
		b = binary.LittleEndian.AppendUint64(b, e.st.dev)
		b = binary.LittleEndian.AppendUint64(b, e.st.ino)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.st.size))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.st.mtime))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.st.ctime))
		var fl byte
		if e.trusted {
			fl = 1
		}
		b = append(b, fl, e.freq)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errState = errors.New("diskcache: damaged state file")

func decodeState(b []byte) (boot []byte, ents []stateEnt, err error) {
	if len(b) < 20 || [4]byte(b[:4]) != magicState || b[4] != 1 || b[6] != 0 || b[7] != 0 {
		return nil, nil, errState
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, nil, errState
	}
	bl := int(b[5])
	n := binary.LittleEndian.Uint64(b[8:])
	if uint64(len(body)-16-bl) != n*stateEntry || len(body) < 16+bl {
		return nil, nil, errState
	}
	boot = body[16 : 16+bl]
	p := body[16+bl:]
	ents = make([]stateEnt, n)
	for i := range ents {
		e := &ents[i]
		q := p[i*stateEntry:]
		copy(e.ck.h[:], q)
		u := func(o int) uint64 { return binary.LittleEndian.Uint64(q[o:]) }
		e.ck.idx = int64(u(16))
		e.st = stamp{dev: u(24), ino: u(32), size: int64(u(40)), mtime: int64(u(48)), ctime: int64(u(56))}
		e.trusted = q[64]&1 != 0
		e.freq = min(q[65], 3)
		if e.ck.idx < 0 {
			return nil, nil, errState
		}
	}
	return boot, ents, nil
}

// loadState reads dir/state; nil if it is missing or damaged.
func (c *Cache) loadState() (boot []byte, pos map[ckey]int, order []stateEnt) {
	f, err := os.Open(filepath.Join(c.dir, stateName))
	if err != nil {
		return nil, nil, nil
	}
	defer f.Close()
	// Bounded: as many entries as records of minimal size fit in the cache.
	limit := 20 + 64 + (c.max/minRecord+1)*stateEntry
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil || int64(len(b)) > limit {
		return nil, nil, nil
	}
	boot, order, err = decodeState(b)
	if err != nil {
		c.log.Debug("disk cache state file damaged; records are checked again", "dir", c.dir)
		return nil, nil, nil
	}
	pos = make(map[ckey]int, len(order))
	for i, e := range order {
		pos[e.ck] = i
	}
	return boot, pos, order
}

// confirm trusts the entries pending trust, if a syncfs of the cache's
// file system succeeds: their records are then on disk as written (or as
// checked), and stay trusted while their files keep their stamps.
func (c *Cache) confirm() {
	c.mu.Lock()
	if c.npending == 0 || c.syncFile == nil {
		c.mu.Unlock()
		return
	}
	var batch []*entry
	for _, e := range c.m {
		if e.pending {
			batch = append(batch, e)
		}
	}
	c.mu.Unlock()
	// Everything in batch was written (or read) before this call.
	if err := syncfs(c.syncFile); err != nil {
		if !isReadOnly(err) {
			c.writeFailed("syncfs", err)
		}
		c.mu.Lock()
		for _, e := range batch {
			if e.pending {
				e.pending = false
				c.npending--
			}
		}
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range batch {
		if !e.pending || c.m[e.ck] != e {
			continue // removed (and unpended) or confirmed meanwhile
		}
		e.pending = false
		c.npending--
		if fi, err := os.Lstat(c.chunkPath(e.ck)); err == nil {
			if st, ok := stampOf(fi); ok && st == e.checked {
				e.trusted = true
				c.gen.Add(1)
			}
		}
	}
}

// saveState confirms pending trust and writes dir/state if anything
// changed since the last save.
func (c *Cache) saveState() {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.confirm()
	gen := c.gen.Load()
	if gen == c.savedGen {
		return
	}
	c.mu.Lock()
	ents := make([]stateEnt, 0, c.main.n+c.small.n)
	for _, l := range []*list{&c.main, &c.small} {
		for e := l.head; e != nil; e = e.next {
			ents = append(ents, stateEnt{ck: e.ck, st: e.checked, trusted: e.trusted, freq: e.freq})
		}
	}
	c.mu.Unlock()
	tmp := c.tmpPath()
	err := os.WriteFile(tmp, encodeState(c.boot, ents), 0o600)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(c.dir, stateName))
	}
	if err != nil {
		os.Remove(tmp)
		if !isReadOnly(err) {
			c.writeFailed("state", err)
		}
		return
	}
	c.savedGen = gen
}

// saver saves the state every stateEvery until stop is closed.
func (c *Cache) saver(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(stateEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.saveState()
		}
	}
}
