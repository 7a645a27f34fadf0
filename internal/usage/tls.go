package usage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const (
	// CASecretName is the Secret, in the manager's namespace, that holds the CA the
	// aggregator's serving certificates are signed with (a kubernetes.io/tls Secret: tls.crt
	// and tls.key, and the CA it replaced in previous.crt and previous.key). Every replica
	// creates it when it is missing; its private keys never leave that namespace.
	CASecretName = "helixflow-usage-ca"
	// CARotateAnnotation on the CA Secret asks for a new CA: the next replica to check makes
	// one, keeps the current one as the previous, and removes the annotation.
	CARotateAnnotation = "serving.helixflow.io/rotate"
	previousCertKey    = "previous.crt"
	previousKeyKey     = "previous.key"
	// CAConfigMapKey is the key, in the ConfigMap the manager publishes in every namespace
	// with a model (auth.JWKSConfigMapName), that holds the CA's certificate: what runtimes
	// verify the aggregator with.
	CAConfigMapKey = "usage-ca.crt"

	// caValidity is the CA's lifetime; it is replaced, as by CARotateAnnotation, when less
	// than a serving certificate's lifetime is left.
	caValidity = 10 * 365 * 24 * time.Hour
	// servingValidity is a serving certificate's lifetime; a replica issues itself a new one
	// after two thirds of it, so a restart is never needed.
	servingValidity = 30 * 24 * time.Hour
	// caCheckInterval is how often a replica reads the CA Secret again, to notice a replaced
	// (or deleted) CA, and renews its serving certificate when due.
	caCheckInterval = time.Minute
	// clockSkew backdates certificates, for peers whose clocks run a little behind.
	clockSkew = 5 * time.Minute
	// CAActivationDelay is how long after a CA replaces another (rotation) the replicas still
	// issue their serving certificates from the previous one: long enough for the manager to
	// publish both and the kubelet to update the runtimes' CA files, so no connection fails
	// while the CA changes.
	CAActivationDelay = 10 * time.Minute
	// CAOverlap is how long after a rotation the previous CA stays published beside the new
	// one: well past the activation delay and the replicas' next check; then the previous CA
	// is trusted no more.
	CAOverlap = 30 * time.Minute
)

// tlsRecordHandshake is the first byte of every TLS connection (a handshake record).
const tlsRecordHandshake = 0x16

// caKeys is the aggregator's CA: its certificate (also in PEM, as published) and key.
type caKeys struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// newCA makes a self-signed ECDSA P-256 CA, valid from now for caValidity.
func newCA(now time.Time) (caKeys, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"HelixFlow"}, CommonName: "helixflow usage aggregator CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	key, cert, err := signNew(tmpl, nil)
	if err != nil {
		return caKeys{}, err
	}
	return caKeys{cert: cert, certPEM: certPEM(cert), key: key}, nil
}

// signNew makes a P-256 key and a certificate of tmpl for it, with a random serial, signed
// by ca (by the new key itself when ca is nil: self-signed).
func signNew(tmpl *x509.Certificate, ca *caKeys) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return key, cert, err
}

func certPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// secretData is the CA as Secret data under the keys certKey and keyKey.
func (ca caKeys) secretData(certKey, keyKey string) (map[string][]byte, error) {
	der, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		certKey: ca.certPEM,
		keyKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
	}, nil
}

