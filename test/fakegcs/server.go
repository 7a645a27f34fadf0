package fakegcs

import (
	"crypto/md5" //nolint:gosec // GCS reports MD5 hashes
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/crc32"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/helixflow/helixflow/test/faultbody"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultPageSize is the most objects a list page holds unless SetPageSize
// says otherwise; GCS's own maximum.
const DefaultPageSize = 1000

// Kind names a kind of request for Stats.
type Kind string

const (
	// KindToken is POST /token.
	KindToken Kind = "token"
	// KindBucket is GET /storage/v1/b/{bucket}.
	KindBucket Kind = "bucket"
	// KindList is GET /storage/v1/b/{bucket}/o.
	KindList Kind = "list"
	// KindMetadata is GET /storage/v1/b/{bucket}/o/{object} without alt=media.
	KindMetadata Kind = "metadata"
	// KindMedia is a content download, by any of the three URL forms.
	KindMedia Kind = "media"
	// KindOther is any other request (answered 404 or 405).
	KindOther Kind = "other"
)

// Stats counts what the double served since it started or since ResetStats; ItemBytes is
// keyed "bucket/name".
type Stats = faultbody.Stats[Kind]

type object struct {
	bucket, name string
	data         []byte
	diskPath     string
	size         int64
	md5          []byte
	crc32c       uint32
	generation   int64
	contentType  string
	created      time.Time
}

// Server is a running fake GCS. Its methods are safe for concurrent use, also
// while it serves requests.
type Server struct {
	srv *httptest.Server

	keyOnce sync.Once
	email   string

	mu         sync.Mutex
	key        *rsa.PrivateKey
	keyID      string
	public     bool
	pageSize   int
	buckets    map[string]map[string]*object
	tokens     map[string]time.Time
	generation int64

	// Faults holds the armed faults and the counters: Throttle, CutAfter, Stats and
	// ResetStats are the server's.
	*faultbody.Faults[Kind]
}

// New starts a server on 127.0.0.1 with no buckets that requires an access
// token from its /token endpoint. Close it when done.
func New() *Server {
	s := &Server{
		email:      "fetcher@fake-project.iam.gserviceaccount.com",
		pageSize:   DefaultPageSize,
		buckets:    map[string]map[string]*object{},
		tokens:     map[string]time.Time{},
		generation: 1700000000000000,
		Faults:     faultbody.NewFaults[Kind](),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	return s
}

// URL is the server's base URL, without a trailing slash. Clients use
// URL()+"/storage/v1/" as the JSON API endpoint.
func (s *Server) URL() string { return s.srv.URL }

// Host is the server's host:port, for STORAGE_EMULATOR_HOST.
func (s *Server) Host() string { return strings.TrimPrefix(s.srv.URL, "http://") }

// TokenURL is the OAuth2 token endpoint named in ServiceAccountJSON.
func (s *Server) TokenURL() string { return s.srv.URL + "/token" }

// Close stops the server and closes its connections.
func (s *Server) Close() { s.srv.Close() }

// SetPublic turns authentication off (true) or on (false, the default). A
// public server ignores Authorization headers, as emulators do.
func (s *Server) SetPublic(public bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.public = public
}

// SetPageSize sets the most objects a list page holds (n >= 1).
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = max(n, 1)
}

// CreateBucket creates an empty bucket; PutObject and PutFile create theirs.
func (s *Server) CreateBucket(bucket string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buckets[bucket] == nil {
		s.buckets[bucket] = map[string]*object{}
	}
}

// PutObject stores content (kept in memory) as bucket/name with a new
// generation.
func (s *Server) PutObject(bucket, name string, content []byte) {
	sum := md5.Sum(content) //nolint:gosec // GCS reports MD5 hashes
	s.put(&object{bucket: bucket, name: name, data: content, size: int64(len(content)),
		md5: sum[:], crc32c: crc32.Checksum(content, crc32c)})
}

// PutFile stores the file at path as bucket/name with a new generation. The
// file is hashed now and read at request time, so it must not change.
func (s *Server) PutFile(bucket, name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	m, c := md5.New(), crc32.New(crc32c) //nolint:gosec // GCS reports MD5 hashes
	n, err := io.CopyBuffer(io.MultiWriter(m, c), f, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("fakegcs: hashing %s: %w", path, err)
	}
	s.put(&object{bucket: bucket, name: name, diskPath: path, size: n, md5: m.Sum(nil), crc32c: c.Sum32()})
	return nil
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

func (s *Server) put(o *object) {
	o.contentType = mime.TypeByExtension(path.Ext(o.name))
	if o.contentType == "" {
		o.contentType = "application/octet-stream"
	}
	o.created = time.Now().UTC().Truncate(time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.generation++
	o.generation = s.generation
	if s.buckets[o.bucket] == nil {
		s.buckets[o.bucket] = map[string]*object{}
	}
	s.buckets[o.bucket][o.name] = o
}

// ServiceAccountJSON is a service-account key file whose key the server
// trusts, with token_uri pointing at the server. The same key is returned on
// every call.
func (s *Server) ServiceAccountJSON() []byte {
	s.keyOnce.Do(func() {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(fmt.Sprintf("fakegcs: generating a key: %v", err))
		}
		id := make([]byte, 20)
		_, _ = rand.Read(id)
		s.mu.Lock()
		s.key, s.keyID = key, hex.EncodeToString(id)
		s.mu.Unlock()
	})
	s.mu.Lock()
	key, keyID := s.key, s.keyID
	s.mu.Unlock()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(fmt.Sprintf("fakegcs: encoding the key: %v", err))
	}
	b, _ := json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  "fake-project",
		"private_key_id":              keyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                s.email,
		"client_id":                   "100000000000000000001",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   s.TokenURL(),
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
		"client_x509_cert_url":        "https://www.googleapis.com/robot/v1/metadata/x509/" + url.PathEscape(s.email),
		"universe_domain":             "googleapis.com",
	}, "", "  ")
	return b
}

