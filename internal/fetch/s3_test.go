package fetch

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// startS3 runs gofakes3, an S3-compatible server, with a bucket of objects, uploaded with
// the AWS SDK as a user would.
func startS3(t *testing.T, bucket string, objects map[string][]byte) (env map[string]string) {
	return startS3In(t, "", bucket, objects)
}

// startS3In is startS3 with the bucket in region: requests signed for another region get
// the 301 PermanentRedirect with x-amz-bucket-region that AWS S3 answers.
func startS3In(t *testing.T, region, bucket string, objects map[string][]byte) (env map[string]string) {
	t.Helper()
	fake := gofakes3.New(s3mem.New()).Server()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// SigV4: Credential=<key id>/<date>/<region>/s3/aws4_request
		if _, scope, ok := strings.Cut(r.Header.Get("Authorization"), "Credential="); ok && region != "" {
			if parts := strings.Split(scope, "/"); len(parts) > 2 && parts[2] != region {
				w.Header().Set("X-Amz-Bucket-Region", region)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusMovedPermanently)
				_, _ = io.WriteString(w, `<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>`)
				return
			}
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	upload := region
	if upload == "" {
		upload = "eu-west-1"
	}
	env = map[string]string{"AWS_ENDPOINT_URL": ts.URL, "AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": upload}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(upload),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIATEST", "secret", "")))
	if err != nil {
		t.Fatal(err)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint, o.UsePathStyle = aws.String(ts.URL), true })
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	for key, b := range objects {
		if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(b)}); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

func envFrom(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestS3PrefixDownloadsEveryObjectAndChecksETags(t *testing.T) {
	files := map[string][]byte{
		"config.json":                      []byte(`{"architectures":["LlamaForCausalLM"]}`),
		"model-00001-of-00002.safetensors": randomBytes(10, 1<<20+17),
		"model-00002-of-00002.safetensors": randomBytes(11, 600<<10),
		"tokenizer/tokenizer.json":         []byte(`{"version":"1.0"}`),
	}
	objects := map[string][]byte{"other/readme.md": []byte("not this model")}
	for name, b := range files {
		objects["models/llama-tiny/"+name] = b
	}
	env := startS3(t, "weights", objects)

	opts := testOptions(t, "s3://weights/models/llama-tiny")
	opts.Credentials.Getenv = envFrom(env)
	sum := mustRun(t, opts)
	assertFiles(t, opts.Dest, files)
	if sum.Verified != len(files) {
		t.Errorf("%d of %d files verified against their ETag (MD5)", sum.Verified, len(files))
	}
	if again := mustRun(t, opts); !again.NoOp {
		t.Errorf("second run was not a no-op")
	}

	// s3://bucket/key names one object.
	one := testOptions(t, "s3://weights/models/llama-tiny/config.json")
	one.Credentials.Getenv = envFrom(env)
	mustRun(t, one)
	assertFiles(t, one.Dest, map[string][]byte{"config.json": files["config.json"]})
}

func TestS3MissingBucketOrPrefixIsNotFound(t *testing.T) {
	env := startS3(t, "weights", map[string][]byte{"a/b.bin": []byte("x")})
	for _, uri := range []string{"s3://no-such-bucket/models", "s3://weights/no/such/prefix"} {
		opts := testOptions(t, uri)
		opts.Credentials.Getenv = envFrom(env)
		_, err := Run(context.Background(), opts)
		wantKind(t, err, KindNotFound, "not found")
	}
}

// A bucket in another region than AWS_REGION (or the us-east-1 default) is found where S3's
// redirect says it is.
func TestS3BucketInAnotherRegion(t *testing.T) {
	files := map[string][]byte{"config.json": []byte(`{}`), "model.safetensors": randomBytes(14, 300<<10)}
	objects := map[string][]byte{}
	for name, b := range files {
		objects["m/"+name] = b
	}
	env := startS3In(t, "ap-southeast-2", "weights", objects)
	delete(env, "AWS_REGION")
	opts := testOptions(t, "s3://weights/m")
	opts.Credentials.Getenv = envFrom(env)
	mustRun(t, opts)
	assertFiles(t, opts.Dest, files)
}
