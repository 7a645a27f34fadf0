package fetch

import (
	"os"
	"path/filepath"
	"strings"
)

// Credentials come from the Secret named by spec.model.credentialsSecretRef, mounted as a
// directory (one file per key), and from the environment variables people already use with
// each source. The Secret wins: it was set for this model.
//
// Keys read (as Secret keys or environment variables):
//   - hf://  HF_TOKEN (or the key "token"); HF_ENDPOINT for a mirror
//   - s3://  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
//     AWS_ENDPOINT_URL (any S3-compatible store)
//   - gs://  a service-account key JSON under the key "service-account.json" (or
//     "credentials.json", "key.json"), or GOOGLE_APPLICATION_CREDENTIALS naming a file;
//     STORAGE_EMULATOR_HOST for a local emulator
//   - oci:// ".dockerconfigjson" (a kubernetes.io/dockerconfigjson Secret) or "config.json"
type Credentials struct {
	// Dir is the mounted Secret; empty for none.
	Dir string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
}

// value returns the first of keys found in the Secret, then in the environment.
func (c Credentials) value(keys ...string) string {
	for _, k := range keys {
		if v, ok := c.file(k); ok {
			return strings.TrimSpace(string(v))
		}
	}
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	for _, k := range keys {
		if v := getenv(k); v != "" {
			return v
		}
	}
	return ""
}

// file returns the content of a key of the mounted Secret.
func (c Credentials) file(key string) ([]byte, bool) {
	if c.Dir == "" || strings.ContainsAny(key, `/\`) {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(c.Dir, key))
	return b, err == nil
}
