package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// s3Source reads every object under s3://bucket/prefix (or the one object the prefix names)
// from AWS S3 or any S3-compatible store (AWS_ENDPOINT_URL: MinIO, Ceph, R2, GCS interop...).
type s3Source struct {
	bucket, prefix string
	creds          Credentials
	client         *s3.Client
}

func newS3Source(rest string, creds Credentials) (*s3Source, error) {
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return nil, errorf(KindInvalid, "uri s3://%s: want s3://<bucket>[/<prefix>]", rest)
	}
	return &s3Source{bucket: bucket, prefix: strings.TrimSuffix(prefix, "/"), creds: creds}, nil
}

func (s *s3Source) String() string { return "s3://" + path.Join(s.bucket, s.prefix) }

const s3Hint = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION) in the Secret named by spec.model.credentialsSecretRef, with s3:GetObject and s3:ListBucket on the bucket"

// connect builds the client: the SDK's default chain (environment, web identity, instance
// role) unless the Secret has keys; path-style addressing for custom endpoints, which
// S3-compatible stores expect.
func (s *s3Source) connect(ctx context.Context, region string) error {
	if region == "" {
		region = s.creds.value("AWS_REGION", "AWS_DEFAULT_REGION")
	}
	if region == "" {
		region = "us-east-1"
	}
	// A buildable client, so that AWS_CA_BUNDLE (a private store's CA) can be added to it.
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		tuneTransport(t)
	})
	opts := []func(*config.LoadOptions) error{config.WithRegion(region), config.WithHTTPClient(httpClient)}
	if id, secret := s.creds.value("AWS_ACCESS_KEY_ID"), s.creds.value("AWS_SECRET_ACCESS_KEY"); id != "" && secret != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(id, secret, s.creds.value("AWS_SESSION_TOKEN"))))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return errorf(KindInvalid, "%s: AWS configuration: %v", s, err)
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		cfg.Credentials = aws.AnonymousCredentials{} // a public bucket needs none
	}
	endpoint := s.creds.value("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
	s.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
		// We verify the whole file against its ETag; the SDK's own check of a full-object
		// checksum cannot apply to a range (some S3-compatible stores send one anyway).
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
			o.UsePathStyle = true
		}
	})
	return nil
}

// List lists the objects. A bucket in another region than the one configured answers with
// a redirect that names its region (x-amz-bucket-region); the listing is then done again
// there, as the AWS CLI does, rather than asking the user to know it.
func (s *s3Source) List(ctx context.Context) ([]File, string, error) {
	if err := s.connect(ctx, ""); err != nil {
		return nil, "", err
	}
	files, err := s.list(ctx)
	if region := bucketRegion(err); region != "" {
		if err := s.connect(ctx, region); err != nil {
			return nil, "", err
		}
		files, err = s.list(ctx)
	}
	if err != nil {
		return nil, "", s.classify(err, s.String())
	}
	return files, "", nil
}

// bucketRegion is the region an S3 error says the bucket is in, if it says one.
func bucketRegion(err error) string {
	var re *awshttp.ResponseError
	if err == nil || !errors.As(err, &re) || re.Response == nil {
		return ""
	}
	return re.Response.Header.Get("X-Amz-Bucket-Region")
}

// list returns the objects under the prefix, or the one object it names; errors unclassified.
func (s *s3Source) list(ctx context.Context) ([]File, error) {
	dir := s.prefix
	if dir != "" {
		dir += "/"
	}
	var files []File
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(dir)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if strings.HasSuffix(key, "/") { // a "folder" placeholder
				continue
			}
			files = append(files, File{Path: strings.TrimPrefix(key, dir), Size: aws.ToInt64(o.Size), Ranged: true,
				Digest: etagDigest(aws.ToString(o.ETag)), ref: key})
		}
	}
	if len(files) == 0 && s.prefix != "" {
		// s3://bucket/model.gguf names one object.
		head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.prefix)})
		if err != nil {
			return nil, err
		}
		files = append(files, File{Path: path.Base(s.prefix), Size: aws.ToInt64(head.ContentLength), Ranged: true,
			Digest: trustedETag(head), ref: s.prefix})
	}
	return files, nil
}

// etagDigest is the MD5 an ETag is for objects uploaded in one part ("<32 hex>"); a
// multipart ETag ("<hex>-<parts>") is not a checksum of the bytes.
func etagDigest(etag string) Digest {
	return hexDigest("md5", strings.Trim(etag, `"`))
}

// trustedETag is etagDigest unless the object is encrypted with KMS or a customer key,
// whose ETags are not MD5s of the content.
func trustedETag(h *s3.HeadObjectOutput) Digest {
	if sse := string(h.ServerSideEncryption); strings.HasPrefix(sse, "aws:kms") || h.SSECustomerAlgorithm != nil {
		return Digest{}
	}
	return etagDigest(aws.ToString(h.ETag))
}

// doubtDigest is asked when a file does not match its MD5 ETag: an ETag from a listing
// may belong to a KMS-encrypted object, which is not a mismatch.
func (s *s3Source) doubtDigest(ctx context.Context, f File) bool {
	head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(f.ref)})
	return err == nil && trustedETag(head).IsZero()
}

func (s *s3Source) Open(ctx context.Context, f File, off, end int64) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(f.ref)}
	switch {
	case end >= 0 && (off > 0 || end < f.Size):
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, end-1))
	case off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		return nil, s.classify(err, "s3://"+s.bucket+"/"+f.ref)
	}
	return out.Body, nil
}

// classify turns SDK errors into Kinds with the S3 error code in the message.
func (s *s3Source) classify(err error, what string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	code := ""
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return &Error{Kind: KindUnauthorized, Msg: fmt.Sprintf("token missing or not allowed for %s (%s); %s", what, nonEmptyOr(code, http.StatusText(status)), s3Hint)}
	case status == http.StatusNotFound || code == "NoSuchBucket" || code == "NoSuchKey" || code == "NotFound":
		return &Error{Kind: KindNotFound, Msg: fmt.Sprintf("revision/file not found: %s (%s)", what, nonEmptyOr(code, "404"))}
	}
	return &Error{Kind: KindUnavailable, Msg: what, Err: err}
}

func nonEmptyOr(s, alt string) string {
	if s != "" {
		return s
	}
	return alt
}
