package e2e

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/regtest"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// noSecrets fails t if text shows the test password, plain or as the
// base64 user:password of an auth file.
func noSecrets(t *testing.T, what, text string, passwords ...string) {
	t.Helper()
	for _, p := range append(passwords, regPass) {
		for _, s := range []string{p, base64.StdEncoding.EncodeToString([]byte(regUser + ":" + p))} {
			if strings.Contains(text, s) {
				t.Errorf("%s shows a password:\n%s", what, text)
			}
		}
	}
}

// The remote-source tests run real servers from internal/regtest:
// Debian's docker-registry with a test CA and htpasswd or token auth,
// nginx, and a fault-injecting proxy. Trust goes through --cert-dir and
// credentials through --authfile; nothing is written to /etc.

const (
	regUser = "e2e-puller"
	regPass = "pw-Zq8-e2e-correct"
)

// remoteEnv is a test CA (as a --cert-dir) and a directory for servers.
type remoteEnv struct {
	ca      *regtest.CA
	certDir string
	dir     string
}

func newRemoteEnv(t *testing.T) *remoteEnv {
	t.Helper()
	need(t, regtest.RegistryBinary, "htpasswd", "mkfs.erofs")
	ca, err := regtest.NewCA("erofs-blockd e2e CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cd, err := ca.CertDir(filepath.Join(dir, "certs"))
	if err != nil {
		t.Fatal(err)
	}
	return &remoteEnv{ca: ca, certDir: cd, dir: dir}
}

// registry starts a TLS registry with htpasswd auth (token auth when
// ts is non-nil) and writes an auth file holding pass for it.
func (e *remoteEnv) registry(t *testing.T, ts *regtest.TokenServer, pass string) (*regtest.Registry, string) {
	t.Helper()
	d, err := os.MkdirTemp(e.dir, "registry")
	if err != nil {
		t.Fatal(err)
	}
	opt := regtest.RegistryOptions{Dir: d, TLS: e.ca, Users: map[string]string{regUser: regPass}}
	if ts != nil {
		opt.Token = ts
	}
	reg, err := regtest.StartRegistry(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	af := filepath.Join(d, "auth.json")
	if err := regtest.AuthFile(af, reg.Addr, regUser, pass); err != nil {
		t.Fatal(err)
	}
	return reg, af
}

func (e *remoteEnv) tokenServer(t *testing.T) *regtest.TokenServer {
	t.Helper()
	ts, err := regtest.StartTokenServer(e.dir, e.ca, map[string]string{regUser: regPass})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Close)
	return ts
}

// push uploads every blob of im to repo through the registry API and
// returns the image with oci:// specs naming them at host (the registry,
// or a proxy in front of it).
func (e *remoteEnv) push(t *testing.T, reg *regtest.Registry, host, repo string, im image) image {
	t.Helper()
	p := &regtest.Pusher{URL: reg.URL, User: regUser, Pass: regPass, Client: regtest.Client(e.ca)}
	out := im
	out.blobs = nil
	for _, b := range im.blobs {
		dg, err := p.PushFile(repo, b)
		if err != nil {
			t.Fatalf("push %s: %v", b, err)
		}
		out.blobs = append(out.blobs, "oci://"+host+"/"+repo+"@"+dg)
	}
	return out
}

// remoteArgs are the blob flags of im plus trust and credentials.
func (e *remoteEnv) remoteArgs(im image, authFile string, extra ...string) []string {
	a := append(im.blobArgs(), "--cert-dir", e.certDir)
	if authFile != "" {
		a = append(a, "--authfile", authFile)
	}
	return append(a, extra...)
}

// composeRemote runs compose on remote blobs and checks the output is
// byte-identical to want (the composition of the local files).
func composeRemote(t *testing.T, args []string, want string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "remote.img")
	run(t, binPath, append(append([]string{"compose"}, args...), "-o", out)...)
	if got := fileSHA(t, out); got != fileSHA(t, want) {
		t.Fatalf("compose -o from remote blobs differs from the local composition")
	}
}