// decodeCA reads a CA written by secretData, under the keys certKey and keyKey.
func decodeCA(data map[string][]byte, certKey, keyKey string) (caKeys, error) {
	pair, err := tls.X509KeyPair(data[certKey], data[keyKey])
	if err != nil {
		return caKeys{}, fmt.Errorf("usage CA Secret %s: %w", CASecretName, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !pair.Leaf.IsCA {
		return caKeys{}, fmt.Errorf("usage CA Secret %s: not an ECDSA CA", CASecretName)
	}
	return caKeys{cert: pair.Leaf, certPEM: certPEM(pair.Leaf), key: key}, nil
}

// made is when the CA was made (its NotBefore is backdated by clockSkew).
func (ca caKeys) made() time.Time { return ca.cert.NotBefore.Add(clockSkew) }

// caPair is the CA Secret: the current CA and, after a rotation, the one it replaced.
type caPair struct {
	current  caKeys
	previous *caKeys
}

// decodeCAPair reads the CA Secret's data; a previous CA that cannot be read is left out.
func decodeCAPair(data map[string][]byte) (caPair, error) {
	cur, err := decodeCA(data, corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	if err != nil {
		return caPair{}, err
	}
	p := caPair{current: cur}
	if prev, err := decodeCA(data, previousCertKey, previousKeyKey); err == nil {
		p.previous = &prev
	}
	return p, nil
}

func (p caPair) secretData() (map[string][]byte, error) {
	data, err := p.current.secretData(corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	if err != nil || p.previous == nil {
		return data, err
	}
	prev, err := p.previous.secretData(previousCertKey, previousKeyKey)
	maps.Copy(data, prev)
	return data, err
}

// overlapping is whether the previous CA is still published beside the current one at now.
func (p caPair) overlapping(now time.Time) bool {
	return p.previous != nil && now.Before(p.current.made().Add(CAOverlap))
}

// issuer is the CA serving certificates come from at now: the previous one for
// CAActivationDelay after a rotation, then the current one.
func (p caPair) issuer(now time.Time) caKeys {
	if p.previous != nil && now.Before(p.current.made().Add(CAActivationDelay)) {
		return *p.previous
	}
	return p.current
}

// bundle is what the runtimes trust at now: the current CA's certificate (PEM) and, while
// overlapping, the previous one's.
func (p caPair) bundle(now time.Time) []byte {
	b := slices.Clone(p.current.certPEM)
	if p.overlapping(now) {
		b = append(b, p.previous.certPEM...)
	}
	return b
}

// PublishedCA is what to publish for the runtimes from the CA Secret's data at now: the
// current CA and, for CAOverlap after a rotation, the previous one, so runtimes trust the
// serving certificates of both while the replicas change over. next is when that changes
// by itself (zero: never).
func PublishedCA(data map[string][]byte, now time.Time) (bundle []byte, next time.Time, err error) {
	p, err := decodeCAPair(data)
	if err != nil {
		return nil, time.Time{}, err
	}
	if p.overlapping(now) {
		next = p.current.made().Add(CAOverlap)
	}
	return p.bundle(now), next, nil
}

// Ensure makes the CA, or a new one when the Secret asks for it (CARotateAnnotation), as a
// replica does at its next check, and returns the bundle to publish.
func (s SecretCA) Ensure(ctx context.Context) ([]byte, error) {
	now := time.Now()
	p, err := s.load(ctx, now)
	return p.bundle(now), err
}

// issue signs a serving certificate for hosts (DNS names or IP addresses) with a new key.
func (ca caKeys) issue(hosts []string, now time.Time) (*tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"HelixFlow"}, CommonName: "helixflow usage aggregator"},
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.Add(servingValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	key, leaf, err := signNew(tmpl, &ca)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// SecretCA keeps the CA in the Secret CASecretName of Namespace. It creates the Secret when it
// is missing, and makes a new CA when the Secret asks for one (CARotateAnnotation), when the
// current one has less than a serving certificate's lifetime left, or when it cannot be
// decoded; a usable current CA is kept as the previous one, for the overlap. A Secret without
// the managed-by label (put back by hand) gets it. Every replica may do so at once: a creation
// or an update (guarded by the resourceVersion read) wins, the others read the winner's.
type SecretCA struct {
	// Client writes the Secret; Reader reads it from the API server (uncached, so a
	// replica sees the Secret another one just wrote).
	Client    client.Client
	Reader    client.Reader
	Namespace string
}

func (s SecretCA) load(ctx context.Context, now time.Time) (caPair, error) {
	for range 3 {
		sec := &corev1.Secret{}
		err := s.Reader.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: CASecretName}, sec)
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return caPair{}, fmt.Errorf("reading usage CA Secret %s: %w", CASecretName, err)
		}
		old, decodeErr := decodeCAPair(sec.Data)
		_, rotate := sec.Annotations[CARotateAnnotation]
		if exists && decodeErr == nil && !rotate && old.current.cert.NotAfter.Sub(now) > servingValidity {
			if sec.Labels[servingv1alpha1.LabelManagedBy] == servingv1alpha1.ManagedByValue {
				return old, nil
			}
			// Restored by hand without the label: the manager's cache holds only labelled
			// Secrets, so the JWKS publisher would not see this CA and runtimes would not trust it.
			err = s.Client.Update(ctx, labelled(sec))
			if err == nil {
				return old, nil
			}
			if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				return caPair{}, fmt.Errorf("labelling usage CA Secret %s: %w", CASecretName, err)
			}
			continue // changed or deleted since it was read: read it again
		}
		ca, err := newCA(now)
		if err != nil {
			return caPair{}, err
		}
		next := caPair{current: ca}
		if exists && decodeErr == nil && now.Before(old.current.cert.NotAfter) {
			next.previous = &old.current
		}
		if sec.Data, err = next.secretData(); err != nil {
			return caPair{}, err
		}
		sec.Namespace, sec.Name, sec.Type = s.Namespace, CASecretName, corev1.SecretTypeTLS
		delete(sec.Annotations, CARotateAnnotation)
		if exists {
			err = s.Client.Update(ctx, labelled(sec))
		} else {
			err = s.Client.Create(ctx, labelled(sec))
		}
		if err == nil {
			return next, nil
		}
		if !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return caPair{}, fmt.Errorf("writing usage CA Secret %s: %w", CASecretName, err)
		}
		// Another replica wrote it first: read theirs.
	}
	return caPair{}, fmt.Errorf("usage CA Secret %s: written by others again and again while this replica read it", CASecretName)
}

