package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/erofs-blockd/erofs-blockd/daemon"
	"github.com/erofs-blockd/erofs-blockd/source"
)

// defaultAPI is where `export` looks for the API of serve without --api
// or EROFS_BLOCKD_API: the path contrib/systemd's socket unit uses.
const defaultAPI = "unix:/run/erofs-blockd/api.sock"

const exportUsage = `usage: erofs-blockd export add NAME (--image REF [--platform P] | --blob B [--blob B ...]) [--description D] [--domain D]
       erofs-blockd export ls [--json]
       erofs-blockd export rm NAME

Adds, lists and removes the exports of a running 'erofs-blockd serve --api'
(or a socket-activated one). Local blob paths are sent as absolute paths;
the daemon opens them itself. The API is found with --api unix:PATH, else
$EROFS_BLOCKD_API, else ` + defaultAPI + `.
Export names: letters, digits, '.', '_', '-' (first a letter or digit), at
most 128 bytes. Exit status 0 done, 2 refused (the daemon's reason is
printed), unreachable or bad usage.
`

func runExport(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, exportUsage)
		if len(args) == 0 {
			return exitUnusable
		}
		return exitOK
	}
	sub, args := args[0], args[1:]
	if strings.HasPrefix(sub, "-") {
		fmt.Fprintf(stderr, "erofs-blockd export: unknown flag: %s (the subcommand comes first: export add|ls|rm [flags]; see erofs-blockd export --help)\n", sub)
		return exitUnusable
	}
	fs := newFlags("export "+sub, "", stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, "%s\nflags:\n%s", exportUsage, fs.FlagUsages()) }
	api := fs.String("api", "", "the daemon's API socket `unix:PATH` (default $EROFS_BLOCKD_API, else "+defaultAPI+")")
	var blobs []string
	var image, platform, desc, domain *string
	var asJSON *bool
	switch sub {
	case "add":
		fs.StringArrayVar(&blobs, "blob", nil, "primary image, then its devices in slot order (`FILE` or URL; repeatable)")
		image = fs.String("image", "", "image `REF`: oci://HOST/REPO:TAG or @sha256:..., oci-layout:DIR[:TAG]")
		platform = fs.String("platform", "", "with --image: `OS/ARCH[/VARIANT]` from an image index")
		desc = fs.String("description", "", "NBD export description (default: the sources)")
		domain = fs.String("domain", "", "dedup domain (exports in one domain share cached file contents)")
	case "ls":
		asJSON = fs.Bool("json", false, "print the daemon's JSON list")
	case "rm":
	default:
		fmt.Fprintf(stderr, "erofs-blockd export: unknown subcommand %q\n\n%s", sub, exportUsage)
		return exitUnusable
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "erofs-blockd export %s: %s\n", sub, fmt.Sprintf(format, a...))
		return exitUnusable
	}
	c, err := newAPIClient(*api)
	if err != nil {
		return fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pos := fs.Args()
	switch sub {
	case "add":
		if len(pos) != 1 {
			return fail("want one NAME (got %d arguments)", len(pos))
		}
		if err := daemon.CheckName(pos[0]); err != nil {
			return fail("%v", err)
		}
		if (*image == "") == (len(blobs) == 0) {
			return fail("give --image REF or --blob FILE (repeatable), not both")
		}
		if *platform != "" && *image == "" {
			return fail("--platform needs --image")
		}
		sp := daemon.Spec{Name: pos[0], Description: *desc, Domain: *domain, Platform: *platform}
		if sp.Image, err = absImage(*image); err != nil {
			return fail("%v", err)
		}
		for _, b := range blobs {
			ab, err := absBlob(b)
			if err != nil {
				return fail("%v", err)
			}
			sp.Blobs = append(sp.Blobs, ab)
		}
		body, _ := json.Marshal(sp)
		var ex daemon.APIExport
		if err := c.do(ctx, http.MethodPost, "/v1/exports", body, http.StatusCreated, &ex); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "added %s (%d bytes, block size %d)\n", ex.Name, ex.Size, ex.BlockSize)
	case "ls":
		if len(pos) != 0 {
			return fail("takes no arguments")
		}
		var list struct {
			Exports []daemon.APIExport `json:"exports"`
		}
		if err := c.do(ctx, http.MethodGet, "/v1/exports", nil, http.StatusOK, &list); err != nil {
			return fail("%v", err)
		}
		if *asJSON {
			b, _ := json.MarshalIndent(list, "", "  ")
			fmt.Fprintf(stdout, "%s\n", b)
			return exitOK
		}
		tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSIZE\tBLOCK\tSOURCE")
		for _, e := range list.Exports {
			src := strings.Join(e.Blobs, ",")
			if e.Image != "" {
				src = e.Image
				if e.Platform != "" {
					src += " (" + e.Platform + ")"
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", e.Name, e.Size, e.BlockSize, src)
		}
		tw.Flush()
	case "rm":
		if len(pos) != 1 {
			return fail("want one NAME (got %d arguments)", len(pos))
		}
		if err := c.do(ctx, http.MethodDelete, "/v1/exports/"+url.PathEscape(pos[0]), nil, http.StatusNoContent, nil); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "removed %s\n", pos[0])
	}
	return exitOK
}

// apiClient talks HTTP to the daemon's unix socket.
type apiClient struct {
	path string
	hc   *http.Client
}

func newAPIClient(flag string) (*apiClient, error) {
	spec := flag
	if spec == "" {
		spec = os.Getenv("EROFS_BLOCKD_API")
	}
	if spec == "" {
		spec = defaultAPI
	}
	path, ok := strings.CutPrefix(spec, "unix:")
	if !ok && strings.HasPrefix(spec, "/") {
		path, ok = spec, true
	}
	if !ok || path == "" {
		return nil, fmt.Errorf("--api %q: want unix:PATH", spec)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		ResponseHeaderTimeout: 0, // adding an image may take long
	}
	return &apiClient{path: path, hc: &http.Client{Transport: tr}}, nil
}

// do sends one request; a reply other than want becomes an error carrying
// the daemon's message.
func (c *apiClient) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	if method != http.MethodPost {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://erofs-blockd"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ctx.Err() == nil {
			err = ue.Unwrap()
		}
		return fmt.Errorf("cannot reach the daemon's API at unix:%s: %v (is 'erofs-blockd serve --api unix:PATH' running? see --api, EROFS_BLOCKD_API)", c.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the daemon's reply: %w", err)
	}
	if resp.StatusCode != want {
		var ae daemon.APIError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return fmt.Errorf("%s (%s)", ae.Error, resp.Status)
		}
		return fmt.Errorf("daemon replied %s: %.200s", resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("the daemon's reply: %w", err)
		}
	}
	return nil
}

// absBlob makes a local source path absolute (under any gzip:/zstd:
// prefixes): the daemon does not share our working directory.
func absBlob(b string) (string, error) {
	in := source.Inner(b)
	if in == "" || source.IsRemote(in) || filepath.IsAbs(in) {
		return b, nil
	}
	a, err := filepath.Abs(in)
	if err != nil {
		return "", fmt.Errorf("--blob %s: %w", b, err)
	}
	return source.WithInner(b, a), nil
}

// absImage makes the directory of an oci-layout: reference absolute.
func absImage(ref string) (string, error) {
	dir, ok := strings.CutPrefix(ref, "oci-layout:")
	if !ok || dir == "" || filepath.IsAbs(dir) {
		return ref, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("--image %s: %w", ref, err)
	}
	return "oci-layout:" + filepath.Join(wd, dir), nil
}
