package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExportPaths(t *testing.T) {
	wd, _ := os.Getwd()
	for in, want := range map[string]string{
		"p.erofs":                 filepath.Join(wd, "p.erofs"),
		"gzip:l.tar.gz":           "gzip:" + filepath.Join(wd, "l.tar.gz"),
		"/abs/p.erofs":            "/abs/p.erofs",
		"https://h/b?sig=x":       "https://h/b?sig=x",
		"oci://r:5000/x@sha256:0": "oci://r:5000/x@sha256:0",
	} {
		if got, err := absBlob(in); err != nil || got != want {
			t.Errorf("absBlob(%q) = %q %v, want %q", in, got, err, want)
		}
	}
	if got, _ := absImage("oci-layout:img:v1"); got != "oci-layout:"+filepath.Join(wd, "img:v1") {
		t.Errorf("absImage: %s", got)
	}
	if got, _ := absImage("oci://r/x:1"); got != "oci://r/x:1" {
		t.Errorf("absImage: %s", got)
	}
}

func TestExportUsage(t *testing.T) {
	t.Setenv("EROFS_BLOCKD_API", "")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, exitUnusable, "usage"},
		{[]string{"--help"}, exitOK, "export add NAME"},
		{[]string{"frob"}, exitUnusable, "unknown subcommand"},
		{[]string{"add"}, exitUnusable, "one NAME"},
		{[]string{"add", "x", "--blob", "a", "--image", "oci://r/x:1"}, exitUnusable, "not both"},
		{[]string{"add", "x", "--blob", "a", "--platform", "linux/arm64"}, exitUnusable, "--platform needs --image"},
		{[]string{"add", "-x", "--blob", "a"}, exitUnusable, "unknown shorthand"},
		{[]string{"ls", "--api", "tcp:1.2.3.4:5"}, exitUnusable, "want unix:PATH"},
		{[]string{"rm", "x", "--api", "unix:" + filepath.Join(t.TempDir(), "none")}, exitUnusable, "cannot reach"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"export"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.msg) {
			t.Errorf("export %v: exit %d, stderr %q", c.args, code, errb.String())
		}
	}
}
