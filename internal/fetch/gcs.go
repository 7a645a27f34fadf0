package fetch

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"
)

const (
	gcsEndpoint = "https://storage.googleapis.com"
	gcsScope    = "https://www.googleapis.com/auth/devstorage.read_only"
	// gceTokenURL is the metadata server's token for the pod's Workload Identity.
	gceTokenURL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
)

// gcsSource reads every object under gs://bucket/prefix (or the one object it names)
// through the Cloud Storage JSON API. Credentials: a service-account key from the Secret or
// GOOGLE_APPLICATION_CREDENTIALS, else the metadata server (Workload Identity), else none
// (public buckets). STORAGE_EMULATOR_HOST points it at an emulator.
type gcsSource struct {
	bucket, prefix string
	endpoint       string
	tokens         oauth2.TokenSource // nil: anonymous
	client         *http.Client
}

const gcsHint = "put a service-account key with storage.objects.get and storage.objects.list in the Secret named by spec.model.credentialsSecretRef (key service-account.json), or grant the pod's Workload Identity access"

func newGCSSource(rest string, creds Credentials) (*gcsSource, error) {
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return nil, errorf(KindInvalid, "uri gs://%s: want gs://<bucket>[/<prefix>]", rest)
	}
	s := &gcsSource{bucket: bucket, prefix: strings.TrimSuffix(prefix, "/"), endpoint: gcsEndpoint, client: newHTTPClient()}
	emulator := creds.value("STORAGE_EMULATOR_HOST")
	if emulator != "" {
		if !strings.Contains(emulator, "://") {
			emulator = "http://" + emulator
		}
		s.endpoint = strings.TrimSuffix(emulator, "/")
	}
	key, err := serviceAccountKey(creds)
	if err != nil {
		return nil, err
	}
	switch {
	case key != nil:
		ctx := context.WithValue(context.Background(), oauth2.HTTPClient, newHTTPClient())
		s.tokens = oauth2.ReuseTokenSource(nil, key.TokenSource(ctx))
	case emulator == "" && onGCE():
		s.tokens = oauth2.ReuseTokenSource(nil, metadataTokens{client: &http.Client{Timeout: 10 * time.Second}})
	}
	return s, nil
}

// serviceAccountKey reads a service-account key JSON, from the Secret or the file
// GOOGLE_APPLICATION_CREDENTIALS names.
func serviceAccountKey(creds Credentials) (*jwt.Config, error) {
	var b []byte
	for _, k := range []string{"service-account.json", "credentials.json", "key.json"} {
		if v, ok := creds.file(k); ok {
			b = v
			break
		}
	}
	if b == nil {
		if p := creds.value("GOOGLE_APPLICATION_CREDENTIALS"); p != "" {
			v, err := os.ReadFile(p)
			if err != nil {
				return nil, errorf(KindInvalid, "GOOGLE_APPLICATION_CREDENTIALS: %v", err)
			}
			b = v
		}
	}
	if b == nil {
		return nil, nil
	}
	var k struct {
		Type         string `json:"type"`
		ClientEmail  string `json:"client_email"`
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(b, &k); err != nil || k.Type != "service_account" || k.ClientEmail == "" || k.PrivateKey == "" {
		return nil, errorf(KindInvalid, "the GCS credentials are not a service-account key JSON (type service_account with client_email and private_key)")
	}
	if k.TokenURI == "" {
		k.TokenURI = "https://oauth2.googleapis.com/token"
	}
	return &jwt.Config{Email: k.ClientEmail, PrivateKey: []byte(k.PrivateKey), PrivateKeyID: k.PrivateKeyID,
		Scopes: []string{gcsScope}, TokenURL: k.TokenURI}, nil
}

// onGCE says whether a metadata server answers, quickly: off Google Cloud it does not exist.
func onGCE() bool {
	if os.Getenv("GCE_METADATA_HOST") != "" {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://metadata.google.internal/computeMetadata/v1/", nil)
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.Header.Get("Metadata-Flavor") == "Google"
}

type metadataTokens struct{ client *http.Client }

func (m metadataTokens) Token() (*oauth2.Token, error) {
	req, _ := http.NewRequest(http.MethodGet, gceTokenURL, nil)
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metadata server: HTTP %d", resp.StatusCode)
	}
	var t struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: time.Now().Add(time.Duration(t.ExpiresIn) * time.Second)}, nil
}

