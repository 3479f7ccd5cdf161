package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

type inspectDevice struct {
	ID          int    `json:"device_id"`
	File        string `json:"file,omitempty"`
	FileSize    int64  `json:"file_size,omitempty"`
	TagKind     string `json:"tag_kind"`
	Tag         string `json:"tag"`
	Blocks      uint64 `json:"blocks"`
	UniAddr     uint64 `json:"uniaddr"`
	Composed    bool   `json:"composed"`
	CompBlocks  uint64 `json:"composed_blocks,omitempty"`
	CompUniAddr uint64 `json:"composed_uniaddr,omitempty"`
}

type inspectSummary struct {
	Dirs, Files, Symlinks, Devices, Fifos, Sockets int
	FileBytes                                      int64
	Layouts                                        map[string]int
}

type inspectOut struct {
	Image           string          `json:"image"`
	Size            int64           `json:"size"`
	Magic           string          `json:"magic"`
	Checksum        string          `json:"checksum"`
	BlockSize       int64           `json:"block_size"`
	Blocks          uint64          `json:"blocks"`
	UUID            string          `json:"uuid"`
	VolumeName      string          `json:"volume_name"`
	FeatureCompat   string          `json:"feature_compat"`
	FeatureIncompat string          `json:"feature_incompat"`
	Features        []string        `json:"features"`
	RootNid         uint64          `json:"root_nid"`
	Inodes          uint64          `json:"inodes"`
	MetaBlkAddr     uint32          `json:"meta_blkaddr"`
	XattrBlkAddr    uint32          `json:"xattr_blkaddr"`
	Epoch           uint64          `json:"epoch"`
	FixedNsec       uint32          `json:"fixed_nsec"`
	BuildTime       uint32          `json:"build_time"`
	PackedNid       uint64          `json:"packed_nid"`
	MetaboxNid      uint64          `json:"metabox_nid"`
	ComprAlgs       uint16          `json:"available_compr_algs_or_lz4_max_distance"`
	ComprCfgs       []string        `json:"compression_configs,omitempty"`
	XattrPrefixes   []string        `json:"xattr_prefixes,omitempty"`
	IsharePrefixID  *uint8          `json:"ishare_xattr_prefix_id,omitempty"`
	ExtraDevices    uint16          `json:"extra_devices"`
	DevtSlotOff     uint16          `json:"devt_slotoff"`
	DeviceMask      uint16          `json:"device_id_mask"`
	Devices         []inspectDevice `json:"devices"`
	ComposedSize    int64           `json:"composed_size,omitempty"`
	ComposeError    string          `json:"compose_error,omitempty"`
	Summary         *inspectSummary `json:"summary,omitempty"`
	SummaryError    string          `json:"summary_error,omitempty"`
}

var algNames = []string{"lz4", "lzma", "deflate", "zstd"}

func runInspect(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("inspect", "[flags] [IMAGE]", stderr)
	var img imageFlags
	var cf composeFlags
	img.register(fs)
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	paths, err := img.resolve(fs.Args())
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd inspect:", err)
		return exitUnusable
	}
	srcs, files, err := openSources(paths, img.opener())
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd inspect:", err)
		return exitUnusable
	}
	defer files.Close()
	sb, err := erofs.ReadSuperblock(srcs[0].R, srcs[0].Size)
	if err != nil {
		fmt.Fprintf(stderr, "erofs-blockd inspect: %s: %v\n", paths[0], err)
		return exitUnusable
	}
	o := inspectOut{
		Image: paths[0], Size: srcs[0].Size, Magic: fmt.Sprintf("%#08x", sb.Magic),
		BlockSize: sb.BlockSize(), Blocks: sb.Blocks, UUID: formatUUID(sb.UUID),
		VolumeName: sb.VolumeNameString(), FeatureCompat: fmt.Sprintf("%#x", sb.FeatureCompat),
		FeatureIncompat: fmt.Sprintf("%#x", sb.FeatureIncompat), Features: sb.Features(),
		RootNid: sb.RootNid, Inodes: sb.Inos, MetaBlkAddr: sb.MetaBlkAddr, XattrBlkAddr: sb.XattrBlkAddr,
		Epoch: sb.Epoch, FixedNsec: sb.FixedNsec, BuildTime: sb.BuildTime, PackedNid: sb.PackedNid,
		MetaboxNid: sb.MetaboxNid, ComprAlgs: sb.ComprAlgs, ExtraDevices: sb.ExtraDevices,
		DevtSlotOff: sb.DevtSlotOff, DeviceMask: sb.DeviceMask,
	}
	o.Checksum = fmt.Sprintf("%#08x", sb.Checksum)
	if sb.HasCompat(erofs.CompatSbChksum) {
		o.Checksum += " (verified)"
	} else {
		o.Checksum += " (not used)"
	}
	for _, c := range sb.ComprCfgs {
		name := fmt.Sprintf("alg%d", c.Alg)
		if c.Alg < len(algNames) {
			name = algNames[c.Alg]
		}
		o.ComprCfgs = append(o.ComprCfgs, fmt.Sprintf("%s: %s", name, hex.EncodeToString(c.Data)))
	}
	if sb.HasCompat(erofs.CompatIshareXattrs) {
		id := sb.IshareXattrPfx
		o.IsharePrefixID = &id
	}
	for i, d := range sb.Devices {
		id := inspectDevice{ID: i + 1, TagKind: d.TagKind(), Tag: d.TagString(), Blocks: d.Blocks, UniAddr: d.UniAddr}
		if i+1 < len(srcs) {
			id.File, id.FileSize = srcs[i+1].Name, srcs[i+1].Size
		}
		o.Devices = append(o.Devices, id)
	}
	// What serve would present: only when every device file was given.
	if len(srcs) == sb.NumDevices()+1 {
		align, _ := parseSize(cf.align)
		dev, err := flatdev.New(srcs[0], srcs[1:], flatdev.Options{Align: align})
		if err != nil {
			o.ComposeError = err.Error()
		} else {
			o.ComposedSize = dev.Size()
			for i, s := range dev.Slots() {
				o.Devices[i].Composed = dev.Map().Computed(i + 1)
				o.Devices[i].CompBlocks, o.Devices[i].CompUniAddr = s.Blocks, s.UniAddr
			}
		}
		im, files2, err := openImage(paths, img.opener())
		if err != nil {
			o.SummaryError = err.Error()
		} else {
			defer files2.Close()
			o.XattrPrefixes = im.XattrPrefixes()
			o.Summary, err = summarize(im)
			if err != nil {
				o.SummaryError = err.Error()
			}
		}
	} else {
		o.ComposeError = fmt.Sprintf("%d of %d device files given", len(srcs)-1, sb.NumDevices())
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(o)
		return exitOK
	}
	printInspect(stdout, &o)
	return exitOK
}