// labelled sets the managed-by label on sec and returns it.
func labelled(sec *corev1.Secret) *corev1.Secret {
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[servingv1alpha1.LabelManagedBy] = servingv1alpha1.ManagedByValue
	return sec
}

// servingCerts gives the aggregator's TLS handshakes a certificate for hosts, issued from
// the CA and issued again when it is two thirds through its life or the CA was replaced.
// Handshakes only read it; keep refreshes it.
type servingCerts struct {
	ca    SecretCA
	hosts []string
	now   func() time.Time
	log   logr.Logger
	// checkEvery is how often keep reads the CA again (caCheckInterval).
	checkEvery time.Duration

	current atomic.Pointer[tls.Certificate]
	mu      sync.Mutex // serialises refresh
}

// get is tls.Config.GetCertificate: the current certificate. Only when there is none yet
// (or it has expired: keep could not refresh it) does a handshake wait for one, and then
// the handshakes waiting together get one refresh between them.
func (s *servingCerts) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.usable(); c != nil {
		return c, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.usable(); c != nil {
		return c, nil
	}
	return s.refreshLocked()
}

// usable is the current certificate, or nil when there is none or it has expired.
func (s *servingCerts) usable() *tls.Certificate {
	if c := s.current.Load(); c != nil && s.now().Before(c.Leaf.NotAfter) {
		return c
	}
	return nil
}

// refresh reads the CA Secret (making or rotating the CA if needed) and issues a new
// certificate when the current one is two thirds through its life or another CA should
// issue it (caPair.issuer). A Secret that cannot be read leaves a valid current certificate
// in use.
func (s *servingCerts) refresh() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshLocked()
}

func (s *servingCerts) refreshLocked() (*tls.Certificate, error) {
	now, cur := s.now(), s.current.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pair, err := s.ca.load(ctx, now)
	if err != nil {
		keep := cur != nil && now.Before(cur.Leaf.NotAfter)
		s.log.Error(err, "usage aggregator: cannot read or make its CA", "servingTheCertificateItHas", keep)
		if keep {
			return cur, nil
		}
		return nil, err
	}
	issuer := pair.issuer(now)
	// Signed by issuer: CreateCertificate gives each CA a key ID (from its key) and names it in
	// what it signs.
	if cur != nil && len(issuer.cert.SubjectKeyId) > 0 && bytes.Equal(cur.Leaf.AuthorityKeyId, issuer.cert.SubjectKeyId) &&
		now.Before(cur.Leaf.NotBefore.Add(clockSkew+2*servingValidity/3)) {
		return cur, nil
	}
	cert, err := issuer.issue(s.hosts, now)
	if err != nil {
		return nil, err
	}
	s.current.Store(cert)
	servingCertExpiry.Set(float64(cert.Leaf.NotAfter.Unix()))
	s.log.Info("usage aggregator: serving certificate issued", "hosts", s.hosts, "notAfter", cert.Leaf.NotAfter)
	return cert, nil
}