func (s *gcsSource) String() string { return "gs://" + path.Join(s.bucket, s.prefix) }

func (s *gcsSource) header() (http.Header, error) {
	h := http.Header{"User-Agent": {"helixflow-runtime-fetch"}}
	if s.tokens != nil {
		t, err := s.tokens.Token()
		if err != nil {
			return nil, &Error{Kind: KindUnauthorized, Msg: "token missing or not allowed for " + s.String() + ": getting an access token; " + gcsHint, Err: err}
		}
		h.Set("Authorization", "Bearer "+t.AccessToken)
	}
	return h, nil
}

type gcsObject struct {
	Name    string `json:"name"`
	Size    string `json:"size"`
	MD5Hash string `json:"md5Hash"`
	CRC32C  string `json:"crc32c"`
}

func (s *gcsSource) get(ctx context.Context, u string, v any) error {
	h, err := s.header()
	if err != nil {
		return err
	}
	_, err = getJSON(ctx, s.client, u, h, v, s.String(), gcsHint)
	return err
}

func (s *gcsSource) List(ctx context.Context) ([]File, string, error) {
	dir := s.prefix
	if dir != "" {
		dir += "/"
	}
	base := s.endpoint + "/storage/v1/b/" + url.PathEscape(s.bucket) + "/o"
	var files []File
	for token, pages := "", 0; ; pages++ {
		q := url.Values{"prefix": {dir}}
		if token != "" {
			q.Set("pageToken", token)
		}
		var page struct {
			Items         []gcsObject `json:"items"`
			NextPageToken string      `json:"nextPageToken"`
		}
		if err := s.get(ctx, base+"?"+q.Encode(), &page); err != nil {
			return nil, "", err
		}
		for _, o := range page.Items {
			if !strings.HasSuffix(o.Name, "/") {
				files = append(files, s.file(o, strings.TrimPrefix(o.Name, dir)))
			}
		}
		if token = page.NextPageToken; token == "" || pages == 10000 {
			break
		}
	}
	if len(files) == 0 && s.prefix != "" {
		var o gcsObject
		if err := s.get(ctx, base+"/"+url.PathEscape(s.prefix), &o); err != nil {
			return nil, "", err
		}
		files = append(files, s.file(o, path.Base(s.prefix)))
	}
	return files, "", nil
}

// file prefers the MD5 (composite objects have none) and falls back to CRC32C.
func (s *gcsSource) file(o gcsObject, rel string) File {
	var size int64 = -1
	if _, err := fmt.Sscan(o.Size, &size); err != nil {
		size = -1
	}
	f := File{Path: rel, Size: size, Ranged: size >= 0,
		ref: s.endpoint + "/storage/v1/b/" + url.PathEscape(s.bucket) + "/o/" + url.PathEscape(o.Name) + "?alt=media"}
	if b, err := base64.StdEncoding.DecodeString(o.MD5Hash); err == nil && len(b) == 16 {
		f.Digest = Digest{Algo: "md5", Hex: hex.EncodeToString(b)}
	} else if b, err := base64.StdEncoding.DecodeString(o.CRC32C); err == nil && len(b) == 4 {
		f.Digest = Digest{Algo: "crc32c", Hex: hex.EncodeToString(b)}
	}
	return f
}

func (s *gcsSource) Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error) {
	h, err := s.header()
	if err != nil {
		return nil, err
	}
	return rangeGet(ctx, s.client, f.ref, h, off, end, "gs://"+s.bucket+"/"+path.Join(s.prefix, f.Path), gcsHint)
}
