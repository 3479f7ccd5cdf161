package main

import (
	"github.com/erofs-blockd/erofs-blockd/source"
	"log/slog"
	"sync"
	"time"
)

// faultLogInterval is the minimum time between two log lines about one
// failing blob.
const faultLogInterval = time.Minute

// blobFaults receives flatdev's OnError calls while serving: it counts
// failed reads per blob and logs one line per blob (the first failure, then
// at most one per faultLogInterval with the count since), never one per
// read. Hook, if set before serving starts, is called for every failure
// (the metrics counter).
type blobFaults struct {
	log  *slog.Logger
	Hook func(blob string, err error)

	mu    sync.Mutex
	blobs map[string]*blobFault
}

type blobFault struct {
	total, sinceLog uint64
	lastLog         time.Time
}

func newBlobFaults(log *slog.Logger) *blobFaults {
	return &blobFaults{log: log, blobs: make(map[string]*blobFault)}
}

// report is a flatdev.Options.OnError.
func (f *blobFaults) report(blob string, err error) {
	if f.Hook != nil {
		f.Hook(blob, err)
	}
	now := time.Now()
	f.mu.Lock()
	b := f.blobs[blob]
	if b == nil {
		b = &blobFault{}
		f.blobs[blob] = b
	}
	b.total++
	b.sinceLog++
	logNow := b.lastLog.IsZero() || now.Sub(b.lastLog) >= faultLogInterval
	var n, total uint64
	if logNow {
		n, total = b.sinceLog, b.total
		b.sinceLog, b.lastLog = 0, now
	}
	f.mu.Unlock()
	if logNow {
		hint := "truncated, replaced or failing storage?"
		if source.IsRemote(blob) {
			hint = "server unreachable or failing after every retry; later reads try again"
		}
		f.log.Error("blob read failed: affected reads get EIO ("+hint+")",
			"blob", blob, "err", err, "failures", n, "total", total, "next_log_after", faultLogInterval)
	}
}

// Total returns the failed reads counted for blob.
func (f *blobFaults) Total(blob string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.blobs[blob]; b != nil {
		return b.total
	}
	return 0
}
