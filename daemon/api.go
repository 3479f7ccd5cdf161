package daemon

// Runtime control: exports added and removed while the NBD server runs,
// and the HTTP+JSON API (normally on a 0600 unix socket) that drives it.
//
//	GET    /v1/exports         list of exports (apiExport), in order added
//	POST   /v1/exports         add: a Spec as JSON -> 201 and the export
//	GET    /v1/exports/{name}  one export
//	DELETE /v1/exports/{name}  remove -> 204
//
// Errors are {"error": "..."} with 400 (malformed JSON, unknown field,
// trailing data, missing or invalid name, no blobs/image or both, relative
// local path), 404 (no such export or path), 405 (method), 409 (name
// exists; export attached to a kernel device), 413 (body over 1 MiB), 415
// (not JSON), 422 (composition failed: missing blob, bad image; the text
// is the daemon's error), 503 (too many requests at once).
//
// Whoever can connect to the API can make the daemon open any file it can
// read: keep the socket owner-only (serve creates it 0600).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/source"
)

var (
	// ErrExists: an export of that name is served already.
	ErrExists = errors.New("export exists")
	// ErrNotFound: no export of that name.
	ErrNotFound = errors.New("no such export")
	// ErrPinned: the export may not be removed (a kernel device uses it).
	ErrPinned = errors.New("export in use")
)

// live is the Daemon's state for runtime changes; guarded by Daemon.mu.
type live struct {
	srv      *nbd.Server         // set by NBDServer: Add publishes to it
	draining []*Export           // removed, connections still finishing
	pinned   map[string]string   // name -> why Remove refuses
	check    func(*Export) error // run before an export is published
}

// nbdExport is ex as the NBD server serves it.
func (ex *Export) nbdExport() nbd.Export {
	return nbd.Export{Name: ex.Spec.Name, Description: ex.Description(), Device: ex.Dev, BlockSize: uint32(ex.Flat.Superblock().BlockSize())}
}

// SetCheck sets a check every export added from now on must pass before
// it is served (serve's --check). f runs with the daemon locked.
func (d *Daemon) SetCheck(f func(*Export) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.check = f
}

// Pin makes Remove refuse name with ErrPinned, why being the reason
// (e.g. "attached to /dev/nbd0").
func (d *Daemon) Pin(name, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pinned == nil {
		d.pinned = map[string]string{}
	}
	d.pinned[name] = why
}

// publish checks ex and adds it to the running NBD server, if there is
// one. d.mu is held.
func (d *Daemon) publish(ex *Export) error {
	if d.check != nil {
		if err := d.check(ex); err != nil {
			return err
		}
	}
	if d.srv == nil {
		return nil
	}
	if err := d.srv.AddExport(ex.nbdExport()); err != nil {
		if strings.Contains(err.Error(), "already exists") {
			// Still finishing its removal (Remove has not returned).
			return fmt.Errorf("export %q: %w (its removal is finishing)", ex.Spec.Name, ErrExists)
		}
		return err
	}
	return nil
}

// inUse reports whether a kept or draining export reads from o. d.mu is
// held.
func (d *Daemon) inUse(o *opened) bool {
	for _, list := range [][]*Export{d.exports, d.draining} {
		for _, ex := range list {
			if slices.Contains(ex.ofs, o) {
				return true
			}
		}
	}
	return false
}

// release closes the sources in ofs that no export uses any more and
// forgets them (a later Add opens them afresh). d.mu is held.
func (d *Daemon) release(ofs []*opened) {
	for _, o := range ofs {
		if !slices.Contains(d.order, o) || d.inUse(o) {
			continue
		}
		o.f.Close()
		d.order = slices.DeleteFunc(d.order, func(x *opened) bool { return x == o })
		if d.files[o.id] == o {
			delete(d.files, o.id)
		}
		for p, x := range d.byPath {
			if x == o {
				delete(d.byPath, p)
			}
		}
	}
}

// dropFailed undoes the opens of a failed Add: sources opened since
// d.order had n entries that no export uses, and parallel opens not
// taken. d.mu is held.
func (d *Daemon) dropFailed(n int) {
	if n < len(d.order) {
		d.release(slices.Clone(d.order[n:]))
	}
	for s, p := range d.pending {
		if p.b != nil {
			p.b.Close()
		}
		delete(d.pending, s)
	}
}

