package fakehub

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // git object ids are SHA-1
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/helixflow/helixflow/test/faultbody"
)

// DefaultTreePageSize is the number of entries per tree page unless
// SetTreePageSize says otherwise.
const DefaultTreePageSize = 50

// Kind names a kind of request for Stats.
type Kind string

const (
	// KindModelInfo is GET /api/models/{id}[/revision/{rev}].
	KindModelInfo Kind = "model-info"
	// KindTree is GET /api/models/{id}/tree/{rev}.
	KindTree Kind = "tree"
	// KindResolve is GET or HEAD /{id}/resolve/{rev}/{path}.
	KindResolve Kind = "resolve"
	// KindCDN is GET or HEAD /cdn/{sha256}.
	KindCDN Kind = "cdn"
	// KindOther is any other request (answered 404 or 405).
	KindOther Kind = "other"
)

// Stats counts what the double served since it started or since ResetStats; ItemBytes is
// keyed "org/name/path".
type Stats = faultbody.Stats[Kind]

// Hub is a running fake Hugging Face Hub. Its methods are safe for concurrent
// use, also while it serves requests.
type Hub struct {
	srv    *httptest.Server
	secret []byte

	mu       sync.Mutex
	repos    map[string]*repo
	tokens   map[string]bool
	pageSize int

	// Faults holds the armed faults and the counters: Throttle, CutAfter, Stats and
	// ResetStats are the Hub's.
	*faultbody.Faults[Kind]
}

// New starts a Hub on 127.0.0.1 with no repositories. Close it when done.
func New() *Hub {
	h := &Hub{
		secret:   make([]byte, 32),
		repos:    map[string]*repo{},
		tokens:   map[string]bool{},
		pageSize: DefaultTreePageSize,
		Faults:   faultbody.NewFaults[Kind](),
	}
	_, _ = rand.Read(h.secret)
	h.srv = httptest.NewServer(http.HandlerFunc(h.serveHTTP))
	return h
}

// URL is the Hub's base URL (for HF_ENDPOINT), without a trailing slash.
func (h *Hub) URL() string { return h.srv.URL }

// Close stops the Hub and closes its connections.
func (h *Hub) Close() { h.srv.Close() }

// AddRepo adds or replaces the model repository id ("org/name"). Files under
// r.Dir are listed and hashed now (once per process for files GenerateModel
// wrote); their content is read at request time.
func (h *Hub) AddRepo(id string, r Repo) error {
	rp, err := newRepo(id, r)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.repos[id] = rp
	for t := range rp.tokens {
		h.tokens[t] = true
	}
	return nil
}

// Commit is the commit sha of repo id, or "" when there is no such repo.
func (h *Hub) Commit(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rp := h.repos[id]; rp != nil {
		return rp.commit
	}
	return ""
}

// AddToken makes tokens valid user tokens that have no access to private or
// gated repos. A request with a token the Hub does not know is answered 401,
// even for a public repo, as on the real Hub.
func (h *Hub) AddToken(tokens ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range tokens {
		h.tokens[t] = true
	}
}

// SetTreePageSize sets the number of entries per tree page (n >= 1).
func (h *Hub) SetTreePageSize(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pageSize = max(n, 1)
}

// Corrupt serves the file path of repo id with its middle byte inverted, while
// the tree, ETags and X-Linked-Etag still give the true hashes.
func (h *Hub) Corrupt(id, path string) { h.CorruptItem(id + "/" + path) }

func (h *Hub) serveHTTP(w http.ResponseWriter, r *http.Request) {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	kind, handle := h.route(segs)
	h.Count(kind, r)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		hubError(w, http.StatusMethodNotAllowed, "", "Method Not Allowed")
		return
	}
	handle(w, r)
}

// route maps a path to its kind and handler.
func (h *Hub) route(segs []string) (Kind, http.HandlerFunc) {
	notFound := func(w http.ResponseWriter, _ *http.Request) { hubError(w, http.StatusNotFound, "", "Not Found") }
	switch {
	case len(segs) >= 4 && segs[0] == "api" && segs[1] == "models":
		id := unescape(segs[2]) + "/" + unescape(segs[3])
		rest := segs[4:]
		switch {
		case len(rest) == 0:
			return KindModelInfo, func(w http.ResponseWriter, r *http.Request) { h.modelInfo(w, r, id, "") }
		case len(rest) == 2 && rest[0] == "revision" && rest[1] != "":
			return KindModelInfo, func(w http.ResponseWriter, r *http.Request) { h.modelInfo(w, r, id, unescape(rest[1])) }
		case len(rest) >= 2 && rest[0] == "tree" && rest[1] != "":
			return KindTree, func(w http.ResponseWriter, r *http.Request) {
				h.tree(w, r, id, unescape(rest[1]), unescapePath(rest[2:]))
			}
		}
	case len(segs) == 2 && segs[0] == "cdn":
		return KindCDN, func(w http.ResponseWriter, r *http.Request) { h.cdn(w, r, unescape(segs[1])) }
	case len(segs) >= 5 && segs[2] == "resolve":
		id := unescape(segs[0]) + "/" + unescape(segs[1])
		return KindResolve, func(w http.ResponseWriter, r *http.Request) {
			h.resolve(w, r, id, unescape(segs[3]), unescapePath(segs[4:]))
		}
	}
	return KindOther, notFound
}

