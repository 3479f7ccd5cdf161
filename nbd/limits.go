package nbd

import (
	"sync"
	"time"
)

// backendLogInterval is the minimum time between two log lines about
// failing backend reads of one export. A corrupt or vanished blob makes
// every read of it fail; the log gets one line per interval with the number
// of failures it stands for, not one line per request.
const backendLogInterval = 10 * time.Second

// rateLog rate-limits backend error logging per export and kind.
type rateLog struct {
	mu    sync.Mutex
	state map[string]*rateState // bounded: exports x a few kinds
}

type rateState struct {
	last       time.Time
	suppressed int
}

// allow reports whether a line for key may be logged now and how many
// events were suppressed since the previous line.
func (r *rateLog) allow(key string, now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == nil {
		r.state = make(map[string]*rateState)
	}
	st := r.state[key]
	if st == nil {
		st = &rateState{}
		r.state[key] = st
	}
	if !st.last.IsZero() && now.Sub(st.last) < backendLogInterval {
		st.suppressed++
		return false, 0
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	return true, n
}

// logBackendErr logs a failed backend operation, at most once per
// backendLogInterval per export and kind.
func (s *Server) logBackendErr(kind, export string, off uint64, length uint32, err error) {
	ok, suppressed := s.backendLog.allow(kind+"\x00"+export, time.Now())
	if !ok {
		return
	}
	s.log.Warn("nbd: "+kind+" failed", "export", export, "offset", off, "length", length, "err", err,
		"suppressed", suppressed)
}

// budget is a byte semaphore for READ buffers shared by all connections.
// One request may always proceed when nothing else holds the budget.
type budget struct {
	mu   sync.Mutex
	cond sync.Cond
	used int64
	max  int64
}

func (b *budget) init(max int64) {
	b.max = max
	b.cond.L = &b.mu
}

func (b *budget) acquire(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

// tryAcquire is acquire if it need not wait.
func (b *budget) tryAcquire(n int64) bool {
	if n == 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}