// Remove removes an export: from the NBD server first (its connections
// finish the requests they have read and are closed; Remove waits for
// them), then its sources are closed unless another export uses them
// (sources are shared by identity). Removing the default export leaves the
// server without one until the next Add (see nbd.Server.RemoveExport).
func (d *Daemon) Remove(name string) error {
	return d.RemoveContext(context.Background(), name)
}

// RemoveContext is Remove; when ctx ends before the export's connections
// have finished, they are closed forcibly and ctx.Err() is returned (the
// export is removed either way).
func (d *Daemon) RemoveContext(ctx context.Context, name string) error {
	d.mu.Lock()
	i := slices.IndexFunc(d.exports, func(e *Export) bool { return e.Spec.Name == name })
	if i < 0 {
		d.mu.Unlock()
		return fmt.Errorf("%w %q", ErrNotFound, name)
	}
	if why := d.pinned[name]; why != "" {
		d.mu.Unlock()
		return fmt.Errorf("%w: export %q is %s", ErrPinned, name, why)
	}
	ex := d.exports[i]
	d.exports = slices.Delete(d.exports, i, i+1)
	d.draining = append(d.draining, ex)
	srv := d.srv
	d.mu.Unlock()
	var err error
	if srv != nil {
		if err = srv.RemoveExportContext(ctx, name); errors.Is(err, nbd.ErrUnknownExport) {
			err = nil
		}
	}
	d.mu.Lock()
	d.draining = slices.DeleteFunc(d.draining, func(e *Export) bool { return e == ex })
	closeReaders(ex.readers)
	d.release(ex.ofs)
	d.mu.Unlock()
	d.log.Info("export removed", "export", name)
	return err
}

// Names of exports added through the API: 1 to MaxNameLen bytes of ASCII
// letters, digits, '.', '_' and '-', starting with a letter or digit. They
// are one URL path segment and need no quoting in NBD URIs or shells.
const MaxNameLen = 128

// CheckName reports whether name is acceptable for the API.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("missing export name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("export name longer than %d bytes", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return fmt.Errorf("export name %q: want letters, digits, '.', '_', '-', starting with a letter or digit", name)
		}
	}
	return nil
}

// checkAPISpec validates a spec posted to the API (400 when it fails).
func checkAPISpec(sp Spec) error {
	if err := CheckName(sp.Name); err != nil {
		return err
	}
	if sp.Platform != "" && sp.Image == "" {
		return errors.New("platform without image")
	}
	if len(sp.Description) > 1024 || strings.ContainsRune(sp.Description, 0) {
		return errors.New("description longer than 1024 bytes or contains NUL")
	}
	if len(sp.Blobs) > 1024 {
		return errors.New("more than 1024 blobs")
	}
	if err := CheckSpecs([]Spec{sp}); err != nil {
		if sp.Image == "" && len(sp.Blobs) == 0 {
			return fmt.Errorf("export %q: give blobs or an image", sp.Name)
		}
		return err
	}
	for _, b := range sp.Blobs {
		if in := source.Inner(b); !source.IsRemote(in) && !filepath.IsAbs(in) {
			return fmt.Errorf("blob %q: a local path must be absolute (the daemon's working directory is not yours)", b)
		}
	}
	return nil
}

// APIExport is an export as the API shows it.
type APIExport struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Size        int64    `json:"size"`
	BlockSize   int64    `json:"block_size"`
	Blobs       []string `json:"blobs,omitempty"` // credentials and URL queries removed
	Image       string   `json:"image,omitempty"`
	Platform    string   `json:"platform,omitempty"`
	Domain      string   `json:"domain,omitempty"`
}

// APIError is the body of every error reply.
type APIError struct {
	Error string `json:"error"`
}

func apiExport(ex *Export) APIExport {
	return APIExport{Name: ex.Spec.Name, Description: ex.Description(), Size: ex.Dev.Size(),
		BlockSize: ex.Flat.Superblock().BlockSize(), Blobs: source.Redacted(ex.Spec.Blobs),
		Image: redactRef(ex.Spec.Image), Platform: ex.Spec.Platform, Domain: ex.Spec.Domain}
}

// redactRef drops user info from an image reference with a URL form.
func redactRef(ref string) string {
	if u, err := url.Parse(ref); err == nil && u.User != nil {
		u.User = nil
		return u.String()
	}
	return ref
}

