package fakegcs_test

import (
	"bytes"
	"context"
	"crypto/md5" //nolint:gosec // GCS reports MD5 hashes
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/helixflow/helixflow/test/fakegcs"
)

const readOnlyScope = "https://www.googleapis.com/auth/devstorage.read_only"

func md5Base64(b []byte) string {
	s := md5.Sum(b) //nolint:gosec // GCS reports MD5 hashes
	return base64.StdEncoding.EncodeToString(s[:])
}

func crc32cBase64(b []byte) string {
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	return base64.StdEncoding.EncodeToString(out[:])
}

// serviceAccount is the part of a key file golang.org/x/oauth2/google reads.
type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

// jwtConfig builds the config golang.org/x/oauth2/google's
// CredentialsFromJSON builds for a service-account key. (That package itself
// needs cloud.google.com/go/compute/metadata, which go.mod does not hold.)
func jwtConfig(t *testing.T, keyJSON []byte, scopes ...string) *jwt.Config {
	t.Helper()
	var sa serviceAccount
	if err := json.Unmarshal(keyJSON, &sa); err != nil {
		t.Fatal(err)
	}
	if sa.Type != "service_account" || sa.ClientEmail == "" || sa.PrivateKeyID == "" || sa.ProjectID == "" {
		t.Fatalf("key file %+v", sa)
	}
	return &jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), PrivateKeyID: sa.PrivateKeyID,
		Scopes: scopes, TokenURL: sa.TokenURI}
}

var (
	shard   = bytes.Repeat([]byte("gcs-weights-0123"), 64<<10) // 1 MiB
	config  = []byte(`{"model_type":"fake"}`)
	objects = map[string][]byte{
		"models/llama/config.json":       config,
		"models/llama/model.safetensors": shard,
		"models/llama/sub/tok.json":      []byte(`{}`),
		"models/other/config.json":       []byte(`{"other":true}`),
	}
)

func newServer(t *testing.T) *fakegcs.Server {
	t.Helper()
	srv := fakegcs.New()
	t.Cleanup(srv.Close)
	for name, content := range objects {
		srv.PutObject("bkt", name, content)
	}
	return srv
}

func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, body
}

type object struct {
	Kind        string `json:"kind"`
	Name        string `json:"name"`
	Bucket      string `json:"bucket"`
	Size        string `json:"size"`
	MD5Hash     string `json:"md5Hash"`
	CRC32C      string `json:"crc32c"`
	Generation  string `json:"generation"`
	ContentType string `json:"contentType"`
	MediaLink   string `json:"mediaLink"`
}

type listPage struct {
	Kind          string   `json:"kind"`
	Items         []object `json:"items"`
	Prefixes      []string `json:"prefixes"`
	NextPageToken string   `json:"nextPageToken"`
}

// listAll pages through a listing and returns the items, prefixes and number
// of pages.
func listAll(t *testing.T, c *http.Client, base, bucket string, q url.Values) ([]object, []string, int) {
	t.Helper()
	var items []object
	var prefixes []string
	pages := 0
	for {
		resp, body := do(t, c, http.MethodGet, base+"/storage/v1/b/"+bucket+"/o?"+q.Encode(), nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("list: %d %s", resp.StatusCode, body)
		}
		var page listPage
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		if page.Kind != "storage#objects" {
			t.Errorf("list kind %q", page.Kind)
		}
		items = append(items, page.Items...)
		prefixes = append(prefixes, page.Prefixes...)
		pages++
		if page.NextPageToken == "" {
			return items, prefixes, pages
		}
		q.Set("pageToken", page.NextPageToken)
	}
}

