package ociimage

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
)

// Platform is an image's os/architecture/variant.
type Platform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant,omitempty"`
	OSVersion    string `json:"os.version,omitempty"`
}

// String is os/arch[/variant].
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "os/arch[/variant]" ("" = this machine:
// runtime.GOOS/runtime.GOARCH) and normalizes it as containerd does:
// x86_64 → amd64 (variant v1 is no variant), aarch64 → arm64 (no variant
// is v8), armhf → arm/v7, armel → arm/v6, arm without variant → arm/v7,
// i386 → 386.
func ParsePlatform(s string) (Platform, error) {
	if s == "" {
		return normalize(Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}), nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	for _, p := range parts {
		if p == "" || len(p) > 32 || strings.ContainsAny(p, " \t\n") {
			return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
		}
	}
	p := Platform{OS: strings.ToLower(parts[0]), Architecture: strings.ToLower(parts[1])}
	if len(parts) == 3 {
		p.Variant = strings.ToLower(parts[2])
	}
	return normalize(p), nil
}

func normalize(p Platform) Platform {
	p.OS = strings.ToLower(p.OS)
	p.Architecture = strings.ToLower(p.Architecture)
	p.Variant = strings.ToLower(p.Variant)
	switch p.Architecture {
	case "x86_64", "x86-64", "amd64":
		p.Architecture = "amd64"
		if p.Variant == "v1" {
			p.Variant = ""
		}
	case "i386":
		p.Architecture = "386"
		p.Variant = ""
	case "aarch64", "arm64":
		p.Architecture = "arm64"
		if p.Variant == "8" || p.Variant == "" {
			p.Variant = "v8"
		}
	case "armhf":
		p.Architecture, p.Variant = "arm", "v7"
	case "armel":
		p.Architecture, p.Variant = "arm", "v6"
	case "arm":
		switch p.Variant {
		case "", "7":
			p.Variant = "v7"
		case "5", "6", "8":
			p.Variant = "v" + p.Variant
		}
	}
	return p
}

// variantLevel is N of "vN", or -1.
func variantLevel(v string) int {
	if len(v) < 2 || v[0] != 'v' {
		return -1
	}
	n, err := strconv.Atoi(v[1:])
	if err != nil || n < 0 || n > 99 {
		return -1
	}
	return n
}

// rank says how well an image platform serves the wanted one: 0 is an
// exact match, higher is a worse but usable one, -1 is no match. As
// containerd's platforms.Only: amd64/vN runs amd64 vN..v1; arm/vN runs
// arm vN..v5; arm64 variants match exactly (no variant = v8).
func rank(want, have Platform) int {
	have = normalize(have)
	if want.OS != have.OS || want.Architecture != have.Architecture {
		return -1
	}
	if want.Variant == have.Variant {
		return 0
	}
	switch want.Architecture {
	case "amd64":
		w, h := variantLevel(want.Variant), variantLevel(have.Variant)
		if want.Variant == "" {
			w = 1
		}
		if have.Variant == "" {
			h = 1
		}
		if w >= 1 && h >= 1 && h <= w {
			return 1 + w - h
		}
	case "arm":
		w, h := variantLevel(want.Variant), variantLevel(have.Variant)
		if w >= 5 && h >= 5 && h <= w {
			return 1 + w - h
		}
	}
	return -1
}
