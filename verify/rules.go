package verify

import (
	"errors"
	"fmt"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// Rule names. They are stable: scripts and tests match on them.
const (
	// Superblock and device table.
	RuleSbBlocks        = "sb-blocks"          // primary block count beyond the primary device
	RuleSlotHi          = "slot-hi"            // blocks_hi/uniaddr_hi set without 48BIT
	RuleSlotReserved    = "slot-reserved"      // reserved slot bytes not zero
	RuleSlotOverlap     = "slot-overlap"       // unified ranges overlap the primary or each other
	RuleSlotDevice      = "slot-beyond-device" // slot blocks larger than the real device
	RuleSlotUnmapped    = "slot-unmapped"      // flat mode: slot has no blocks/uniaddr
	RuleDeviceMissing   = "device-missing"     // data on a device that was not given
	RuleComprCfg        = "compression-config" // a compression config record the kernel refuses at mount
	RuleInodeCount      = "inode-count"        // reachable inodes != superblock inos (unreachable inodes)
	RuleSpecialInode    = "special-inode"      // packed/metabox inode problems
	RuleNidRange        = "nid-range"          // nid outside the metadata area / image
	RuleInodeFormat     = "inode-format"       // reserved i_format bits or data layout
	RuleInodeMode       = "inode-mode"         // invalid file type in i_mode
	RuleInodeSize       = "inode-size"         // negative or impossible i_size
	RuleInodeLayout     = "inode-layout"       // layout not allowed for the type / features
	RuleInodeDecode     = "inode-decode"       // other inode decoding failures
	RuleStartHi         = "inode-startblk-hi"  // extended inode i_nb set without 48BIT
	RuleNlink           = "nlink"              // nlink disagrees with the directory tree
	RuleSymlink         = "symlink"            // unreadable or bad-sized symlink
	RuleDirentRead      = "dirent-read"        // directory data unreadable
	RuleDirentNameoff   = "dirent-nameoff"     // nameoff rules (nameoff0, bounds, contiguity)
	RuleDirentNameLen   = "dirent-name-length" // empty or > 255 bytes
	RuleDirentNameChar  = "dirent-name-char"   // '/' or NUL in a name
	RuleDirentOrder     = "dirent-order"       // names not strictly ascending
	RuleDirentFileType  = "dirent-file-type"   // file_type >= 8
	RuleDirentType      = "dirent-type"        // file_type inconsistent with the inode's mode
	RuleDirentDot       = "dirent-dot"         // "." missing, repeated, != self, or present with DOT_OMITTED
	RuleDirentDotDot    = "dirent-dotdot"      // ".." missing, repeated or != parent
	RuleDirentDup       = "dirent-duplicate"   // the same name twice
	RuleDirCycle        = "dir-hardlink"       // directory reached twice (cycle or hard link)
	RuleDirDepth        = "dir-depth"          // deeper than MaxDepth
	RuleRangeCoverage   = "range-coverage"     // ranges do not tile [0, i_size)
	RuleRangeOverflow   = "range-overflow"     // address arithmetic overflows
	RuleRangeDevice     = "range-beyond-device"
	RuleRangeSlot       = "range-beyond-slot"
	RuleRangeStraddle   = "range-straddle" // device-0 range across two devices
	RuleInlineBlock     = "inline-crosses-block"
	RuleChunkFormat     = "chunk-format"
	RuleChunkTable      = "chunk-table"
	RuleChunkDevMask    = "chunk-device-mask"  // device_id has bits outside the mask
	RuleChunkDevCount   = "chunk-device-count" // device_id beyond extra_devices
	RuleZmap            = "compressed-index"
	RuleDecompress      = "decompress"
	RuleFragment        = "fragment-range"
	RuleDataDecode      = "data-decode"
	RuleXattrIcount     = "xattr-icount"
	RuleXattrShareCount = "xattr-shared-count"
	RuleXattrSharedID   = "xattr-shared-id"
	RuleXattrPrefix     = "xattr-prefix-index"
	RuleXattrEntry      = "xattr-entry-size"
	RuleXattrDecode     = "xattr-decode"
	RuleContentRead     = "content-read"
	RuleFingerprint     = "fingerprint" // ishare fingerprint malformed or != content
	RuleInternal        = "internal"
)

// AllRules lists every rule name.
var AllRules = []string{
	RuleSbBlocks, RuleSlotHi, RuleSlotReserved, RuleSlotOverlap, RuleSlotDevice, RuleSlotUnmapped,
	RuleDeviceMissing, RuleComprCfg, RuleInodeCount, RuleSpecialInode, RuleNidRange, RuleInodeFormat, RuleInodeMode,
	RuleInodeSize, RuleInodeLayout, RuleInodeDecode, RuleStartHi, RuleNlink, RuleSymlink,
	RuleDirentRead, RuleDirentNameoff, RuleDirentNameLen, RuleDirentNameChar, RuleDirentOrder,
	RuleDirentFileType, RuleDirentType, RuleDirentDot, RuleDirentDotDot, RuleDirentDup, RuleDirCycle,
	RuleDirDepth, RuleRangeCoverage, RuleRangeOverflow, RuleRangeDevice, RuleRangeSlot,
	RuleRangeStraddle, RuleInlineBlock, RuleChunkFormat, RuleChunkTable, RuleChunkDevMask,
	RuleChunkDevCount, RuleZmap, RuleDecompress, RuleFragment, RuleDataDecode, RuleXattrIcount,
	RuleXattrShareCount, RuleXattrSharedID, RuleXattrPrefix, RuleXattrEntry, RuleXattrDecode,
	RuleContentRead, RuleFingerprint, RuleInternal,
}

// errRules maps substrings of erofs.FormatError rules to verify rules; the
// first match wins.
var errRules = []struct{ sub, rule string }{
	{"nid overflows", RuleNidRange},
	{"nid has metabox bit", RuleNidRange},
	{"inode beyond end", RuleNidRange},
	{"i_format reserved", RuleInodeFormat},
	{"data layout reserved", RuleInodeFormat},
	{"bad file type in i_mode", RuleInodeMode},
	{"negative i_size", RuleInodeSize},
	{"icount 1", RuleXattrIcount},
	{"inline data crosses block", RuleInlineBlock},
	{"inline data beyond end", RuleRangeDevice},
	{"chunk format reserved", RuleChunkFormat},
	{"chunk size too large", RuleChunkFormat},
	{"chunk table", RuleChunkTable},
	{"device_id beyond device mask", RuleChunkDevMask},
	{"device_id beyond extra devices", RuleChunkDevCount},
	{"device id beyond extra devices", RuleChunkDevCount},
	{"overflows", RuleRangeOverflow},
	{"compressed index", RuleZmap},
	{"compressed extents", RuleZmap},
	{"pcluster too large", RuleZmap},
	{"extent too large", RuleZmap},
	{"decompress", RuleDecompress},
	{"fragment", RuleFragment},
	{"shared_count", RuleXattrShareCount},
	{"long prefix index", RuleXattrPrefix},
	{"xattr entry", RuleXattrEntry},
	{"data beyond end of device", RuleRangeDevice},
	{"symlink", RuleSymlink},
}

// classify turns an error from package erofs into a rule, an offset and a
// detail. def is the rule used when nothing more specific matches; off is
// used when the error has no offset.
func classify(err error, def string, off int64) (rule string, o int64, space, detail string) {
	if errors.Is(err, erofs.ErrMissingDevice) {
		return RuleDeviceMissing, off, "", err.Error()
	}
	var fe *erofs.FormatError
	if !errors.As(err, &fe) {
		return def, off, "", err.Error()
	}
	rule, o = def, fe.Off
	if o < 0 {
		o = off
	}
	if fe.InMetabox {
		space = "metabox"
	}
	for _, m := range errRules {
		if strings.Contains(fe.Rule, m.sub) {
			rule = m.rule
			break
		}
	}
	detail = fe.Rule
	if fe.Val != nil {
		detail += fmt.Sprintf(" (%v)", fe.Val)
	}
	if fe.Err != nil {
		detail += ": " + fe.Err.Error()
	}
	return rule, o, space, detail
}
