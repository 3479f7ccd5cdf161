package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUnknownFlag: every subcommand says which flag it does not know
// (pflag prints nothing in ContinueOnError mode) and exits 2.
func TestUnknownFlag(t *testing.T) {
	for _, c := range commands() {
		if c.name == "version" {
			continue
		}
		var out, errb bytes.Buffer
		code := run([]string{c.name, "--no-such-flag"}, &out, &errb)
		if code != exitUnusable || !strings.Contains(errb.String(), "unknown flag: --no-such-flag") || !strings.Contains(errb.String(), c.name) {
			t.Errorf("%s --no-such-flag: exit %d, stderr %q", c.name, code, errb.String())
		}
	}
}