// maxAPIBody caps a request body.
const maxAPIBody = 1 << 20

// maxAPIRequests bounds the API requests served at once.
const maxAPIRequests = 16

// removeTimeout bounds how long DELETE waits for the export's connections
// to finish their requests before closing them forcibly.
const removeTimeout = 30 * time.Second

// APIHandler serves the API.
func (d *Daemon) APIHandler() http.Handler {
	sem := make(chan struct{}, maxAPIRequests)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			apiFail(w, http.StatusServiceUnavailable, "too many API requests at once")
			return
		}
		switch {
		case r.URL.Path == "/v1/exports":
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				var out []APIExport
				for _, ex := range d.Exports() {
					out = append(out, apiExport(ex))
				}
				apiJSON(w, http.StatusOK, struct {
					Exports []APIExport `json:"exports"`
				}{append([]APIExport{}, out...)})
			case http.MethodPost:
				d.apiAdd(w, r)
			default:
				w.Header().Set("Allow", "GET, HEAD, POST")
				apiFail(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on /v1/exports")
			}
		case strings.HasPrefix(r.URL.EscapedPath(), "/v1/exports/") && !strings.Contains(r.URL.EscapedPath()[len("/v1/exports/"):], "/"):
			name, err := url.PathUnescape(r.URL.EscapedPath()[len("/v1/exports/"):])
			if err != nil {
				apiFail(w, http.StatusBadRequest, "export name in the path: "+err.Error())
				return
			}
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				for _, ex := range d.Exports() {
					if ex.Spec.Name == name {
						apiJSON(w, http.StatusOK, apiExport(ex))
						return
					}
				}
				apiFail(w, http.StatusNotFound, fmt.Sprintf("%v %q", ErrNotFound, name))
			case http.MethodDelete:
				ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
				defer cancel()
				err := d.RemoveContext(ctx, name)
				switch {
				case errors.Is(err, ErrNotFound):
					apiFail(w, http.StatusNotFound, err.Error())
				case errors.Is(err, ErrPinned):
					apiFail(w, http.StatusConflict, err.Error())
				default:
					if err != nil { // removed, but connections were cut
						d.log.Warn("export removed; connections closed forcibly", "export", name, "err", err)
					}
					w.WriteHeader(http.StatusNoContent)
				}
			default:
				w.Header().Set("Allow", "GET, HEAD, DELETE")
				apiFail(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on an export")
			}
		default:
			apiFail(w, http.StatusNotFound, "no such API path "+r.URL.Path+" (see /v1/exports)")
		}
	})
}

func (d *Daemon) apiAdd(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			apiFail(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			apiFail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxAPIBody))
			return
		}
		apiFail(w, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	var sp Spec
	if err := dec.Decode(&sp); err != nil {
		apiFail(w, http.StatusBadRequest, "malformed export spec: "+err.Error())
		return
	}
	if dec.More() {
		apiFail(w, http.StatusBadRequest, "malformed export spec: data after the JSON object")
		return
	}
	if err := checkAPISpec(sp); err != nil {
		apiFail(w, http.StatusBadRequest, err.Error())
		return
	}
	ex, err := d.Add(sp)
	switch {
	case errors.Is(err, ErrExists):
		apiFail(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		apiFail(w, http.StatusUnprocessableEntity, fmt.Sprintf("export %q: %v", sp.Name, err))
		return
	}
	d.log.Info("export added", "export", sp.Name, "size", ex.Dev.Size())
	w.Header().Set("Location", "/v1/exports/"+sp.Name)
	apiJSON(w, http.StatusCreated, apiExport(ex))
}

func apiJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the reply"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func apiFail(w http.ResponseWriter, code int, msg string) {
	apiJSON(w, code, APIError{Error: msg})
}

// APIServer returns an http.Server for the API with timeouts that keep a
// stalled or hostile client from holding it: headers within 10 s, the
// body within 30 s, idle connections closed after 60 s. There is no write
// timeout: adding an image export may take long, and replies are small.
func (d *Daemon) APIServer() *http.Server {
	return &http.Server{
		Handler:           d.APIHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
}

// ServeAPI serves the API on ln until ln is closed.
func (d *Daemon) ServeAPI(ln net.Listener) error {
	err := d.APIServer().Serve(ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