func summarize(img *erofs.Image) (*inspectSummary, error) {
	s := &inspectSummary{Layouts: map[string]int{}}
	err := img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		switch ino.TypeName() {
		case "dir":
			s.Dirs++
		case "file":
			s.Files++
			s.FileBytes += ino.Size
		case "symlink":
			s.Symlinks++
		case "char", "block":
			s.Devices++
		case "fifo":
			s.Fifos++
		case "socket":
			s.Sockets++
		}
		s.Layouts[ino.Layout.String()]++
		return nil
	})
	return s, err
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func printInspect(w io.Writer, o *inspectOut) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	p("image", fmt.Sprintf("%s (%d bytes)", o.Image, o.Size))
	p("magic", o.Magic)
	p("checksum", o.Checksum)
	p("block size", o.BlockSize)
	p("blocks", o.Blocks)
	p("uuid", o.UUID)
	p("volume name", fmt.Sprintf("%q", o.VolumeName))
	p("features", fmt.Sprintf("%s (compat %s, incompat %s)", strings.Join(o.Features, " "), o.FeatureCompat, o.FeatureIncompat))
	p("root nid", o.RootNid)
	p("inodes", o.Inodes)
	p("meta_blkaddr", o.MetaBlkAddr)
	p("xattr_blkaddr", o.XattrBlkAddr)
	p("epoch", fmt.Sprintf("%d (+%d ns)", o.Epoch, o.FixedNsec))
	if o.PackedNid != 0 {
		p("packed nid", o.PackedNid)
	}
	if o.MetaboxNid != 0 {
		p("metabox nid", o.MetaboxNid)
	}
	if len(o.ComprCfgs) > 0 {
		p("compression", strings.Join(o.ComprCfgs, "; "))
	}
	if len(o.XattrPrefixes) > 0 {
		p("xattr prefixes", strings.Join(o.XattrPrefixes, " "))
	}
	if o.IsharePrefixID != nil {
		p("ishare prefix id", *o.IsharePrefixID)
	}
	p("extra devices", fmt.Sprintf("%d (table at byte %d, device_id mask %#x)", o.ExtraDevices, int(o.DevtSlotOff)*128, o.DeviceMask))
	tw.Flush()
	if len(o.Devices) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  id\ttag\tblocks\tuniaddr\tcomposed blocks\tcomposed uniaddr\tfile")
		for _, d := range o.Devices {
			tag := d.TagKind
			if d.Tag != "" {
				tag += " " + d.Tag
			}
			note := ""
			if d.Composed {
				note = " (computed)"
			}
			fmt.Fprintf(tw, "  %d\t%s\t%d\t%d\t%d\t%d%s\t%s\n", d.ID, tag, d.Blocks, d.UniAddr, d.CompBlocks, d.CompUniAddr, note, d.File)
		}
		tw.Flush()
	}
	if o.ComposedSize > 0 {
		fmt.Fprintf(w, "composed device: %d bytes\n", o.ComposedSize)
	}
	if o.ComposeError != "" {
		fmt.Fprintf(w, "composed device: not available: %s\n", o.ComposeError)
	}
	if s := o.Summary; s != nil {
		fmt.Fprintf(w, "summary: %d dirs, %d files (%d bytes), %d symlinks, %d devices, %d fifos, %d sockets; layouts %v\n",
			s.Dirs, s.Files, s.FileBytes, s.Symlinks, s.Devices, s.Fifos, s.Sockets, s.Layouts)
	}
	if o.SummaryError != "" {
		fmt.Fprintf(w, "summary: not available: %s\n", o.SummaryError)
	}
}
