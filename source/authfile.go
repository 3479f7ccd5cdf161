package source

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// credential is a user and password for one registry.
type credential struct{ user, pass string }

// authFiles lists where credentials are looked for, in the order
// containers/image uses: --authfile, $REGISTRY_AUTH_FILE,
// $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json,
// ~/.docker/config.json.
func authFiles(explicit string) []string {
	if explicit != "" {
		return []string{explicit}
	}
	var out []string
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		out = append(out, f)
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		out = append(out, filepath.Join(d, "containers/auth.json"))
	}
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		out = append(out, filepath.Join(d, "config.json"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(h, ".docker/config.json"))
	}
	return out
}

// lookupCredential finds hostport's credential; a missing default file is
// not an error, a missing --authfile or a malformed file is (the message
// names the file, never its contents).
func lookupCredential(explicit, hostport string) (*credential, error) {
	for _, f := range authFiles(explicit) {
		b, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) && explicit == "" {
				continue
			}
			return nil, fmt.Errorf("auth file: %w", err)
		}
		var cfg struct {
			Auths map[string]struct {
				Auth     string `json:"auth"`
				Username string `json:"username"`
				Password string `json:"password"`
			} `json:"auths"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("auth file %s: not valid JSON", f)
		}
		for k, a := range cfg.Auths {
			if normalizeAuthKey(k) != hostport {
				continue
			}
			if a.Username != "" {
				return &credential{a.Username, a.Password}, nil
			}
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("auth file %s: entry for %s: bad base64", f, hostport)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("auth file %s: entry for %s: want user:password", f, hostport)
			}
			return &credential{u, p}, nil
		}
		if explicit != "" {
			return nil, nil
		}
	}
	return nil, nil
}

// normalizeAuthKey turns "https://host:port/v1/" style keys into host:port.
func normalizeAuthKey(k string) string {
	k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
	k, _, _ = strings.Cut(k, "/")
	return k
}
