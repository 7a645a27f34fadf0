// Package fakegcs is a test double of Google Cloud Storage, speaking the JSON
// API (and the XML API's media download) that GCS clients use, with the OAuth2
// service-account flow in front of it.
//
// It implements the read side a downloader needs:
//
//   - POST /token: the OAuth2 JWT-bearer grant that golang.org/x/oauth2/jwt
//     (and so golang.org/x/oauth2/google for service-account keys) performs,
//     for keys from ServiceAccountJSON;
//   - GET /storage/v1/b/{bucket}: bucket metadata;
//   - GET /storage/v1/b/{bucket}/o?prefix=&delimiter=&pageToken=&maxResults=:
//     object listing, paginated;
//   - GET /storage/v1/b/{bucket}/o/{object}: object metadata, or its content
//     with alt=media; also GET /download/storage/v1/b/{bucket}/o/{object} and
//     the XML API's GET /{bucket}/{object} (used by clients given
//     STORAGE_EMULATOR_HOST).
//
// Error bodies, the 401 for anonymous or invalid credentials and the 404s for
// missing buckets and objects follow GCS. Object versioning beyond a single
// generation, preconditions, uploads and ACLs are not implemented.
//
// Content can be held in memory or served from a file on disk; files are
// served with http.ServeContent from an *os.File, so Range requests work and
// large bodies go through sendfile. The server counts requests and bytes
// (Stats) and can inject faults: corrupt content (Corrupt), throttle bodies
// (Throttle) and drop connections mid-body (CutAfter).
package fakegcs