func TestServiceAccountFlowListAndRangedDownload(t *testing.T) {
	srv := newServer(t)
	ctx := context.Background()
	client := jwtConfig(t, srv.ServiceAccountJSON(), readOnlyScope).Client(ctx)

	items, _, _ := listAll(t, client, srv.URL(), "bkt", url.Values{"prefix": {"models/llama/"}})
	byName := map[string]object{}
	for _, o := range items {
		byName[o.Name] = o
	}
	if len(items) != 3 {
		t.Fatalf("listed %d objects, want 3: %+v", len(items), items)
	}
	for _, name := range []string{"models/llama/config.json", "models/llama/model.safetensors"} {
		content, o := objects[name], byName[name]
		if o.Kind != "storage#object" || o.Bucket != "bkt" || o.Size != fmt.Sprint(len(content)) ||
			o.MD5Hash != md5Base64(content) || o.CRC32C != crc32cBase64(content) || o.Generation == "" {
			t.Errorf("%s: %+v; want size %d md5 %s crc32c %s", name, o, len(content), md5Base64(content), crc32cBase64(content))
		}
	}
	if ct := byName["models/llama/config.json"].ContentType; ct != "application/json" {
		t.Errorf("config.json content type %q", ct)
	}

	media := srv.URL() + "/storage/v1/b/bkt/o/" + url.PathEscape("models/llama/model.safetensors") + "?alt=media"
	resp, body := do(t, client, http.MethodGet, media, map[string]string{"Range": "bytes=1000-1999"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, shard[1000:2000]) {
		t.Fatalf("ranged download: %d, %d bytes", resp.StatusCode, len(body))
	}
	if got := resp.Header.Values("X-Goog-Hash"); !cmp.Equal(got, []string{"crc32c=" + crc32cBase64(shard), "md5=" + md5Base64(shard)}) {
		t.Errorf("x-goog-hash %v", got)
	}
	resp, body = do(t, client, http.MethodHead, media, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(shard)) || len(body) != 0 ||
		len(resp.Header.Values("X-Goog-Hash")) != 2 {
		t.Errorf("HEAD: %d, Content-Length %d, %d body bytes", resp.StatusCode, resp.ContentLength, len(body))
	}
	resp, body = do(t, client, http.MethodGet, media, nil)
	if resp.StatusCode != http.StatusOK || md5Base64(body) != md5Base64(shard) {
		t.Errorf("full download: %d, md5 %s", resp.StatusCode, md5Base64(body))
	}
	// The mediaLink and the /download form serve the same bytes.
	for _, u := range []string{byName["models/llama/model.safetensors"].MediaLink,
		srv.URL() + "/download/storage/v1/b/bkt/o/models%2Fllama%2Fmodel.safetensors?alt=media"} {
		if resp, body := do(t, client, http.MethodGet, u, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, shard) {
			t.Errorf("%s: %d, %d bytes", u, resp.StatusCode, len(body))
		}
	}

	s := srv.Stats()
	if s.Requests[fakegcs.KindToken] != 1 || s.Requests[fakegcs.KindList] != 1 || s.Requests[fakegcs.KindMedia] != 5 {
		t.Errorf("requests %v: want one token, one list, five media", s.Requests)
	}
	if s.Auth[fakegcs.KindToken][0] != "" || !strings.HasPrefix(s.Auth[fakegcs.KindMedia][0], "Bearer ya29.") {
		t.Errorf("authorization seen %v", s.Auth)
	}
	if want := int64(1000 + 3*len(shard)); s.BodyBytes != want || s.ItemBytes["bkt/models/llama/model.safetensors"] != want {
		t.Errorf("bytes %d / %v, want %d", s.BodyBytes, s.ItemBytes, want)
	}
}

func TestMetadata(t *testing.T) {
	srv := newServer(t)
	srv.SetPublic(true)
	resp, body := do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/models%2Fllama%2Fconfig.json", nil)
	var o object
	if err := json.Unmarshal(body, &o); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metadata: %d %v %s", resp.StatusCode, err, body)
	}
	if o.Name != "models/llama/config.json" || o.MD5Hash != md5Base64(config) || o.Size != fmt.Sprint(len(config)) {
		t.Errorf("metadata %+v", o)
	}
	resp, _ = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/models%2Fllama%2Fconfig.json?generation=1", nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("wrong generation: %d, want 404", resp.StatusCode)
	}
	resp, _ = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/models%2Fllama%2Fconfig.json?generation="+o.Generation, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("right generation: %d, want 200", resp.StatusCode)
	}
	// Replacing an object gives it a new generation.
	srv.PutObject("bkt", "models/llama/config.json", []byte("{}"))
	_, body = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/models%2Fllama%2Fconfig.json", nil)
	var o2 object
	_ = json.Unmarshal(body, &o2)
	if o2.Generation == o.Generation || o2.Size != "2" {
		t.Errorf("after replace: %+v", o2)
	}
	resp, body = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"kind":"storage#bucket"`) {
		t.Errorf("bucket: %d %s", resp.StatusCode, body)
	}
}

func TestPagination(t *testing.T) {
	srv := fakegcs.New()
	t.Cleanup(srv.Close)
	srv.SetPublic(true)
	var want []string
	for i := range 25 {
		name := fmt.Sprintf("m/shard-%03d.bin", i)
		srv.PutObject("paged", name, []byte(name))
		want = append(want, name)
	}
	srv.PutObject("paged", "n/other", []byte("x"))

	srv.SetPageSize(10)
	items, _, pages := listAll(t, http.DefaultClient, srv.URL(), "paged", url.Values{"prefix": {"m/"}})
	var got []string
	for _, o := range items {
		got = append(got, o.Name)
	}
	if diff := cmp.Diff(want, got); diff != "" || pages != 3 {
		t.Errorf("%d pages of 10; names (-want +got):\n%s", pages, diff)
	}
	_, _, pages = listAll(t, http.DefaultClient, srv.URL(), "paged", url.Values{"prefix": {"m/"}, "maxResults": {"4"}})
	if pages != 7 {
		t.Errorf("maxResults=4: %d pages, want 7", pages)
	}
	items, prefixes, _ := listAll(t, http.DefaultClient, srv.URL(), "paged", url.Values{"delimiter": {"/"}})
	if len(items) != 0 || !cmp.Equal(prefixes, []string{"m/", "n/"}) {
		t.Errorf("delimiter: items %v prefixes %v", items, prefixes)
	}
}

func TestAuthFailures(t *testing.T) {
	srv := newServer(t)
	list := srv.URL() + "/storage/v1/b/bkt/o"
	type apiError struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	check := func(name string, resp *http.Response, body []byte, status int, msg string) {
		t.Helper()
		var e apiError
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != status || e.Error.Code != status || !strings.Contains(e.Error.Message, msg) {
			t.Errorf("%s: %d %s; want %d with %q", name, resp.StatusCode, body, status, msg)
		}
	}
	resp, body := do(t, http.DefaultClient, http.MethodGet, list, nil)
	check("anonymous list", resp, body, 401, "Anonymous caller does not have storage.objects.list access")
	resp, body = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/models%2Fllama%2Fconfig.json?alt=media", nil)
	check("anonymous get", resp, body, 401, "Anonymous caller does not have storage.objects.get access")
	resp, body = do(t, http.DefaultClient, http.MethodGet, list, map[string]string{"Authorization": "Bearer forged"})
	check("forged token", resp, body, 401, "Invalid Credentials")

	client := jwtConfig(t, srv.ServiceAccountJSON(), readOnlyScope).Client(context.Background())
	resp, body = do(t, client, http.MethodGet, srv.URL()+"/storage/v1/b/nobucket/o", nil)
	check("unknown bucket", resp, body, 404, "The specified bucket does not exist.")
	resp, body = do(t, client, http.MethodGet, srv.URL()+"/storage/v1/b/bkt/o/nothing?alt=media", nil)
	check("unknown object", resp, body, 404, "No such object: bkt/nothing")

	// A key the server does not know is refused at the token endpoint.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(other)
	cfg := jwtConfig(t, srv.ServiceAccountJSON(), readOnlyScope)
	cfg.PrivateKey = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	_, err = cfg.TokenSource(context.Background()).Token()
	if code := oauthErrorCode(err); code != "invalid_grant" {
		t.Errorf("untrusted key: %v, want 400 invalid_grant", err)
	}
	// So is a wrong audience or a scope without storage access.
	cfg = jwtConfig(t, srv.ServiceAccountJSON(), readOnlyScope)
	cfg.Audience = "https://oauth2.googleapis.com/token"
	if _, err := cfg.TokenSource(context.Background()).Token(); oauthErrorCode(err) != "invalid_grant" {
		t.Errorf("wrong audience: %v, want invalid_grant", err)
	}
	cfg = jwtConfig(t, srv.ServiceAccountJSON(), "https://www.googleapis.com/auth/userinfo.email")
	if _, err := cfg.TokenSource(context.Background()).Token(); oauthErrorCode(err) != "invalid_scope" {
		t.Errorf("no storage scope: %v, want invalid_scope", err)
	}

	// Public mode needs no token.
	srv.SetPublic(true)
	if resp, _ := do(t, http.DefaultClient, http.MethodGet, list, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("public list: %d", resp.StatusCode)
	}
}

// oauthErrorCode is the "error" of a 400 from the token endpoint, or "".
func oauthErrorCode(err error) string {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response.StatusCode != http.StatusBadRequest {
		return ""
	}
	var body struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(re.Body, &body)
	return body.Error
}

func TestXMLMediaDownload(t *testing.T) {
	srv := newServer(t)
	srv.SetPublic(true)
	// The form cloud.google.com/go/storage reads with STORAGE_EMULATOR_HOST.
	resp, body := do(t, http.DefaultClient, http.MethodGet, "http://"+srv.Host()+"/bkt/models/llama/config.json", nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, config) || resp.Header.Get("X-Goog-Generation") == "" {
		t.Errorf("XML download: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/bkt/missing", nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "<Code>NoSuchKey</Code>") {
		t.Errorf("XML missing: %d %s", resp.StatusCode, body)
	}
}

func TestPutFileCountersAndFaults(t *testing.T) {
	srv := fakegcs.New()
	t.Cleanup(srv.Close)
	srv.SetPublic(true)
	p := filepath.Join(t.TempDir(), "w.bin")
	content := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 300_000)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.PutFile("b", "dir/w.bin", p); err != nil {
		t.Fatal(err)
	}
	media := srv.URL() + "/storage/v1/b/b/o/dir%2Fw.bin?alt=media"
	if got := srv.Stats().TotalRequests(); got != 0 {
		t.Errorf("%d requests before any", got)
	}

	srv.CutAfter(4096)
	resp, err := http.Get(media)
	if err != nil {
		t.Fatal(err)
	}
	partial, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(partial) != 4096 {
		t.Fatalf("cut download: %v after %d bytes", err, len(partial))
	}
	// Resume with a range: only the rest is served.
	resp, rest := do(t, http.DefaultClient, http.MethodGet, media, map[string]string{"Range": "bytes=4096-"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(append(partial, rest...), content) {
		t.Fatalf("resume: %d, %d bytes", resp.StatusCode, len(rest))
	}
	s := srv.Stats()
	if s.ItemBytes["b/dir/w.bin"] != int64(len(content)) || s.Requests[fakegcs.KindMedia] != 2 {
		t.Errorf("after cut and resume: %d bytes in %d requests, want %d in 2", s.ItemBytes["b/dir/w.bin"], s.Requests[fakegcs.KindMedia], len(content))
	}

	srv.Corrupt("b", "dir/w.bin")
	_, body := do(t, http.DefaultClient, http.MethodGet, media, nil)
	_, meta := do(t, http.DefaultClient, http.MethodGet, srv.URL()+"/storage/v1/b/b/o/dir%2Fw.bin", nil)
	var o object
	_ = json.Unmarshal(meta, &o)
	if len(body) != len(content) || md5Base64(body) == o.MD5Hash || o.MD5Hash != md5Base64(content) || o.CRC32C != crc32cBase64(content) {
		t.Errorf("corrupt: %d bytes, md5 %s, listed %s (true %s)", len(body), md5Base64(body), o.MD5Hash, md5Base64(content))
	}
	srv.ResetStats()
	if s := srv.Stats(); s.TotalRequests() != 0 || s.BodyBytes != 0 {
		t.Errorf("after reset: %+v", s)
	}
}
