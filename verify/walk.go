package verify

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// pathNode is a path kept as a parent chain, built into a string only when
// a problem is reported.
type pathNode struct {
	parent *pathNode
	name   string
	depth  int
}

func (p *pathNode) String() string {
	if p == nil {
		return ""
	}
	if p.parent == nil {
		return "/"
	}
	var parts []string
	for q := p; q != nil && q.parent != nil; q = q.parent {
		parts = append(parts, q.name)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

func (p *pathNode) child(name string) *pathNode {
	return &pathNode{parent: p, name: name, depth: p.depth + 1}
}

// node is what the walk remembers about a nid.
type node struct {
	ino   *erofs.Inode // nil if it could not be decoded
	links uint32       // dirents pointing here (excluding "." and "..")
	subs  uint32       // directories: subdirectories found
	path  *pathNode    // first path

	ranges     []erofs.Range
	rangesOK   bool
	rangesDone bool
}

type devInfo struct {
	slot     erofs.DeviceSlot
	realSize int64 // bytes; -1 unknown
}

type checker struct {
	img   *erofs.Image
	sb    *erofs.Superblock
	opt   Options
	rep   *Report
	bs    int64
	max   int
	stop  atomic.Bool
	mu    sync.Mutex // guards rep and limitNote (content workers)
	jobs  chan contentJob
	wg    sync.WaitGroup
	devs  []devInfo
	pblk  int64 // primary blocks in the unified space
	psize int64 // real primary size (bytes); in flat mode the composed device size
	nodes map[uint64]*node
	buf   []byte

	regions    []region // device-0 unified address regions
	regOverlap bool
	special    int   // packed/metabox inodes decoded
	packedSize int64 // -1 without packed inode
	limitNote  atomic.Bool
	bytes      atomic.Int64
}

func newChecker(img *erofs.Image, opt Options) *checker {
	c := &checker{img: img, sb: img.SB, opt: opt, rep: &Report{}, bs: img.BlockSize(),
		max: opt.MaxProblems, nodes: map[uint64]*node{}}
	if c.max <= 0 {
		c.max = DefaultMaxProblems
	}
	return c
}

func (c *checker) add(p Problem) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop.Load() {
		return
	}
	if len(c.rep.Problems) >= c.max {
		if p.Severity == SeverityWarning {
			// Warnings never stop the walk: count the ones past the cap.
			c.rep.WarningsDropped++
			return
		}
		c.rep.Truncated = true
		c.stop.Store(true)
		return
	}
	if p.Severity == "" {
		p.Severity = SeverityError
	}
	c.rep.Problems = append(c.rep.Problems, p)
}

func (c *checker) problemCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.rep.Problems)
}

func (c *checker) addf(path *pathNode, nid uint64, off int64, rule, format string, a ...any) {
	c.add(Problem{Path: path.String(), Nid: nid, Off: off, Rule: rule, Detail: fmt.Sprintf(format, a...)})
}

// warnf reports a warning: a rule stricter than what fs/erofs and
// fsck.erofs enforce.
func (c *checker) warnf(path *pathNode, nid uint64, off int64, rule, format string, a ...any) {
	c.add(Problem{Path: path.String(), Nid: nid, Off: off, Rule: rule, Detail: fmt.Sprintf(format, a...), Severity: SeverityWarning})
}

// addErr reports an error from package erofs.
func (c *checker) addErr(path *pathNode, nid uint64, off int64, def string, err error) {
	rule, o, space, detail := classify(err, def, off)
	c.add(Problem{Path: path.String(), Nid: nid, Off: o, Space: space, Rule: rule, Detail: detail})
}

func (c *checker) note(format string, a ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Notes = append(c.rep.Notes, fmt.Sprintf(format, a...))
}

type dirWork struct {
	ino    *erofs.Inode
	path   *pathNode
	parent uint64
}

func (c *checker) run() {
	c.checkDevices()
	c.checkComprCfgs()
	c.checkSpecial()
	if c.opt.Content {
		c.startWorkers()
	}
	defer c.finish()
	root := c.img.Root()
	rootPath := &pathNode{}
	c.nodes[root.Nid] = &node{ino: root, path: rootPath}
	c.checkInode(root, rootPath)
	stack := []dirWork{{ino: root, path: rootPath, parent: root.Nid}}
	for len(stack) > 0 && !c.stop.Load() {
		w := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		kids := c.checkDir(w)
		for i := len(kids) - 1; i >= 0; i-- {
			stack = append(stack, kids[i])
		}
	}
	if c.stop.Load() {
		return
	}
	c.checkCounts()
}

type contentJob struct {
	ino  *erofs.Inode
	path *pathNode
	rs   []erofs.Range
}

// startWorkers starts the content readers: files are read and decompressed
// in parallel while the walk goes on.
func (c *checker) startWorkers() {
	n := min(max(runtime.GOMAXPROCS(0), 1), 8)
	c.jobs = make(chan contentJob, 4*n)
	for i := 0; i < n; i++ {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			buf := make([]byte, 1<<20)
			for j := range c.jobs {
				c.safeContent(j, buf)
			}
		}()
	}
}

func (c *checker) safeContent(j contentJob, buf []byte) {
	defer func() {
		if r := recover(); r != nil {
			c.addf(j.path, j.ino.Nid, j.ino.Off, RuleInternal, "verifier panic reading content: %v", r)
		}
	}()
	if !c.stop.Load() {
		c.checkContent(j.ino, j.path, j.rs, buf)
	}
}

