package usage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// and tls.key). Every replica creates it when it is missing; its private key never leaves
	// that namespace.
	CASecretName = "helixflow-usage-ca"
	// CAConfigMapKey is the key, in the ConfigMap the manager publishes in every namespace
	// with a model (auth.JWKSConfigMapName), that holds the CA's certificate: what runtimes
	// verify the aggregator with.
	CAConfigMapKey = "usage-ca.crt"

	// caValidity is the CA's lifetime. It is not rotated: deleting the Secret makes a new one
	// (see docs/runtime.md).
	caValidity = 10 * 365 * 24 * time.Hour
	// servingValidity is a serving certificate's lifetime; a replica issues itself a new one
	// after two thirds of it, so a restart is never needed.
	servingValidity = 30 * 24 * time.Hour
	// caCheckInterval is how often a replica reads the CA Secret again, to notice a replaced
	// (or deleted) CA, and renews its serving certificate when due.
	caCheckInterval = time.Minute
	// clockSkew backdates certificates, for peers whose clocks run a little behind.
	clockSkew = 5 * time.Minute
	// CAActivationDelay is how long after a new CA is made the replicas keep serving the
	// certificate they have from the previous one: long enough for the kubelet to update the
	// runtimes' CA files with both (CAOverlap), so no connection fails while the CA changes.
	CAActivationDelay = 5 * time.Minute
	// CAOverlap is how long after a new CA is made the previous one stays published beside it:
	// past the activation delay and the replicas' next check, then the old CA is trusted no more.
	CAOverlap = 10 * time.Minute
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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return caKeys{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"HelixFlow"}, CommonName: "helixflow usage aggregator CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return caKeys{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return caKeys{}, err
	}
	return caKeys{cert: cert, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// secretData is the CA as the data of a kubernetes.io/tls Secret.
func (ca caKeys) secretData() (map[string][]byte, error) {
	der, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		corev1.TLSCertKey:       ca.certPEM,
		corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
	}, nil
}

// decodeCA reads a CA written by secretData.
func decodeCA(data map[string][]byte) (caKeys, error) {
	pair, err := tls.X509KeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return caKeys{}, fmt.Errorf("usage CA Secret %s (delete it to make a new CA): %w", CASecretName, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !pair.Leaf.IsCA {
		return caKeys{}, fmt.Errorf("usage CA Secret %s (delete it to make a new CA): not an ECDSA CA", CASecretName)
	}
	return caKeys{cert: pair.Leaf, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Leaf.Raw}), key: key}, nil
}

// CACertificate is the CA certificate (PEM) in the data of the CA Secret, for publishing to
// the runtimes, and when the CA was made; it fails on anything decodeCA would not take.
func CACertificate(data map[string][]byte) (pem []byte, made time.Time, err error) {
	ca, err := decodeCA(data)
	if err != nil {
		return nil, time.Time{}, err
	}
	return ca.certPEM, ca.made(), nil
}

// made is when the CA was made (its NotBefore is backdated by clockSkew).
func (ca caKeys) made() time.Time { return ca.cert.NotBefore.Add(clockSkew) }

// PublishedCA is the bundle (PEM) to publish for the runtimes: the current CA, and, for
// CAOverlap after it was made, the certificates of the bundle published before (previous),
// so runtimes trust the serving certificates of both while the replicas change over. After
// the overlap only the current CA is left. next is when the bundle changes by itself
// (zero: never).
func PublishedCA(current []byte, made time.Time, previous []byte, now time.Time) (bundle []byte, next time.Time) {
	current = bytes.TrimSpace(current)
	end := made.Add(CAOverlap)
	if !now.Before(end) {
		return append(current, '\n'), time.Time{}
	}
	out := append(append([]byte(nil), current...), '\n')
	for rest := previous; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		b := pem.EncodeToMemory(block)
		if block.Type == "CERTIFICATE" && !bytes.Contains(out, b) {
			out = append(out, b...)
		}
	}
	return out, end
}

// Ensure makes the CA if there is none (as the first replica does) and returns its
// certificate (PEM).
func (s SecretCA) Ensure(ctx context.Context) ([]byte, error) {
	ca, err := s.load(ctx, time.Now())
	return ca.certPEM, err
}

