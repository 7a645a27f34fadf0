// Package fakehub is a test double of the Hugging Face Hub, speaking the HTTP
// protocol that huggingface_hub and other Hub clients use against HF_ENDPOINT.
//
// It implements the subset a model downloader needs, with the real Hub's
// status codes, error headers and redirects:
//
//   - GET /api/models/{org}/{name}[/revision/{rev}]: model info (id, sha,
//     siblings; ?blobs=true adds sizes and LFS metadata);
//   - GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=true: the
//     file tree, paginated with a cursor and a Link rel="next" header;
//   - GET and HEAD /{org}/{name}/resolve/{rev}/{path}: file contents for
//     regular files, a 302 to a signed CDN URL for LFS files;
//   - GET /cdn/{sha256}?...&sig=...: the CDN, which needs no Authorization but
//     a signature issued by the resolve redirect.
//
// Authentication (bearer tokens), private and gated repositories, and the
// X-Error-Code values RepoNotFound, GatedRepo, RevisionNotFound and
// EntryNotFound follow the real Hub. Repositories are model repositories of one
// revision (a branch name and a commit sha, both accepted), with ids of the
// form "org/name". Datasets, spaces, refs/pr revisions, uploads and Xet
// storage are not implemented.
//
// Content can be held in memory or served from a directory on disk; files on
// disk are served with http.ServeContent from an *os.File, so Range requests
// work and large bodies go through sendfile. The Hub counts requests and bytes
// (Stats) and can inject faults: corrupt LFS content (Corrupt), throttle bodies
// (Throttle) and drop connections mid-body (CutAfter).
package fakehub