func unescape(s string) string {
	u, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return u
}

func unescapePath(segs []string) string {
	out := make([]string, 0, len(segs))
	for _, s := range segs {
		if s != "" {
			out = append(out, unescape(s))
		}
	}
	return strings.Join(out, "/")
}

// hubError answers like the Hub: JSON {"error": msg} with X-Error-Code and
// X-Error-Message headers.
func hubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// access finds repo id and checks the request's token like the Hub does.
// forFile applies gating, which guards file downloads but not listings.
func (h *Hub) access(w http.ResponseWriter, r *http.Request, id string, forFile bool) (*repo, bool) {
	auth := r.Header.Get("Authorization")
	token, isBearer := strings.CutPrefix(auth, "Bearer ")
	h.mu.Lock()
	rp := h.repos[id]
	valid := isBearer && h.tokens[token]
	h.mu.Unlock()
	authed := auth != ""
	if authed && !valid {
		hubError(w, http.StatusUnauthorized, "", "Invalid credentials in Authorization header")
		return nil, false
	}
	if rp == nil || (rp.private && !rp.tokens[token]) {
		status := http.StatusUnauthorized
		if authed {
			status = http.StatusNotFound
		}
		hubError(w, status, "RepoNotFound", "Repository Not Found for url: "+h.URL()+r.URL.RequestURI()+".")
		return nil, false
	}
	if forFile && rp.gated && !rp.tokens[token] {
		if !authed {
			hubError(w, http.StatusUnauthorized, "GatedRepo", fmt.Sprintf(
				"Access to model %s is restricted. You must have access to it and be authenticated to access it. Please log in.", id))
			return nil, false
		}
		hubError(w, http.StatusForbidden, "GatedRepo", fmt.Sprintf(
			"Access to model %s is restricted and you are not in the authorized list. Visit %s/%s to ask for access.", id, h.URL(), id))
		return nil, false
	}
	return rp, true
}

func (h *Hub) checkRevision(w http.ResponseWriter, rp *repo, rev string) bool {
	if rev == rp.revision || rev == rp.commit {
		return true
	}
	hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
	return false
}

type sibling struct {
	RFilename string      `json:"rfilename"`
	Size      *int64      `json:"size,omitempty"`
	BlobID    string      `json:"blobId,omitempty"`
	LFS       *siblingLFS `json:"lfs,omitempty"`
}