// issue signs a serving certificate for hosts (DNS names or IP addresses) with a new key.
func (ca caKeys) issue(hosts []string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{Organization: []string{"HelixFlow"}, CommonName: "helixflow usage aggregator"},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(servingValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// SecretCA keeps the CA in the Secret CASecretName of Namespace, creating it when missing and
// replacing it when it cannot be decoded or has less than a serving certificate's lifetime
// left. Every replica may do so at once: a creation or an update (guarded by the
// resourceVersion read) wins, the others read the winner's.
type SecretCA struct {
	// Client writes the Secret; Reader reads it from the API server (uncached, so a
	// replica sees the Secret another one just wrote).
	Client    client.Client
	Reader    client.Reader
	Namespace string
}

func (s SecretCA) load(ctx context.Context, now time.Time) (caKeys, error) {
	for range 3 {
		sec := &corev1.Secret{}
		err := s.Reader.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: CASecretName}, sec)
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return caKeys{}, fmt.Errorf("reading usage CA Secret %s: %w", CASecretName, err)
		}
		if exists {
			ca, err := decodeCA(sec.Data)
			if err == nil && ca.cert.NotAfter.Sub(now) > servingValidity {
				return ca, nil
			}
			// Unreadable, or expiring: replaced below, as if deleted.
		}
		ca, err := newCA(now)
		if err != nil {
			return caKeys{}, err
		}
		data, err := ca.secretData()
		if err != nil {
			return caKeys{}, err
		}
		if !exists {
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: CASecretName}}
		}
		sec.Labels = map[string]string{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue}
		sec.Type, sec.Data = corev1.SecretTypeTLS, data
		if exists {
			err = s.Client.Update(ctx, sec)
		} else {
			err = s.Client.Create(ctx, sec)
		}
		if err == nil {
			return ca, nil
		}
		if !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return caKeys{}, fmt.Errorf("writing usage CA Secret %s: %w", CASecretName, err)
		}
		// Another replica wrote it first: read theirs.
	}
	return caKeys{}, fmt.Errorf("usage CA Secret %s: written by others again and again while this replica read it", CASecretName)
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
	caHash  [32]byte   // of the CA certificate current was signed with
}

// get is tls.Config.GetCertificate: the current certificate, or a new one when there is none
// yet or it has expired (keep could not refresh it).
func (s *servingCerts) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.current.Load(); c != nil && s.now().Before(c.Leaf.NotAfter) {
		return c, nil
	}
	return s.refresh()
}

// refresh reads the CA (making it if needed) and issues a new certificate when the current
// one is two thirds through its life or was signed by another CA. A CA that cannot be read
// leaves a valid current certificate in use.
func (s *servingCerts) refresh() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, cur := s.now(), s.current.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := s.ca.load(ctx, now)
	if err != nil {
		keep := cur != nil && now.Before(cur.Leaf.NotAfter)
		s.log.Error(err, "usage aggregator: cannot read or make its CA", "servingTheCertificateItHas", keep)
		if keep {
			return cur, nil
		}
		return nil, err
	}
	h := sha256.Sum256(ca.cert.Raw)
	if cur != nil && now.Before(cur.Leaf.NotBefore.Add(clockSkew+2*servingValidity/3)) &&
		(h == s.caHash || now.Before(ca.made().Add(CAActivationDelay))) {
		// Fresh, from this CA, or from the previous one while runtimes learn the new one.
		return cur, nil
	}
	cert, err := ca.issue(s.hosts, now)
	if err != nil {
		return nil, err
	}
	s.caHash = h
	s.current.Store(cert)
	servingCertExpiry.Set(float64(cert.Leaf.NotAfter.Unix()))
	s.log.Info("usage aggregator: serving certificate issued", "hosts", s.hosts, "notAfter", cert.Leaf.NotAfter)
	return cert, nil
}

// keep issues the first certificate, making the CA if there is none, then refreshes it
// every checkEvery until ctx ends. Runtimes cannot connect before the manager has made and
// published the CA, and a deleted CA Secret (to rotate it) must come back without a
// handshake to bring it: the runtimes would have no CA to handshake with.
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
