package regtest

import (
	"fmt"
	"path/filepath"
)

// StackOptions configure StartStack.
type StackOptions struct {
	// Token puts the registry behind a token server instead of htpasswd.
	Token bool
	// Proxy puts a Proxy (TLS, switchable faults and latency) in front of
	// the registry; clients are pointed at it.
	Proxy bool
	// User and Pass are the credentials (default "regtest"/"regtest-pass").
	User, Pass string
}

// Stack is a ready-made TLS registry for benchmarks and tests: a CA as a
// --cert-dir, a registry with htpasswd or token auth, an auth file, and
// optionally a proxy in front of it (for latency or faults):
//
//	st, err := regtest.StartStack(dir, regtest.StackOptions{Proxy: true})
//	defer st.Close()
//	st.Proxy.SetLatency(20 * time.Millisecond)
//	spec, err := st.Push("bench/img", "primary.erofs")
//	// erofs-blockd serve --blob spec st.Args()...
type Stack struct {
	CA       *CA
	CertDir  string // --cert-dir
	AuthFile string // --authfile
	Host     string // HOST:PORT clients use (the proxy's if any)
	Registry *Registry
	Token    *TokenServer // nil with htpasswd
	Proxy    *Proxy       // nil without StackOptions.Proxy
	pusher   *Pusher
}

// StartStack starts everything under dir.
func StartStack(dir string, opt StackOptions) (st *Stack, err error) {
	if opt.User == "" {
		opt.User, opt.Pass = "regtest", "regtest-pass"
	}
	st = &Stack{}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if st.CA, err = NewCA("regtest CA"); err != nil {
		return nil, err
	}
	if st.CertDir, err = st.CA.CertDir(filepath.Join(dir, "certs")); err != nil {
		return nil, err
	}
	users := map[string]string{opt.User: opt.Pass}
	ropt := RegistryOptions{Dir: filepath.Join(dir, "registry"), TLS: st.CA, Users: users}
	if opt.Token {
		if st.Token, err = StartTokenServer(dir, st.CA, users); err != nil {
			return nil, err
		}
		ropt.Token = st.Token
	}
	if st.Registry, err = StartRegistry(ropt); err != nil {
		return nil, err
	}
	st.Host = st.Registry.Addr
	if opt.Proxy {
		if st.Proxy, err = StartProxy(ProxyOptions{Upstream: st.Registry.URL, UpstreamCA: st.CA, TLS: st.CA, Dir: dir}); err != nil {
			return nil, err
		}
		st.Host = st.Proxy.Addr
	}
	st.AuthFile = filepath.Join(dir, "auth.json")
	if err = AuthFile(st.AuthFile, st.Host, opt.User, opt.Pass); err != nil {
		return nil, err
	}
	st.pusher = &Pusher{URL: st.Registry.URL, User: opt.User, Pass: opt.Pass, Client: Client(st.CA)}
	return st, nil
}

// Push uploads the file at path to repo (straight to the registry) and
// returns its source spec, oci://HOST/REPO@DIGEST with the clients' HOST.
func (st *Stack) Push(repo, path string) (string, error) {
	dg, err := st.pusher.PushFile(repo, path)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", path, err)
	}
	return "oci://" + st.Host + "/" + repo + "@" + dg, nil
}

// Args are the erofs-blockd flags that trust the CA and use the auth file.
func (st *Stack) Args() []string {
	return []string{"--cert-dir", st.CertDir, "--authfile", st.AuthFile}
}

// Close stops every server of the stack.
func (st *Stack) Close() {
	if st.Proxy != nil {
		st.Proxy.Close()
	}
	if st.Registry != nil {
		st.Registry.Close()
	}
	if st.Token != nil {
		st.Token.Close()
	}
}