type siblingLFS struct {
	SHA256      string `json:"sha256"`
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

type modelInfo struct {
	ID           string    `json:"id"`
	ModelID      string    `json:"modelId"`
	Author       string    `json:"author"`
	SHA          string    `json:"sha"`
	LastModified string    `json:"lastModified"`
	Private      bool      `json:"private"`
	Gated        any       `json:"gated"`
	Disabled     bool      `json:"disabled"`
	Tags         []string  `json:"tags"`
	Siblings     []sibling `json:"siblings"`
}

func (h *Hub) modelInfo(w http.ResponseWriter, r *http.Request, id, rev string) {
	rp, ok := h.access(w, r, id, false)
	if !ok {
		return
	}
	if rev == "" {
		rev = rp.revision
	}
	if !h.checkRevision(w, rp, rev) {
		return
	}
	blobs := r.URL.Query().Get("blobs") == "true"
	info := modelInfo{
		ID:           id,
		ModelID:      id,
		Author:       strings.SplitN(id, "/", 2)[0],
		SHA:          rp.commit,
		LastModified: "2025-01-01T00:00:00.000Z",
		Private:      rp.private,
		Gated:        false,
		Tags:         []string{},
		Siblings:     []sibling{},
	}
	if rp.gated {
		info.Gated = "manual"
	}
	for _, p := range rp.paths {
		s := sibling{RFilename: p}
		if blobs {
			f := rp.files[p]
			s.Size, s.BlobID = &f.size, f.oid()
			if f.lfs {
				s.LFS = &siblingLFS{SHA256: f.sha256, Size: f.size, PointerSize: f.pointerSize}
			}
		}
		info.Siblings = append(info.Siblings, s)
	}
	writeJSON(w, http.StatusOK, info)
}

type treeEntry struct {
	Type string   `json:"type"`
	OID  string   `json:"oid"`
	Size int64    `json:"size"`
	LFS  *treeLFS `json:"lfs,omitempty"`
	Path string   `json:"path"`
}

type treeLFS struct {
	OID         string `json:"oid"`
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

func (h *Hub) tree(w http.ResponseWriter, r *http.Request, id, rev, dir string) {
	rp, ok := h.access(w, r, id, false)
	if !ok || !h.checkRevision(w, rp, rev) {
		return
	}
	q := r.URL.Query()
	recursive := q.Get("recursive") == "true" || q.Get("recursive") == "1" || q.Get("recursive") == "True"
	if dir != "" && !containsString(rp.dirs, dir) {
		hubError(w, http.StatusNotFound, "EntryNotFound", fmt.Sprintf("%s does not exist on %q", dir, rev))
		return
	}
	inScope := func(p string) bool {
		parent := path.Dir(p)
		if dir == "" {
			return recursive || parent == "."
		}
		if recursive {
			return strings.HasPrefix(p, dir+"/")
		}
		return parent == dir
	}
	var entries []treeEntry
	for _, d := range rp.dirs {
		if inScope(d) {
			entries = append(entries, treeEntry{Type: "directory", OID: hexSum(sha1.New(), "fakehub tree "+rp.commit+" "+d), Path: d}) //nolint:gosec // git ids
		}
	}
	for _, p := range rp.paths {
		if !inScope(p) {
			continue
		}
		f := rp.files[p]
		e := treeEntry{Type: "file", OID: f.oid(), Size: f.size, Path: p}
		if f.lfs {
			e.LFS = &treeLFS{OID: f.sha256, Size: f.size, PointerSize: f.pointerSize}
		}
		entries = append(entries, e)
	}
	sortEntries(entries)

	start := 0
	if c := q.Get("cursor"); c != "" {
		raw, err := base64.RawURLEncoding.DecodeString(c)
		n, perr := strconv.Atoi(string(raw))
		if err != nil || perr != nil || n < 0 || n > len(entries) {
			hubError(w, http.StatusBadRequest, "", "Invalid cursor")
			return
		}
		start = n
	}
	h.mu.Lock()
	size := h.pageSize
	h.mu.Unlock()
	end := min(start+size, len(entries))
	if end < len(entries) {
		q.Set("cursor", base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end))))
		next := h.URL() + r.URL.EscapedPath() + "?" + q.Encode()
		w.Header().Set("Link", "<"+next+`>; rel="next"`)
	}
	page := entries[start:end]
	if page == nil {
		page = []treeEntry{}
	}
	writeJSON(w, http.StatusOK, page)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sortEntries(e []treeEntry) {
	// Directories and files merged in path order, as one walk lists them.
	sort.Slice(e, func(i, j int) bool { return e[i].Path < e[j].Path })
}

func (h *Hub) resolve(w http.ResponseWriter, r *http.Request, id, rev, p string) {
	rp, ok := h.access(w, r, id, true)
	if !ok || !h.checkRevision(w, rp, rev) {
		return
	}
	w.Header().Set("X-Repo-Commit", rp.commit)
	f := rp.files[p]
	if f == nil {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found")
		return
	}
	if f.lfs {
		w.Header().Set("Location", h.cdnURL(id, f))
		w.Header().Set("X-Linked-Etag", `"`+f.sha256+`"`)
		w.Header().Set("X-Linked-Size", strconv.FormatInt(f.size, 10))
		w.Header().Set("ETag", `"`+f.pointerOID+`"`)
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+f.gitOID+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	h.serveFile(w, r, id, f)
}

func (h *Hub) sign(id string, f *file) string {
	m := hmac.New(sha256.New, h.secret)
	_, _ = fmt.Fprintf(m, "%s\n%s\n%s", f.sha256, id, f.path)
	return hex.EncodeToString(m.Sum(nil))
}

// cdnURL is the signed URL the resolve redirect points to.
func (h *Hub) cdnURL(id string, f *file) string {
	q := url.Values{"repo": {id}, "file": {f.path}, "sig": {h.sign(id, f)}}
	return h.URL() + "/cdn/" + f.sha256 + "?" + q.Encode()
}

func (h *Hub) cdn(w http.ResponseWriter, r *http.Request, sum string) {
	q := r.URL.Query()
	id := q.Get("repo")
	h.mu.Lock()
	rp := h.repos[id]
	h.mu.Unlock()
	var f *file
	if rp != nil {
		f = rp.files[q.Get("file")]
	}
	if f == nil || f.sha256 != sum || !hmac.Equal([]byte(q.Get("sig")), []byte(h.sign(id, f))) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		_, _ = fmt.Fprint(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access denied</Message></Error>")
		return
	}
	w.Header().Set("ETag", `"`+f.sha256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	h.serveFile(w, r, id, f)
}

// serveFile writes f's content with Range support, counting and applying the
// armed faults.
func (h *Hub) serveFile(w http.ResponseWriter, r *http.Request, id string, f *file) {
	rs, done, err := faultbody.Open(f.data, f.diskPath)
	if err != nil {
		hubError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	defer done()
	h.Serve(w, r, id+"/"+f.path, rs, f.size, time.Time{})
}
