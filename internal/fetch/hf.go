package fetch

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

const defaultHFEndpoint = "https://huggingface.co"

var hfRepoRE = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$`)

// hfSource reads a model repository of the Hugging Face Hub (or a mirror at HF_ENDPOINT)
// through the Hub's HTTP API, as huggingface_hub does: the revision is resolved to a
// commit, the tree of that commit is listed (sizes, and sha256 for LFS files), and files
// are read from /resolve/<commit>/<path>, which redirects LFS files to a CDN.
type hfSource struct {
	repo, revision, endpoint, token string
	client                          *http.Client
}

func newHFSource(repo, revision string, creds Credentials) (*hfSource, error) {
	repo = strings.TrimSuffix(repo, "/")
	if !hfRepoRE.MatchString(repo) {
		return nil, errorf(KindInvalid, "uri hf://%s: want hf://<org>/<repo>", repo)
	}
	if revision == "" {
		revision = "main"
	}
	endpoint := strings.TrimSuffix(creds.value("HF_ENDPOINT"), "/")
	if endpoint == "" {
		endpoint = defaultHFEndpoint
	}
	s := &hfSource{repo: repo, revision: revision, endpoint: endpoint, token: creds.value("HF_TOKEN", "token", "HUGGING_FACE_HUB_TOKEN"), client: newHTTPClient()}
	// The token goes to the Hub only. LFS files redirect to a CDN with a signed URL; the
	// token must not follow (a relative redirect to another /resolve/ path, for a renamed
	// repository, keeps it).
	s.client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return fmt.Errorf("stopped after %d redirects", len(via))
		}
		if req.URL.Host != via[0].URL.Host || !strings.Contains(req.URL.Path, "/resolve/") {
			req.Header.Del("Authorization")
		}
		return nil
	}
	return s, nil
}

func (s *hfSource) String() string {
	name := "hf://" + s.repo + "@" + s.revision
	if s.endpoint != defaultHFEndpoint {
		name += " (" + s.endpoint + ")"
	}
	return name
}

func (s *hfSource) header() http.Header {
	h := http.Header{"User-Agent": {"helixflow-runtime-fetch"}}
	if s.token != "" {
		h.Set("Authorization", "Bearer "+s.token)
	}
	return h
}

func (s *hfSource) authHint() string {
	if s.token == "" {
		return "the repository is private or gated: set HF_TOKEN in the Secret named by spec.model.credentialsSecretRef"
	}
	return "check that the token in HF_TOKEN has read access and that the repository's access conditions were accepted"
}

// getJSON GETs an API URL into v and returns the Link header's next page, if any.
func (s *hfSource) getJSON(ctx context.Context, u string, v any) (next string, err error) {
	h, err := getJSON(ctx, s.client, u, s.header(), v, "hf://"+s.repo+" revision "+s.revision, s.authHint())
	if err != nil {
		return "", err
	}
	return nextLink(h.Get("Link")), nil
}

type hfTreeEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	OID  string `json:"oid"`
	LFS  *struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	} `json:"lfs"`
}

func (s *hfSource) List(ctx context.Context) ([]File, string, error) {
	var rev struct {
		SHA string `json:"sha"`
	}
	base := s.endpoint + "/api/models/" + s.repo
	if _, err := s.getJSON(ctx, base+"/revision/"+url.PathEscape(s.revision), &rev); err != nil {
		return nil, "", err
	}
	commit := rev.SHA
	if commit == "" {
		commit = s.revision
	}
	var files []File
	next := base + "/tree/" + url.PathEscape(commit) + "?recursive=true"
	for pages := 0; next != ""; pages++ {
		if pages == 10000 {
			return nil, "", errorf(KindInvalid, "%s: the file listing does not end", s)
		}
		var entries []hfTreeEntry
		var err error
		if next, err = s.getJSON(ctx, next, &entries); err != nil {
			return nil, "", err
		}
		for _, e := range entries {
			if e.Type != "file" || strings.HasPrefix(e.Path, ".git") {
				continue
			}
			f := File{Path: e.Path, Size: e.Size, Ranged: true,
				ref: s.endpoint + "/" + s.repo + "/resolve/" + url.PathEscape(commit) + "/" + escapePath(e.Path)}
			if e.LFS != nil {
				f.Size, f.Digest = e.LFS.Size, hexDigest("sha256", e.LFS.OID)
			} else {
				f.Digest = hexDigest("gitsha1", e.OID)
			}
			files = append(files, f)
		}
	}
	return files, commit, nil
}

func (s *hfSource) Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error) {
	return rangeGet(ctx, s.client, f.ref, s.header(), off, end, fmt.Sprintf("%s file %s", s, f.Path), s.authHint())
}

// escapePath escapes each segment of a slash-separated path.
func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, part := range parts {
		parts[i] = url.PathEscape(part)
	}
	return strings.Join(parts, "/")
}

// nextLink returns the rel="next" URL of an RFC 8288 Link header, as the Hub paginates.
func nextLink(h string) string {
	for _, l := range strings.Split(h, ",") {
		u, params, ok := strings.Cut(strings.TrimSpace(l), ";")
		if ok && strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			return strings.Trim(strings.TrimSpace(u), "<>")
		}
	}
	return ""
}