// Corrupt serves bucket/name with its middle byte inverted, while metadata
// and x-goog-hash still give the true hashes.
func (s *Server) Corrupt(bucket, name string) { s.CorruptItem(bucket + "/" + name) }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	if p == "/token" {
		s.Count(KindToken, r)
		if r.Method != http.MethodPost {
			apiError(w, http.StatusMethodNotAllowed, "Method Not Allowed", "methodNotAllowed")
			return
		}
		s.token(w, r)
		return
	}
	kind, bucket, name, xml := route(p, r.URL.Query().Get("alt") == "media")
	s.Count(kind, r)
	if kind == KindOther {
		apiError(w, http.StatusNotFound, "Not Found", "notFound")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		apiError(w, http.StatusMethodNotAllowed, "Method Not Allowed", "methodNotAllowed")
		return
	}
	errorf := apiError
	if xml {
		errorf = xmlError
	}
	permission, resource := "storage.objects.get", "object"
	switch kind {
	case KindList:
		permission, resource = "storage.objects.list", "bucket"
	case KindBucket:
		permission, resource = "storage.buckets.get", "bucket"
	}
	if !s.authorized(w, r, permission, resource, errorf) {
		return
	}
	s.mu.Lock()
	objects := s.buckets[bucket]
	var o *object
	if objects != nil {
		o = objects[name]
	}
	s.mu.Unlock()
	if objects == nil {
		errorf(w, http.StatusNotFound, "The specified bucket does not exist.", "notFound")
		return
	}
	if kind == KindBucket {
		writeJSON(w, http.StatusOK, map[string]string{"kind": "storage#bucket", "id": bucket, "name": bucket,
			"location": "US", "storageClass": "STANDARD", "projectNumber": "100000000001"})
		return
	}
	if kind == KindList {
		s.list(w, r, objects)
		return
	}
	if g := r.URL.Query().Get("generation"); o != nil && g != "" && g != strconv.FormatInt(o.generation, 10) {
		o = nil
	}
	if o == nil {
		errorf(w, http.StatusNotFound, "No such object: "+bucket+"/"+name, "notFound")
		return
	}
	if kind == KindMetadata {
		writeJSON(w, http.StatusOK, s.resource(o))
		return
	}
	s.media(w, r, o)
}