// keep issues the first certificate, making the CA if there is none, then refreshes it
// every checkEvery until ctx ends. Runtimes cannot connect before the manager has made and
// published the CA, and a rotation or a deleted CA Secret must take effect without a
// handshake to bring it: the runtimes may have no CA to handshake with.
func (s *servingCerts) keep(ctx context.Context) {
	const retry = 5 * time.Second
	for {
		wait := s.checkEvery
		if _, err := s.refresh(); err != nil {
			wait = retry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// serverCredentials answer TLS, and plain gRPC only when allowPlaintext (runtimes from
// before TLS, during an upgrade): the first byte of a connection tells them apart.
type serverCredentials struct {
	credentials.TransportCredentials // TLS
	allowPlaintext                   bool
	// refused is told of each plain connection refused.
	refused func(remote net.Addr)
}

// errPlaintext is the handshake error of a plain connection that is not taken.
var errPlaintext = errors.New("usage aggregator: plain-text connection refused, it takes TLS only (runtime serve --usage-ca-file)")

func (c serverCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	br := bufio.NewReaderSize(conn, 16)
	first, err := br.Peek(1)
	if err != nil {
		return nil, nil, err
	}
	pc := &peekedConn{Conn: conn, r: br}
	if first[0] == tlsRecordHandshake {
		return c.TransportCredentials.ServerHandshake(pc)
	}
	if !c.allowPlaintext {
		plaintextRefusedTotal.Inc()
		c.refused(conn.RemoteAddr())
		return nil, nil, errPlaintext
	}
	return insecure.NewCredentials().ServerHandshake(pc)
}

func (c serverCredentials) Clone() credentials.TransportCredentials {
	return serverCredentials{TransportCredentials: c.TransportCredentials.Clone(), allowPlaintext: c.allowPlaintext, refused: c.refused}
}

// peekedConn reads the bytes peeked at first.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// WithServingTLS serves TLS with a certificate for hosts (the host of the address the
// runtimes are given), issued from the CA kept in a Secret by ca. With allowPlaintext
// (--usage-allow-plaintext), plain-gRPC connections are taken too (runtimes that predate
// TLS, during an upgrade).
func WithServingTLS(ca SecretCA, hosts []string, allowPlaintext bool) AggregatorOption {
	return func(a *Aggregator) {
		certs := &servingCerts{ca: ca, hosts: hosts, checkEvery: caCheckInterval}
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: certs.get})
		a.certs = certs
		// A runtime from before TLS is refused before it can say anything: the log says why
		// its usage does not arrive (once a minute, whatever the number of such runtimes).
		every := &rate.Sometimes{Interval: time.Minute}
		refused := func(remote net.Addr) {
			every.Do(func() {
				a.log.Info("usage aggregator: refused a plain-gRPC connection; runtimes must connect with TLS (runtime serve --usage-ca-file), or run the manager with --usage-allow-plaintext while upgrading older ones",
					"remote", remote.String())
			})
		}
		a.serverOpts = append(a.serverOpts, grpc.Creds(serverCredentials{TransportCredentials: creds, allowPlaintext: allowPlaintext, refused: refused}))
	}
}

// WithServerCA makes the reporter connect with TLS and verify the aggregator's certificate
// against the CA certificates (PEM) in caFile, read again for every connection (the kubelet
// updates the projected file when the manager publishes a new CA), for serverName (empty: the
// endpoint's host).
func WithServerCA(caFile, serverName string) ReporterOption {
	return func(r *Reporter) {
		r.creds = &caFileCredentials{file: caFile}
		if serverName != "" {
			// gRPC's TLS verifies the channel's authority, which is the endpoint's.
			r.dialOpts = append(r.dialOpts, grpc.WithAuthority(serverName))
		}
	}
}

// caFileCredentials are TLS client credentials whose roots are read from a file at each
// handshake.
type caFileCredentials struct {
	file string
}

func (c *caFileCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pemBytes, err := os.ReadFile(c.file)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the usage aggregator's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bytes.TrimSpace(pemBytes)) {
		return nil, nil, fmt.Errorf("the usage aggregator's CA file %s holds no PEM certificate", c.file)
	}
	tc := credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	return tc.ClientHandshake(ctx, authority, conn)
}

func (c *caFileCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("usage: caFileCredentials are client credentials")
}

func (c *caFileCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *caFileCredentials) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

// OverrideServerName is part of the TransportCredentials interface, deprecated there for
// grpc.WithAuthority, which WithServerCA uses.
func (c *caFileCredentials) OverrideServerName(string) error {
	return errors.New("usage: set the server name with WithServerCA")
}
