package regtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Pusher uploads blobs to a registry through the distribution API,
// answering Basic and Bearer challenges with User/Pass.
type Pusher struct {
	URL        string // registry base, http(s)://HOST:PORT
	User, Pass string
	Client     *http.Client // trusting the registry's CA (see Client)

	auth string // Authorization that worked last
}

// PushFile uploads the file at path to repo and returns its digest.
func (p *Pusher) PushFile(repo, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return p.Push(repo, data)
}

// Push uploads data to repo with a monolithic upload (POST, then PUT with
// the digest) and returns the digest, sha256:HEX.
func (p *Pusher) Push(repo string, data []byte) (string, error) {
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	scope := "repository:" + repo + ":pull,push"
	resp, err := p.do(http.MethodPost, p.URL+"/v2/"+repo+"/blobs/uploads/", nil, scope)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST upload to %s: %s", repo, resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return "", fmt.Errorf("POST upload to %s: no usable Location", repo)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	resp, err = p.do(http.MethodPut, loc.String(), data, scope)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("PUT upload to %s: %s %s", repo, resp.Status, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest {
		return "", fmt.Errorf("PUT upload to %s: registry says digest %s, want %s", repo, got, digest)
	}
	return digest, nil
}

// do sends one request, answering one 401 challenge.
func (p *Pusher) do(method, u string, body []byte, scope string) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/octet-stream")
		}
		if p.auth != "" {
			req.Header.Set("Authorization", p.auth)
		}
		resp, err := p.Client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
			return resp, nil
		}
		ch := resp.Header.Get("WWW-Authenticate")
		resp.Body.Close()
		if err := p.answer(ch, scope); err != nil {
			return nil, err
		}
	}
}

func (p *Pusher) answer(challenge, scope string) error {
	kind, rest, _ := strings.Cut(challenge, " ")
	switch strings.ToLower(kind) {
	case "basic":
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(p.User, p.Pass)
		p.auth = req.Header.Get("Authorization")
		return nil
	case "bearer":
	default:
		return fmt.Errorf("unsupported challenge %q", challenge)
	}
	params := map[string]string{}
	for _, kv := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		params[strings.ToLower(k)] = strings.Trim(v, `"`)
	}
	ru, err := url.Parse(params["realm"])
	if err != nil {
		return err
	}
	q := ru.Query()
	q.Set("service", params["service"])
	q.Set("scope", scope)
	ru.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodGet, ru.String(), nil)
	req.SetBasicAuth(p.User, p.Pass)
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("token server: %s", resp.Status)
	}
	var tr struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.Token == "" {
		return fmt.Errorf("token server: no token")
	}
	p.auth = "Bearer " + tr.Token
	return nil
}

// AuthFile writes a containers auth.json (as skopeo login does) with user:pass for hostport to
// path.
func AuthFile(path, hostport, user, pass string) error {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	b, err := json.Marshal(map[string]any{"auths": map[string]any{hostport: map[string]string{"auth": auth}}})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