// finish waits for the content workers and puts the problems in a stable
// order (workers report in any order).
func (c *checker) finish() {
	if c.jobs != nil {
		close(c.jobs)
		c.wg.Wait()
	}
	c.rep.Bytes = c.bytes.Load()
	sort.SliceStable(c.rep.Problems, func(i, j int) bool {
		a, b := c.rep.Problems[i], c.rep.Problems[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Off < b.Off
	})
}

// checkDir reads one directory, checks its entries and returns the
// subdirectories to visit.
func (c *checker) checkDir(w dirWork) []dirWork {
	dir := w.ino
	ents := c.readDir(dir, w.path)
	if ents == nil {
		return nil
	}
	var kids []dirWork
	dots, dotdots := 0, 0
	self := c.nodes[dir.Nid]
	for _, d := range ents {
		if c.stop.Load() {
			return nil
		}
		c.rep.Dirents++
		switch d.Name {
		case ".":
			dots++
			switch {
			case dir.DotOmitted:
				c.addf(w.path, dir.Nid, d.phys, RuleDirentDot, "\".\" present although DOT_OMITTED is set")
			case dots > 1:
				c.addf(w.path, dir.Nid, d.phys, RuleDirentDot, "more than one \".\"")
			case d.Nid != dir.Nid:
				c.addf(w.path, dir.Nid, d.phys, RuleDirentDot, "\".\" points to nid %d, not the directory itself", d.Nid)
			}
			if d.Type != erofs.FtDir {
				c.addf(w.path, dir.Nid, d.phys, RuleDirentType, "\".\" has file_type %d, want %d (dir)", d.Type, erofs.FtDir)
			}
			continue
		case "..":
			dotdots++
			switch {
			case dotdots > 1:
				c.addf(w.path, dir.Nid, d.phys, RuleDirentDotDot, "more than one \"..\"")
			case d.Nid != w.parent:
				c.addf(w.path, dir.Nid, d.phys, RuleDirentDotDot, "\"..\" points to nid %d, parent is %d", d.Nid, w.parent)
			}
			if d.Type != erofs.FtDir {
				c.addf(w.path, dir.Nid, d.phys, RuleDirentType, "\"..\" has file_type %d, want %d (dir)", d.Type, erofs.FtDir)
			}
			continue
		}
		p := w.path.child(d.Name)
		n, seen := c.nodes[d.Nid]
		if !seen {
			n = &node{path: p}
			c.nodes[d.Nid] = n
			ino, err := c.img.Inode(d.Nid)
			if err != nil {
				rule, off, space, detail := classify(err, RuleInodeDecode, d.phys)
				if rule == RuleNidRange {
					// Point at the dirent, not at the impossible address.
					detail = sprintf("dirent %q: nid %d: %s (inode address %#x)", d.Name, d.Nid, detail, off)
					off, space = d.phys, ""
				}
				c.add(Problem{Path: p.String(), Nid: d.Nid, Off: off, Space: space, Rule: rule, Detail: detail})
				continue
			}
			n.ino = ino
			c.checkInode(ino, p)
		}
		n.links++
		ino := n.ino
		if ino == nil {
			continue
		}
		if want := erofs.DirentType(ino.Mode); d.Type != want {
			c.addf(p, d.Nid, d.phys, RuleDirentType, "file_type %d, inode is %s (%d)", d.Type, ino.TypeName(), want)
		}
		if ino.IsDir() {
			if self != nil {
				self.subs++
			}
			if seen {
				c.addf(p, d.Nid, d.phys, RuleDirCycle, "directory already reached as %s", n.path)
				continue
			}
			if p.depth > MaxDepth {
				c.addf(p, d.Nid, d.phys, RuleDirDepth, "directory deeper than %d levels", MaxDepth)
				continue
			}
			kids = append(kids, dirWork{ino: ino, path: p, parent: dir.Nid})
		}
	}
	if dots == 0 && !dir.DotOmitted {
		c.addf(w.path, dir.Nid, dir.Off, RuleDirentDot, "no \".\" entry")
	}
	if dotdots == 0 {
		c.addf(w.path, dir.Nid, dir.Off, RuleDirentDotDot, "no \"..\" entry")
	}
	return kids
}

// checkCounts checks nlink and the number of reachable inodes.
func (c *checker) checkCounts() {
	reached := 0
	for nid, n := range c.nodes {
		if n.ino == nil {
			continue
		}
		reached++
		ino := n.ino
		if ino.IsDir() {
			// mkfs.erofs: 2 + subdirectories. Only checked for dirs
			// that were walked (not hard-linked ones).
			if want := 2 + n.subs; ino.Nlink != want {
				c.addf(n.path, nid, ino.Off, RuleNlink, "directory nlink %d, has %d subdirectories (want %d)", ino.Nlink, n.subs, want)
			}
			continue
		}
		if ino.Nlink != n.links {
			c.addf(n.path, nid, ino.Off, RuleNlink, "nlink %d, but %d directory entries point here", ino.Nlink, n.links)
		}
	}
	if c.sb.Inos != 0 && uint64(reached) != c.sb.Inos && uint64(reached+c.special) != c.sb.Inos {
		detail := fmt.Sprintf("superblock counts %d inodes, %d reachable from the root", c.sb.Inos, reached)
		if uint64(reached) < c.sb.Inos {
			detail += " (unreachable inodes)"
		}
		c.add(Problem{Path: "", Nid: c.sb.RootNid, Off: erofs.SuperblockOffset + 0x10, Rule: RuleInodeCount, Detail: detail})
	}
}
