package regtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tokenLeeway is distribution's clock-skew allowance on a token's exp.
const tokenLeeway = 60 * time.Second

// TokenServer is a Docker token-auth server (the realm of a registry's
// Bearer challenge) serving https://127.0.0.1:PORT/token. It checks Basic
// credentials against Users and signs ES256 JWTs carrying their
// certificate in x5c; the certificate is the registry's rootcertbundle.
type TokenServer struct {
	Realm   string // https://127.0.0.1:PORT/token
	Service string
	Issuer  string
	Bundle  string // rootcertbundle file for the registry

	users map[string]string
	key   *ecdsa.PrivateKey
	x5c   string
	srv   *http.Server

	mu sync.Mutex
	// expiresIn is what the client is told; lifetime is when the registry
	// stops accepting the token.
	expiresIn, lifetime time.Duration

	issued, refused atomic.Int64
}

// StartTokenServer starts a token server with TLS from ca for users,
// issuing tokens that live an hour. Its files go to dir.
func StartTokenServer(dir string, ca *CA, users map[string]string) (*TokenServer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "regtest token signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ts := &TokenServer{Service: "regtest-registry", Issuer: "regtest-token-server", Bundle: filepath.Join(dir, "token-signer.crt"),
		users: users, key: key, x5c: base64.StdEncoding.EncodeToString(der), expiresIn: time.Hour, lifetime: time.Hour}
	if err := os.WriteFile(ts.Bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	tc, err := ca.TLSConfig(dir, "token-server")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ts.Realm = "https://" + l.Addr().String() + "/token"
	ts.srv = &http.Server{Handler: http.HandlerFunc(ts.serve), TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second}
	go ts.srv.ServeTLS(l, "", "")
	return ts, nil
}

// SetExpiry sets what later tokens claim: expiresIn is the expires_in the
// client is told, lifetime how long the registry accepts them (their exp,
// less distribution's 60 s leeway). A lifetime shorter than expiresIn
// models a token revoked or expired early: the registry answers 401 and
// the client must fetch another.
func (ts *TokenServer) SetExpiry(expiresIn, lifetime time.Duration) {
	ts.mu.Lock()
	ts.expiresIn, ts.lifetime = expiresIn, lifetime
	ts.mu.Unlock()
}

// Issued counts tokens issued; Refused counts requests refused (bad or
// missing credentials).
func (ts *TokenServer) Issued() int64  { return ts.issued.Load() }
func (ts *TokenServer) Refused() int64 { return ts.refused.Load() }

// Close stops the server.
func (ts *TokenServer) Close() { ts.srv.Close() }

func (ts *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if want, known := ts.users[user]; !ok || !known || want != pass {
		ts.refused.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="regtest token server"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	if r.URL.Query().Get("service") != ts.Service {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	grants := []access{}
	for _, sc := range r.URL.Query()["scope"] {
		for _, s := range strings.Fields(sc) {
			p := strings.Split(s, ":")
			if len(p) == 3 && p[0] == "repository" {
				grants = append(grants, access{"repository", p[1], strings.Split(p[2], ",")})
			}
		}
	}
	ts.mu.Lock()
	expiresIn, lifetime := ts.expiresIn, ts.lifetime
	ts.mu.Unlock()
	now := time.Now()
	claims := map[string]any{
		"iss": ts.Issuer, "sub": user, "aud": ts.Service,
		"exp": now.Add(lifetime - tokenLeeway).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(ts.issued.Add(1)), "access": grants,
	}
	tok, err := ts.sign(claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok,
		"expires_in": int(expiresIn / time.Second), "issued_at": now.UTC().Format(time.RFC3339)})
}

// sign makes a compact JWS: ES256 over header.claims, signature r‖s.
func (ts *TokenServer) sign(claims map[string]any) (string, error) {
	h, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{ts.x5c}})
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	in := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + enc.EncodeToString(sig), nil
}
