package fakehub_test

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // git object ids are SHA-1
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/helixflow/helixflow/test/fakehub"
)

func gitOID(b []byte) string {
	h := sha1.New() //nolint:gosec // git object ids are SHA-1
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// stripAuthOnRedirect follows redirects without forwarding Authorization, as
// a downloader must do for the CDN.
var stripAuthOnRedirect = &http.Client{CheckRedirect: func(req *http.Request, _ []*http.Request) error {
	req.Header.Del("Authorization")
	return nil
}}

func do(t *testing.T, c *http.Client, method, url, token string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, body
}

func get(t *testing.T, url, token string) (*http.Response, []byte) {
	t.Helper()
	return do(t, stripAuthOnRedirect, http.MethodGet, url, token, nil)
}

var (
	configJSON = []byte(`{"model_type":"fake"}`)
	weights    = bytes.Repeat([]byte("0123456789abcdef"), 1000)         // .safetensors: LFS by extension
	bigText    = bytes.Repeat([]byte("x"), fakehub.DefaultLFSThreshold) // LFS by size
	readme     = []byte("# readme\n")
)

func newHub(t *testing.T) *fakehub.Hub {
	t.Helper()
	hub := fakehub.New()
	t.Cleanup(hub.Close)
	err := hub.AddRepo("org/model", fakehub.Repo{Files: map[string][]byte{
		"config.json":        configJSON,
		"model.safetensors":  weights,
		"docs/big.txt":       bigText,
		"docs/sub/README.md": readme,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return hub
}

func TestModelInfo(t *testing.T) {
	hub := newHub(t)
	sha := hub.Commit("org/model")
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(sha) {
		t.Fatalf("commit %q is not 40 hex", sha)
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
		Size      int64  `json:"size"`
		BlobID    string `json:"blobId"`
		LFS       *struct {
			SHA256 string `json:"sha256"`
			Size   int64  `json:"size"`
		} `json:"lfs"`
	}
	type info struct {
		ID       string    `json:"id"`
		SHA      string    `json:"sha"`
		Siblings []sibling `json:"siblings"`
	}
	for _, rev := range []string{"main", sha} {
		resp, body := get(t, hub.URL()+"/api/models/org/model/revision/"+rev, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rev %s: status %d: %s", rev, resp.StatusCode, body)
		}
		var got info
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		want := info{ID: "org/model", SHA: sha, Siblings: []sibling{
			{RFilename: "config.json"}, {RFilename: "docs/big.txt"}, {RFilename: "docs/sub/README.md"}, {RFilename: "model.safetensors"},
		}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("rev %s: info (-want +got):\n%s", rev, diff)
		}
	}

	resp, body := get(t, hub.URL()+"/api/models/org/model/revision/main?blobs=true", "")
	var blobs info
	if err := json.Unmarshal(body, &blobs); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("blobs=true: %d %v", resp.StatusCode, err)
	}
	for _, s := range blobs.Siblings {
		if s.RFilename == "model.safetensors" && (s.LFS == nil || s.LFS.SHA256 != sha256Hex(weights) || s.Size != int64(len(weights))) {
			t.Errorf("blobs=true sibling %+v lacks the LFS sha256", s)
		}
		if s.RFilename == "config.json" && (s.LFS != nil || s.BlobID != gitOID(configJSON)) {
			t.Errorf("blobs=true sibling %+v: want blobId %s and no lfs", s, gitOID(configJSON))
		}
	}

	resp, body = get(t, hub.URL()+"/api/models/org/model/revision/nope", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "RevisionNotFound" ||
		!strings.Contains(string(body), `"error":"Invalid rev id: nope"`) {
		t.Errorf("unknown revision: %d %q %s", resp.StatusCode, resp.Header.Get("X-Error-Code"), body)
	}
}

type treeEntry struct {
	Type string `json:"type"`
	OID  string `json:"oid"`
	Size int64  `json:"size"`
	LFS  *struct {
		OID         string `json:"oid"`
		Size        int64  `json:"size"`
		PointerSize int    `json:"pointerSize"`
	} `json:"lfs"`
	Path string `json:"path"`
}

var linkNext = regexp.MustCompile(`^<([^>]+)>; rel="next"$`)

// listTree follows the Link headers and returns all entries and the number of
// pages.
func listTree(t *testing.T, url string) ([]treeEntry, int) {
	t.Helper()
	var all []treeEntry
	pages := 0
	for url != "" {
		resp, body := get(t, url, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("tree %s: %d %s", url, resp.StatusCode, body)
		}
		var page []treeEntry
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		pages++
		url = ""
		if link := resp.Header.Get("Link"); link != "" {
			m := linkNext.FindStringSubmatch(link)
			if m == nil {
				t.Fatalf("Link header %q", link)
			}
			url = m[1]
		}
	}
	return all, pages
}

func TestTree(t *testing.T) {
	hub := newHub(t)
	hub.SetTreePageSize(2)
	for _, q := range []string{"recursive=true", "recursive=1"} {
		entries, pages := listTree(t, hub.URL()+"/api/models/org/model/tree/main?"+q)
		if pages != 3 {
			t.Errorf("%s: %d pages of 2 for 6 entries, want 3", q, pages)
		}
		byPath := map[string]treeEntry{}
		var paths []string
		for _, e := range entries {
			byPath[e.Path] = e
			paths = append(paths, e.Path)
		}
		wantPaths := []string{"config.json", "docs", "docs/big.txt", "docs/sub", "docs/sub/README.md", "model.safetensors"}
		if diff := cmp.Diff(wantPaths, paths); diff != "" {
			t.Fatalf("%s: paths (-want +got):\n%s", q, diff)
		}
		for p, content := range map[string][]byte{"config.json": configJSON, "docs/sub/README.md": readme} {
			e := byPath[p]
			if e.Type != "file" || e.OID != gitOID(content) || e.Size != int64(len(content)) || e.LFS != nil {
				t.Errorf("%s: entry %+v: want git oid %s, size %d, no lfs", q, e, gitOID(content), len(content))
			}
		}
		for p, content := range map[string][]byte{"model.safetensors": weights, "docs/big.txt": bigText} {
			e := byPath[p]
			pointer := fmt.Sprintf("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n", sha256Hex(content), len(content))
			if e.Type != "file" || e.LFS == nil || e.LFS.OID != sha256Hex(content) || e.LFS.Size != int64(len(content)) ||
				e.Size != int64(len(content)) || e.LFS.PointerSize != len(pointer) || e.OID != gitOID([]byte(pointer)) {
				t.Errorf("%s: LFS entry %+v: want sha256 %s, size %d, oid of the pointer file", q, e, sha256Hex(content), len(content))
			}
		}
		if e := byPath["docs"]; e.Type != "directory" || len(e.OID) != 40 || e.Size != 0 {
			t.Errorf("%s: directory entry %+v", q, e)
		}
	}

	top, _ := listTree(t, hub.URL()+"/api/models/org/model/tree/main")
	var topPaths []string
	for _, e := range top {
		topPaths = append(topPaths, e.Path)
	}
	if diff := cmp.Diff([]string{"config.json", "docs", "model.safetensors"}, topPaths); diff != "" {
		t.Errorf("non-recursive root (-want +got):\n%s", diff)
	}
	sub, _ := listTree(t, hub.URL()+"/api/models/org/model/tree/"+hub.Commit("org/model")+"/docs?recursive=true")
	if len(sub) != 3 {
		t.Errorf("recursive docs/: %+v, want 3 entries", sub)
	}
	resp, _ := get(t, hub.URL()+"/api/models/org/model/tree/main/nodir", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "EntryNotFound" {
		t.Errorf("tree of a missing dir: %d %q", resp.StatusCode, resp.Header.Get("X-Error-Code"))
	}
	resp, _ = get(t, hub.URL()+"/api/models/org/model/tree/v2?recursive=true", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "RevisionNotFound" {
		t.Errorf("tree of a missing revision: %d %q", resp.StatusCode, resp.Header.Get("X-Error-Code"))
	}
}

func TestResolveRegularFile(t *testing.T) {
	hub := newHub(t)
	url := hub.URL() + "/org/model/resolve/main/config.json"
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, body := do(t, noRedirect, method, url, "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", method, resp.StatusCode)
		}
		if got := resp.Header.Get("ETag"); got != `"`+gitOID(configJSON)+`"` {
			t.Errorf("%s: ETag %s, want the git oid", method, got)
		}
		if got := resp.Header.Get("X-Repo-Commit"); got != hub.Commit("org/model") {
			t.Errorf("%s: X-Repo-Commit %s", method, got)
		}
		if resp.ContentLength != int64(len(configJSON)) {
			t.Errorf("%s: Content-Length %d", method, resp.ContentLength)
		}
		if method == http.MethodGet && !bytes.Equal(body, configJSON) {
			t.Errorf("GET body %q", body)
		}
	}
	resp, body := do(t, noRedirect, http.MethodGet, url, "", map[string]string{"Range": "bytes=2-5"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, configJSON[2:6]) {
		t.Errorf("range: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, hub.URL()+"/org/model/resolve/main/missing.txt", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "EntryNotFound" {
		t.Errorf("missing file: %d %q %s", resp.StatusCode, resp.Header.Get("X-Error-Code"), body)
	}
	resp, _ = get(t, hub.URL()+"/org/model/resolve/badrev/config.json", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "RevisionNotFound" {
		t.Errorf("missing revision: %d %q", resp.StatusCode, resp.Header.Get("X-Error-Code"))
	}
	resp, _ = do(t, noRedirect, http.MethodPost, url, "", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

func TestResolveLFSRedirectsToCDN(t *testing.T) {
	hub := newHub(t)
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, _ := do(t, noRedirect, method, hub.URL()+"/org/model/resolve/main/model.safetensors", "", nil)
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("%s: status %d, want 302", method, resp.StatusCode)
		}
		loc := resp.Header.Get("Location")
		if !strings.HasPrefix(loc, hub.URL()+"/cdn/"+sha256Hex(weights)+"?") || !strings.Contains(loc, "sig=") {
			t.Errorf("%s: Location %s", method, loc)
		}
		if got := resp.Header.Get("X-Linked-Etag"); got != `"`+sha256Hex(weights)+`"` {
			t.Errorf("%s: X-Linked-Etag %s", method, got)
		}
		if got := resp.Header.Get("X-Linked-Size"); got != fmt.Sprint(len(weights)) {
			t.Errorf("%s: X-Linked-Size %s", method, got)
		}
		if resp.Header.Get("X-Repo-Commit") != hub.Commit("org/model") || resp.Header.Get("ETag") == "" {
			t.Errorf("%s: X-Repo-Commit %q ETag %q", method, resp.Header.Get("X-Repo-Commit"), resp.Header.Get("ETag"))
		}
	}

	resp, _ := do(t, noRedirect, http.MethodGet, hub.URL()+"/org/model/resolve/main/model.safetensors", "", nil)
	loc := resp.Header.Get("Location")
	resp, body := get(t, loc, "")
	if resp.StatusCode != http.StatusOK || sha256Hex(body) != sha256Hex(weights) {
		t.Fatalf("CDN: %d, sha256 %s", resp.StatusCode, sha256Hex(body))
	}
	resp, body = do(t, noRedirect, http.MethodGet, loc, "", map[string]string{"Range": "bytes=100-"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, weights[100:]) {
		t.Errorf("CDN open range: %d, %d bytes", resp.StatusCode, len(body))
	}

	// Several ranges at once come back as multipart/byteranges.
	resp, body = do(t, noRedirect, http.MethodGet, loc, "", map[string]string{"Range": "bytes=0-9,50-59"})
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusPartialContent || err != nil || mt != "multipart/byteranges" {
		t.Fatalf("multi-range: %d %q %v", resp.StatusCode, mt, err)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, b)
	}
	if diff := cmp.Diff([][]byte{weights[0:10], weights[50:60]}, parts); diff != "" {
		t.Errorf("multi-range parts (-want +got):\n%s", diff)
	}

	// The signature is checked.
	bad := strings.Replace(loc, "sig=", "sig=00", 1)
	if resp, _ := get(t, bad, ""); resp.StatusCode != http.StatusForbidden {
		t.Errorf("bad signature: %d, want 403", resp.StatusCode)
	}
	if resp, _ := get(t, hub.URL()+"/cdn/"+sha256Hex(weights), ""); resp.StatusCode != http.StatusForbidden {
		t.Errorf("unsigned: %d, want 403", resp.StatusCode)
	}
}

func TestAuth(t *testing.T) {
	hub := fakehub.New()
	t.Cleanup(hub.Close)
	files := map[string][]byte{"config.json": configJSON, "model.safetensors": weights}
	for id, r := range map[string]fakehub.Repo{
		"org/private": {Files: files, Private: true, Tokens: []string{"owner"}},
		"org/gated":   {Files: files, Gated: true, Tokens: []string{"granted"}},
	} {
		if err := hub.AddRepo(id, r); err != nil {
			t.Fatal(err)
		}
	}
	hub.AddToken("stranger")

	tests := []struct {
		name, path, token string
		wantStatus        int
		wantCode          string
		wantBody          string
	}{
		{"private anonymous", "/api/models/org/private/revision/main", "", 401, "RepoNotFound", "Repository Not Found for url: "},
		{"private other user", "/api/models/org/private/revision/main", "stranger", 404, "RepoNotFound", "Repository Not Found"},
		{"private owner", "/api/models/org/private/revision/main", "owner", 200, "", `"private":true`},
		{"private file owner", "/org/private/resolve/main/config.json", "owner", 200, "", `"model_type"`},
		{"private file anonymous", "/org/private/resolve/main/config.json", "", 401, "RepoNotFound", ""},
		{"private tree anonymous", "/api/models/org/private/tree/main", "", 401, "RepoNotFound", ""},
		{"unknown token", "/api/models/org/gated/revision/main", "forged", 401, "", "Invalid credentials"},
		{"unknown repo anonymous", "/api/models/org/nope/revision/main", "", 401, "RepoNotFound", ""},
		{"unknown repo authenticated", "/api/models/org/nope/revision/main", "stranger", 404, "RepoNotFound", ""},
		{"gated info is public", "/api/models/org/gated/revision/main", "", 200, "", `"gated":"manual"`},
		{"gated tree is public", "/api/models/org/gated/tree/main", "", 200, "", "config.json"},
		{"gated file anonymous", "/org/gated/resolve/main/config.json", "", 401, "GatedRepo", "Please log in"},
		{"gated file not granted", "/org/gated/resolve/main/config.json", "stranger", 403, "GatedRepo", "Access to model org/gated is restricted"},
		{"gated file granted", "/org/gated/resolve/main/config.json", "granted", 200, "", `"model_type"`},
		{"gated LFS granted", "/org/gated/resolve/main/model.safetensors", "granted", 200, "", "0123456789abcdef"},
		{"gated LFS not granted", "/org/gated/resolve/main/model.safetensors", "stranger", 403, "GatedRepo", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, hub.URL()+tc.path, tc.token)
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("X-Error-Code") != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("got %d %q %.200s; want %d %q containing %q", resp.StatusCode, resp.Header.Get("X-Error-Code"), body,
					tc.wantStatus, tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestStats(t *testing.T) {
	hub := newHub(t)
	if got := hub.Stats().TotalRequests(); got != 0 {
		t.Fatalf("fresh hub: %d requests", got)
	}
	hub.AddToken("tok")
	get(t, hub.URL()+"/api/models/org/model/tree/main?recursive=true", "tok")
	get(t, hub.URL()+"/org/model/resolve/main/config.json", "tok")
	get(t, hub.URL()+"/org/model/resolve/main/model.safetensors", "tok")
	// A resumed download asks for the rest only.
	do(t, stripAuthOnRedirect, http.MethodGet, hub.URL()+"/org/model/resolve/main/docs/big.txt", "tok", map[string]string{"Range": "bytes=1000-"})

	s := hub.Stats()
	wantRequests := map[fakehub.Kind]int{fakehub.KindTree: 1, fakehub.KindResolve: 3, fakehub.KindCDN: 2}
	if diff := cmp.Diff(wantRequests, s.Requests); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	wantFiles := map[string]int64{
		"org/model/config.json":       int64(len(configJSON)),
		"org/model/model.safetensors": int64(len(weights)),
		"org/model/docs/big.txt":      int64(len(bigText) - 1000),
	}
	if diff := cmp.Diff(wantFiles, s.ItemBytes); diff != "" {
		t.Errorf("file bytes (-want +got):\n%s", diff)
	}
	if want := int64(len(configJSON) + len(weights) + len(bigText) - 1000); s.BodyBytes != want {
		t.Errorf("body bytes %d, want %d", s.BodyBytes, want)
	}
	wantAuth := map[fakehub.Kind][]string{
		fakehub.KindTree:    {"Bearer tok"},
		fakehub.KindResolve: {"Bearer tok", "Bearer tok", "Bearer tok"},
		fakehub.KindCDN:     {"", ""},
	}
	if diff := cmp.Diff(wantAuth, s.Auth); diff != "" {
		t.Errorf("authorization seen (-want +got):\n%s", diff)
	}
	hub.ResetStats()
	if s := hub.Stats(); s.TotalRequests() != 0 || s.BodyBytes != 0 || len(s.ItemBytes) != 0 {
		t.Errorf("after reset: %+v", s)
	}
}

func TestCorrupt(t *testing.T) {
	hub := newHub(t)
	hub.Corrupt("org/model", "model.safetensors")
	resp, body := get(t, hub.URL()+"/org/model/resolve/main/model.safetensors", "")
	if resp.StatusCode != http.StatusOK || len(body) != len(weights) {
		t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	if sha256Hex(body) == sha256Hex(weights) {
		t.Error("corrupted file has the true sha256")
	}
	diff := 0
	for i := range body {
		if body[i] != weights[i] {
			diff++
		}
	}
	if diff != 1 {
		t.Errorf("%d bytes differ, want 1", diff)
	}
	entries, _ := listTree(t, hub.URL()+"/api/models/org/model/tree/main")
	for _, e := range entries {
		if e.Path == "model.safetensors" && e.LFS.OID != sha256Hex(weights) {
			t.Errorf("tree lists sha256 %s, want the true one", e.LFS.OID)
		}
	}
	// Other files are intact.
	if _, body := get(t, hub.URL()+"/org/model/resolve/main/docs/big.txt", ""); !bytes.Equal(body, bigText) {
		t.Error("uncorrupted file differs")
	}
}

func TestCutAfter(t *testing.T) {
	hub := newHub(t)
	hub.CutAfter(1000)
	for _, p := range []string{"model.safetensors", "config.json", "docs/big.txt"} {
		resp, err := stripAuthOnRedirect.Get(hub.URL() + "/org/model/resolve/main/" + p)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if p == "config.json" {
			// Smaller than the cut: served whole.
			if err != nil || !bytes.Equal(body, configJSON) {
				t.Errorf("%s: %v, %d bytes", p, err, len(body))
			}
			continue
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || len(body) != 1000 {
			t.Errorf("%s: first download: err %v after %d bytes, want unexpected EOF after 1000", p, err, len(body))
		}
		// The second try succeeds.
		if _, body := get(t, hub.URL()+"/org/model/resolve/main/"+p, ""); len(body) != int(resp.ContentLength) {
			t.Errorf("%s: second download: %d of %d bytes", p, len(body), resp.ContentLength)
		}
	}
	if got := hub.Stats().ItemBytes["org/model/model.safetensors"]; got != int64(1000+len(weights)) {
		t.Errorf("bytes counted for the cut file: %d, want %d", got, 1000+len(weights))
	}
}

func TestThrottle(t *testing.T) {
	hub := newHub(t)
	hub.Throttle(2 << 20)
	start := time.Now()
	_, body := get(t, hub.URL()+"/org/model/resolve/main/docs/big.txt", "")
	// 1 MiB at 2 MiB/s takes 0.5s; only a lower bound is checked.
	if elapsed := time.Since(start); elapsed < 400*time.Millisecond || !bytes.Equal(body, bigText) {
		t.Errorf("1 MiB at 2 MiB/s took %v (%d bytes)", elapsed, len(body))
	}
}

func TestGeneratedModelDir(t *testing.T) {
	files := map[string]int64{
		"model-00001-of-00002.safetensors": 5<<20 + 3,
		"model-00002-of-00002.safetensors": 1 << 20,
		"sub/extra.txt":                    100,
		"empty.bin":                        0,
	}
	dir, again := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, again} {
		if err := fakehub.GenerateModel(d, files); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"model-00001-of-00002.safetensors", "sub/extra.txt", "config.json", "tokenizer.json"} {
		a, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(again, name))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two generations", name)
		}
		if want, ok := files[name]; ok && int64(len(a)) != want {
			t.Errorf("%s: %d bytes, want %d", name, len(a), want)
		}
	}
	if name := "config.json"; !json.Valid(mustRead(t, filepath.Join(dir, name))) {
		t.Errorf("%s is not JSON", name)
	}

	hub := fakehub.New()
	t.Cleanup(hub.Close)
	if err := hub.AddRepo("org/big", fakehub.Repo{Dir: dir, Files: map[string][]byte{"README.md": readme}}); err != nil {
		t.Fatal(err)
	}
	entries, _ := listTree(t, hub.URL()+"/api/models/org/big/tree/main?recursive=true")
	byPath := map[string]treeEntry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	if len(byPath) != 8 {
		t.Errorf("tree has %d entries, want 6 files, sub/ and README.md", len(byPath))
	}
	shard := mustRead(t, filepath.Join(dir, "model-00001-of-00002.safetensors"))
	if e := byPath["model-00001-of-00002.safetensors"]; e.LFS == nil || e.LFS.OID != sha256Hex(shard) {
		t.Fatalf("shard entry %+v, want sha256 %s", e, sha256Hex(shard))
	}
	if e := byPath["sub/extra.txt"]; e.LFS != nil || e.OID != gitOID(mustRead(t, filepath.Join(dir, "sub/extra.txt"))) {
		t.Errorf("small file entry %+v", e)
	}

	// Concurrent ranged downloads of one file reassemble it.
	resp, _ := do(t, noRedirect, http.MethodHead, hub.URL()+"/org/big/resolve/main/model-00001-of-00002.safetensors", "", nil)
	loc := resp.Header.Get("Location")
	const parts = 4
	got := make([]byte, len(shard))
	chunk := (len(shard) + parts - 1) / parts
	var wg sync.WaitGroup
	for i := range parts {
		wg.Go(func() {
			lo, hi := i*chunk, min((i+1)*chunk, len(shard))-1
			// No t.Fatal off the test goroutine.
			req, _ := http.NewRequest(http.MethodGet, loc, nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", lo, hi))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusPartialContent || len(body) != hi-lo+1 {
				t.Errorf("part %d: %d, %d bytes, %v", i, resp.StatusCode, len(body), err)
				return
			}
			copy(got[lo:], body)
		})
	}
	wg.Wait()
	if !bytes.Equal(got, shard) {
		t.Error("reassembled ranges differ from the file")
	}
	if got := hub.Stats().ItemBytes["org/big/model-00001-of-00002.safetensors"]; got != int64(len(shard)) {
		t.Errorf("counted %d bytes for the shard, want %d", got, len(shard))
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