func blobSizes(t *testing.T, im image) int64 {
	var n int64
	for _, b := range im.blobs {
		st, err := os.Stat(b)
		if err != nil {
			t.Fatal(err)
		}
		n += st.Size()
	}
	return n
}

// TestRemoteRegistryHtpasswd: the primary and blobs of the three
// device-table layouts pushed to a TLS docker-registry with htpasswd auth
// are served with --blob oci://…, mounted by the host kernel (nbdfuse +
// erofs) identical to their source tree, and compose -o of the oci://
// blobs is byte-identical to the local composition; the registry's
// access log shows compose fetched each blob byte about once.
func TestRemoteRegistryHtpasswd(t *testing.T) {
	e := newRemoteEnv(t)
	reg, af := e.registry(t, nil, regPass)
	for _, im := range layouts(t, testtree.Options{Seed: 61, Files: 16, MaxSize: 192 << 10}) {
		t.Run(im.name, func(t *testing.T) {
			repo := "e2e/htpasswd-" + im.name
			rim := e.push(t, reg, reg.Addr, repo, im)
			srv := serve(t, e.remoteArgs(rim, af, "--fetch-chunk", "64K")...)
			compareTree(t, im.tree, fuseMount(t, srv.sock))

			before, _, err := reg.BlobBytes(repo)
			if err != nil {
				t.Fatal(err)
			}
			composeRemote(t, e.remoteArgs(rim, af), composeFile(t, im))
			after, n, _ := reg.BlobBytes(repo)
			size := blobSizes(t, im)
			t.Logf("compose: %d bytes of %d in blobs over %d ranged GETs in all", after-before, size, n)
			if after-before > size+size/10 {
				t.Errorf("compose fetched %d bytes for %d bytes of blobs", after-before, size)
			}
		})
	}
}