// route parses the storage URL forms.
func route(p string, altMedia bool) (kind Kind, bucket, name string, xml bool) {
	unescape := func(s string) (string, bool) {
		u, err := url.PathUnescape(s)
		return u, err == nil && u != ""
	}
	jsonAPI := func(rest string, download bool) (Kind, string, string, bool) {
		b, o, hasObject := strings.Cut(rest, "/")
		bucket, ok := unescape(b)
		if !ok {
			return KindOther, "", "", false
		}
		if !hasObject {
			if download {
				return KindOther, "", "", false
			}
			return KindBucket, bucket, "", false
		}
		if o == "o" && !download {
			return KindList, bucket, "", false
		}
		objPath, isObject := strings.CutPrefix(o, "o/")
		name, ok := unescape(objPath)
		if !isObject || !ok {
			return KindOther, "", "", false
		}
		if download || altMedia {
			return KindMedia, bucket, name, false
		}
		return KindMetadata, bucket, name, false
	}
	if rest, ok := strings.CutPrefix(p, "/storage/v1/b/"); ok {
		return jsonAPI(rest, false)
	}
	if rest, ok := strings.CutPrefix(p, "/download/storage/v1/b/"); ok {
		return jsonAPI(rest, true)
	}
	// XML API: /{bucket}/{object}.
	b, o, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	bucket, bok := unescape(b)
	name, nok := unescape(o)
	if !ok || !bok || !nok {
		return KindOther, "", "", false
	}
	return KindMedia, bucket, name, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type errorDetail struct {
	Message string `json:"message"`
	Domain  string `json:"domain"`
	Reason  string `json:"reason"`
}

// apiError answers like the JSON API.
func apiError(w http.ResponseWriter, status int, msg, reason string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://accounts.google.com/"`)
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code":    status,
		"message": msg,
		"errors":  []errorDetail{{Message: msg, Domain: "global", Reason: reason}},
	}})
}

// xmlError answers like the XML API.
func xmlError(w http.ResponseWriter, status int, msg, _ string) {
	code := map[int]string{401: "AccessDenied", 404: "NoSuchKey"}[status]
	if msg == "The specified bucket does not exist." {
		code = "NoSuchBucket"
	}
	if code == "" {
		code = http.StatusText(status)
	}
	w.Header().Set("Content-Type", "application/xml; charset=UTF-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message></Error>", code, msg)
}

func (s *Server) authorized(w http.ResponseWriter, r *http.Request, permission, resource string,
	errorf func(http.ResponseWriter, int, string, string)) bool {
	auth := r.Header.Get("Authorization")
	token, isBearer := strings.CutPrefix(auth, "Bearer ")
	s.mu.Lock()
	public := s.public
	expiry, known := s.tokens[token]
	s.mu.Unlock()
	switch {
	case public:
		return true
	case auth == "":
		errorf(w, http.StatusUnauthorized, "Anonymous caller does not have "+permission+
			" access to the Google Cloud Storage "+resource+". Permission '"+permission+
			"' denied on resource (or it may not exist).", "required")
		return false
	case !isBearer || !known || time.Now().After(expiry):
		errorf(w, http.StatusUnauthorized, "Invalid Credentials", "authError")
		return false
	}
	return true
}

type tokenClaims struct {
	Scope string `json:"scope"`
	jwt.RegisteredClaims
}

// token implements the JWT-bearer grant (RFC 7523) as Google's token endpoint
// does for service-account keys.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	oauthError := func(code, desc string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
	}
	if err := r.ParseForm(); err != nil {
		oauthError("invalid_request", err.Error())
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthError("unsupported_grant_type", "Invalid grant_type: "+gt)
		return
	}
	s.mu.Lock()
	key := s.key
	s.mu.Unlock()
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(r.PostForm.Get("assertion"), &claims, func(*jwt.Token) (any, error) {
		if key == nil || claims.Issuer != s.email {
			return nil, fmt.Errorf("unknown issuer %q", claims.Issuer)
		}
		return &key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(s.TokenURL()), jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(), jwt.WithLeeway(time.Minute))
	if err != nil {
		oauthError("invalid_grant", "Invalid JWT: "+err.Error())
		return
	}
	if !hasStorageScope(claims.Scope) {
		oauthError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
		return
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	token := "ya29.fake-" + base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.tokens[token] = time.Now().Add(time.Hour)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": token, "token_type": "Bearer", "expires_in": 3600})
}

func hasStorageScope(scope string) bool {
	for _, sc := range strings.Fields(scope) {
		if strings.HasPrefix(sc, "https://www.googleapis.com/auth/devstorage.") || sc == "https://www.googleapis.com/auth/cloud-platform" ||
			sc == "https://www.googleapis.com/auth/cloud-platform.read-only" {
			return true
		}
	}
	return false
}

type objectResource struct {
	Kind           string `json:"kind"`
	ID             string `json:"id"`
	SelfLink       string `json:"selfLink"`
	MediaLink      string `json:"mediaLink"`
	Name           string `json:"name"`
	Bucket         string `json:"bucket"`
	Generation     string `json:"generation"`
	Metageneration string `json:"metageneration"`
	ContentType    string `json:"contentType"`
	StorageClass   string `json:"storageClass"`
	Size           string `json:"size"`
	MD5Hash        string `json:"md5Hash"`
	CRC32C         string `json:"crc32c"`
	ETag           string `json:"etag"`
	TimeCreated    string `json:"timeCreated"`
	Updated        string `json:"updated"`
}

func (s *Server) resource(o *object) objectResource {
	gen := strconv.FormatInt(o.generation, 10)
	esc := url.PathEscape(o.name)
	return objectResource{
		Kind:           "storage#object",
		ID:             o.bucket + "/" + o.name + "/" + gen,
		SelfLink:       s.URL() + "/storage/v1/b/" + url.PathEscape(o.bucket) + "/o/" + esc,
		MediaLink:      s.URL() + "/download/storage/v1/b/" + url.PathEscape(o.bucket) + "/o/" + esc + "?generation=" + gen + "&alt=media",
		Name:           o.name,
		Bucket:         o.bucket,
		Generation:     gen,
		Metageneration: "1",
		ContentType:    o.contentType,
		StorageClass:   "STANDARD",
		Size:           strconv.FormatInt(o.size, 10),
		MD5Hash:        base64.StdEncoding.EncodeToString(o.md5),
		CRC32C:         crc32cBase64(o.crc32c),
		ETag:           etag(o),
		TimeCreated:    o.created.Format(time.RFC3339Nano),
		Updated:        o.created.Format(time.RFC3339Nano),
	}
}

func crc32cBase64(c uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c)
	return base64.StdEncoding.EncodeToString(b[:])
}