// TestRemoteRegistryInsecure: a plain-HTTP registry is refused unless
// named with --insecure-registry HOST:PORT; with it, compose -o is
// byte-identical (credentials from the auth file, Basic over http).
func TestRemoteRegistryInsecure(t *testing.T) {
	e := newRemoteEnv(t)
	reg, err := regtest.StartRegistry(regtest.RegistryOptions{Dir: filepath.Join(e.dir, "plain"), Users: map[string]string{regUser: regPass}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	af := filepath.Join(e.dir, "plain-auth.json")
	regtest.AuthFile(af, reg.Addr, regUser, regPass)
	im := layouts(t, testtree.Options{Seed: 64, Files: 8, MaxSize: 64 << 10})[1]
	rim := e.push(t, reg, reg.Addr, "e2e/plain", im)
	out, err := exec.Command(binPath, append([]string{"compose", "-o", filepath.Join(t.TempDir(), "x")}, e.remoteArgs(rim, af)...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), reg.Addr) {
		t.Fatalf("plain-HTTP registry without --insecure-registry: %v\n%s", err, out)
	}
	t.Logf("without --insecure-registry: %s", strings.TrimSpace(string(out)))
	composeRemote(t, e.remoteArgs(rim, af, "--insecure-registry", reg.Addr), composeFile(t, im))
}

// TestRemoteRegistryToken: the same through a registry with auth.token
// and a token server (ES256 JWTs, x5c chain to the registry's
// rootcertbundle): blobs pushed with a push token, one layout mounted by
// the kernel, all three composed byte-identical, and inspect, verify and
// ls read the image from the registry.
func TestRemoteRegistryToken(t *testing.T) {
	e := newRemoteEnv(t)
	ts := e.tokenServer(t)
	reg, af := e.registry(t, ts, regPass)
	for i, im := range layouts(t, testtree.Options{Seed: 62, Files: 16, MaxSize: 192 << 10}) {
		rim := e.push(t, reg, reg.Addr, "e2e/token-"+im.name, im)
		if i == 2 {
			srv := serve(t, e.remoteArgs(rim, af)...)
			compareTree(t, im.tree, fuseMount(t, srv.sock))
			run(t, binPath, append([]string{"verify", "--strict"}, e.remoteArgs(rim, af)...)...)
			run(t, binPath, append([]string{"inspect"}, e.remoteArgs(rim, af)...)...)
			ls := run(t, binPath, append([]string{"ls"}, e.remoteArgs(rim, af)...)...)
			lsLocal := run(t, binPath, append([]string{"ls"}, im.blobArgs()...)...)
			if ls != lsLocal {
				t.Errorf("ls of the oci:// image differs from ls of the local files")
			}
		}
		composeRemote(t, e.remoteArgs(rim, af), composeFile(t, im))
	}
	if ts.Issued() < 2 || ts.Refused() != 0 {
		t.Errorf("token server: %d issued, %d refused", ts.Issued(), ts.Refused())
	}
	t.Logf("token server issued %d tokens", ts.Issued())
}

// TestRemoteNginx: the blobs of two layouts served by nginx, one over
// http:// and one over https:// (the test CA via --cert-dir), mounted
// by the kernel identical to their tree and composed byte-identical.
func TestRemoteNginx(t *testing.T) {
	e := newRemoteEnv(t)
	need(t, regtest.NginxBinary)
	root := filepath.Join(e.dir, "www")
	ims := layouts(t, testtree.Options{Seed: 63, Files: 16, MaxSize: 192 << 10})
	specs := map[string]image{}
	for i, im := range ims {
		if i == 1 {
			continue
		}
		d := filepath.Join(root, im.name)
		os.MkdirAll(d, 0o755)
		out := im
		out.blobs = nil
		for j, b := range im.blobs {
			name := filepath.Base(b)
			if j == 0 {
				name = "primary-" + name
			}
			data, err := os.ReadFile(b)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, name), data, 0o644)
			out.blobs = append(out.blobs, "/"+im.name+"/"+name)
		}
		specs[im.name] = out
	}
	ng, err := regtest.StartNginx(filepath.Join(e.dir, "nginx"), root, e.ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ng.Close)
	for i, base := range []string{ng.HTTP, ng.HTTPS} {
		im := ims[2*i]
		rim := specs[im.name]
		for j := range rim.blobs {
			rim.blobs[j] = base + rim.blobs[j]
		}
		t.Run(strings.SplitN(base, ":", 2)[0]+"-"+im.name, func(t *testing.T) {
			srv := serve(t, e.remoteArgs(rim, "", "--fetch-chunk", "32K")...)
			compareTree(t, im.tree, fuseMount(t, srv.sock))
			composeRemote(t, e.remoteArgs(rim, ""), composeFile(t, im))
		})
	}
	// SSL_CERT_FILE (Go's system pool) instead of --cert-dir.
	rim := specs[ims[2].name]
	out := filepath.Join(t.TempDir(), "env.img")
	cmd := exec.Command(binPath, append(append([]string{"compose"}, rim.blobArgs()...), "-o", out)...)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+filepath.Join(e.certDir, "ca.crt"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("compose with SSL_CERT_FILE: %v\n%s", err, b)
	}
	if fileSHA(t, out) != fileSHA(t, composeFile(t, ims[2])) {
		t.Fatal("compose with SSL_CERT_FILE differs from the local composition")
	}
	es, err := ng.Access()
	if err != nil {
		t.Fatal(err)
	}
	ranged := 0
	for _, a := range es {
		if a.Status == "206" && strings.HasPrefix(a.Range, "bytes=") {
			ranged++
		}
	}
	if ranged == 0 {
		t.Fatalf("nginx logged no ranged GETs: %+v", es)
	}
	t.Logf("nginx answered %d ranged GETs", ranged)
}