func etag(o *object) string {
	b := binary.AppendUvarint(nil, uint64(o.generation))
	return base64.StdEncoding.EncodeToString(append(b, 0x10, 0x01))
}

type listResponse struct {
	Kind          string           `json:"kind"`
	NextPageToken string           `json:"nextPageToken,omitempty"`
	Prefixes      []string         `json:"prefixes,omitempty"`
	Items         []objectResource `json:"items,omitempty"`
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, objects map[string]*object) {
	q := r.URL.Query()
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	s.mu.Lock()
	pageSize := s.pageSize
	var names []string
	byName := map[string]*object{}
	for name, o := range objects {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
			byName[name] = o
		}
	}
	s.mu.Unlock()
	if m := q.Get("maxResults"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 1 {
			apiError(w, http.StatusBadRequest, "Invalid value for maxResults: "+m, "invalid")
			return
		}
		pageSize = min(pageSize, n)
	}
	after := ""
	if t := q.Get("pageToken"); t != "" {
		raw, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil {
			apiError(w, http.StatusBadRequest, "Invalid pageToken", "invalid")
			return
		}
		after = string(raw)
	}
	// Results are object names and, with a delimiter, the prefixes they
	// collapse into, in name order.
	type result struct {
		key    string
		object *object
	}
	sort.Strings(names)
	var results []result
	seen := map[string]bool{}
	for _, name := range names {
		if delim != "" {
			if i := strings.Index(name[len(prefix):], delim); i >= 0 {
				p := name[:len(prefix)+i+len(delim)]
				if !seen[p] {
					seen[p] = true
					results = append(results, result{key: p})
				}
				continue
			}
		}
		results = append(results, result{key: name, object: byName[name]})
	}
	resp := listResponse{Kind: "storage#objects"}
	n := 0
	for i, res := range results {
		if res.key <= after {
			continue
		}
		if n == pageSize {
			resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(results[i-1].key))
			break
		}
		n++
		if res.object != nil {
			resp.Items = append(resp.Items, s.resource(res.object))
		} else {
			resp.Prefixes = append(resp.Prefixes, res.key)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// media writes o's content with Range support, counting and applying the
// armed faults.
func (s *Server) media(w http.ResponseWriter, r *http.Request, o *object) {
	key := o.bucket + "/" + o.name
	rs, done, err := faultbody.Open(o.data, o.diskPath)
	if err != nil {
		apiError(w, http.StatusInternalServerError, err.Error(), "backendError")
		return
	}
	defer done()
	h := w.Header()
	h.Set("Content-Type", o.contentType)
	h.Set("ETag", `"`+hex.EncodeToString(o.md5)+`"`)
	h.Set("X-Goog-Generation", strconv.FormatInt(o.generation, 10))
	h.Set("X-Goog-Metageneration", "1")
	h.Set("X-Goog-Stored-Content-Length", strconv.FormatInt(o.size, 10))
	h.Set("X-Goog-Stored-Content-Encoding", "identity")
	h.Set("X-Goog-Storage-Class", "STANDARD")
	h.Add("X-Goog-Hash", "crc32c="+crc32cBase64(o.crc32c))
	h.Add("X-Goog-Hash", "md5="+base64.StdEncoding.EncodeToString(o.md5))
	s.Serve(w, r, key, rs, o.size, o.created)
}
