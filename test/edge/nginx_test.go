package edge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/test/clients"
	"github.com/helixflow/helixflow/test/testengine"
	"github.com/helixflow/helixflow/test/testenv"
)

const (
	// modelHost is spec.endpoint.host of the exposed model: the Ingress host, the
	// certificate's DNS name, the SNI and Host the client sends. The client dials it on
	// loopback.
	modelHost = "llama.example.test"
	// modelNamespace and the model name (testengine.DefaultModel) name the InferenceModel;
	// the Ingress is named after the model.
	modelNamespace = "team-a"
	// ingressUID stands for the Ingress's metadata.uid, part of ingress-nginx's zone names.
	ingressUID = "0b6f4a8e-5d1c-4c43-9d0e-7f1a2b3c4d5e"
	// annotationPrefix is the community ingress-nginx controller's annotation prefix.
	annotationPrefix = "nginx.ingress.kubernetes.io/"
)

// ingressAnnotations are the annotations the manager writes on the Ingress of an exposed
// model for the community ingress-nginx controller (issue 6: streams not buffered and not
// cut, bodies up to the runtime's 8 MiB cap, edge rate limits from spec.endpoint.rateLimit,
// HTTP redirected to HTTPS), as controllers/exposure_builders.go formats them for the
// default --stream-timeout (10m) and body cap (8 MiB). The rate limits are set high
// enough not to interfere with the test. testdata/nginx.conf.tmpl renders what each one means.
func ingressAnnotations() map[string]string {
	return map[string]string{
		annotationPrefix + "proxy-buffering":         "off",
		annotationPrefix + "proxy-request-buffering": "off",
		annotationPrefix + "proxy-http-version":      "1.1",
		annotationPrefix + "proxy-read-timeout":      "600",
		annotationPrefix + "proxy-send-timeout":      "600",
		annotationPrefix + "proxy-body-size":         "8m",
		annotationPrefix + "limit-rps":               "100",
		annotationPrefix + "limit-connections":       "50",
		annotationPrefix + "ssl-redirect":            "true",
		annotationPrefix + "force-ssl-redirect":      "true",
	}
}

// limitBurstMultiplier is ingress-nginx's default limit-burst-multiplier.
const limitBurstMultiplier = 5

// edgeConfig is one nginx configuration: the annotations and the test's own knobs.
type edgeConfig struct {
	// Annotations are the Ingress's annotations (full names).
	Annotations map[string]string
	// IgnoreAccelBuffering makes nginx disregard the runtime's X-Accel-Buffering header
	// (proxy_ignore_headers): not something an annotation can do, only the controls use it.
	IgnoreAccelBuffering bool
}

// templateData is what testdata/nginx.conf.tmpl is executed with.
type templateData struct {
	Dir, RunAs          string
	HTTPPort, HTTPSPort int
	Host                string
	CertFile, KeyFile   string
	Upstream            string
	// Zone is ingress-nginx's rate-limit zone prefix, <namespace>_<ingress>_<uid>; ZoneVar
	// the identifier of its $limit_ variable.
	Zone, ZoneVar        string
	IgnoreAccelBuffering bool
}

// renderNginxConf executes the template with data, resolving `ann` in annotations.
func renderNginxConf(annotations map[string]string, data templateData) (string, error) {
	ann := func(name string) (string, error) {
		v, ok := annotations[annotationPrefix+name]
		if !ok {
			return "", fmt.Errorf("annotation %s%s is not set", annotationPrefix, name)
		}
		return v, nil
	}
	funcs := template.FuncMap{
		"ann": ann,
		"annOr": func(name, def string) string {
			if v, ok := annotations[annotationPrefix+name]; ok {
				return v
			}
			return def
		},
		// num: a positive decimal number (ingress-nginx parses these with strconv.Atoi).
		"num": func(v string) (int, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%q is not a positive number", v)
			}
			return n, nil
		},
		"burst": func(v string) (int, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%q is not a positive number", v)
			}
			return n * limitBurstMultiplier, nil
		},
		// size: an nginx size, digits with an optional k or m.
		"size": func(v string) (string, error) {
			digits := strings.TrimRight(strings.ToLower(v), "km")
			if len(v)-len(digits) > 1 {
				return "", fmt.Errorf("%q is not an nginx size", v)
			}
			if n, err := strconv.Atoi(digits); err != nil || n <= 0 {
				return "", fmt.Errorf("%q is not an nginx size", v)
			}
			return v, nil
		},
		"onoff": func(v string) (string, error) {
			if v != "on" && v != "off" {
				return "", fmt.Errorf("%q is neither on nor off", v)
			}
			return v, nil
		},
	}
	tmpl, err := template.New("nginx.conf.tmpl").Funcs(funcs).Option("missingkey=error").
		ParseFiles(filepath.Join("testdata", "nginx.conf.tmpl"))
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

// edge is one exposed model: the test engine, an embedded runtime in front of it, and nginx
// in front of the runtime with the Ingress's configuration, serving https://modelHost:<port>.
type edge struct {
	engine *testengine.Engine
	// client trusts the test's CA and dials modelHost on loopback; it does not follow
	// redirects.
	client *http.Client
	// baseURL is https://modelHost:<https port>; httpURL the plain-HTTP listener.
	baseURL, httpURL string
	dir              string
}

// startEdge starts the engine (cfg, with Record), the runtime and nginx configured by ec.
func startEdge(t *testing.T, engineCfg testengine.Config, ec edgeConfig) *edge {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: runs nginx, the runtime and the test engine (-short)")
	}
	bin := clients.NginxPath(t)
	engineCfg.Record = true
	engine, engineURL := testengine.NewTestServer(t, engineCfg)
	runtimeAddr := startRuntime(t, engineURL)

	dir := t.TempDir()
	ca, certFile, keyFile := writeCertificates(t, dir, modelHost)
	httpPort, httpsPort := freePort(t), freePort(t)
	runAs := ""
	if os.Geteuid() == 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		runAs = u.Username
		if g, err := user.LookupGroupId(u.Gid); err == nil {
			runAs += " " + g.Name
		}
	}
	zone := fmt.Sprintf("%s_%s_%s", modelNamespace, testengine.DefaultModel, ingressUID)
	sum := sha256.Sum256([]byte(zone))
	conf, err := renderNginxConf(ec.Annotations, templateData{
		Dir: dir, RunAs: runAs,
		HTTPPort: httpPort, HTTPSPort: httpsPort,
		Host:     modelHost,
		CertFile: certFile, KeyFile: keyFile,
		Upstream: runtimeAddr,
		Zone:     zone, ZoneVar: hex.EncodeToString(sum[:8]),
		IgnoreAccelBuffering: ec.IgnoreAccelBuffering,
	})
	if err != nil {
		t.Fatalf("rendering nginx.conf: %v", err)
	}
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confFile}
	if out, err := exec.Command(bin, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects the rendered configuration: %v\n%s\n%s", err, out, numbered(conf))
	}
	startNginx(t, bin, dir, append(args, "-g", "daemon off;"))

	e := &edge{
		engine:  engine,
		client:  loopbackClient(ca),
		baseURL: fmt.Sprintf("https://%s:%d", modelHost, httpsPort),
		httpURL: fmt.Sprintf("http://%s:%d", modelHost, httpPort),
		dir:     dir,
	}
	e.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	// Ready when nginx answers over TLS for the host (the 404 of the default backend).
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.client.Get(e.baseURL + "/")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx did not answer on %s: %v%s", e.baseURL, err, e.errorLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return e
}

// startRuntime embeds `runtime serve` for the model (auth mode None: the edge is what is
// tested) in front of engineURL and returns its HTTP address once it is ready.
func startRuntime(t *testing.T, engineURL string) string {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	opts := serve.DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream = testengine.DefaultModel, modelNamespace, engineURL
	opts.HTTPAddress, opts.GRPCAddress, opts.MetricsAddress = addr, "0", "0"
	opts.ShutdownTimeout = 5 * time.Second
	s, err := serve.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.SetInferenceModel(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: modelNamespace, Name: testengine.DefaultModel},
		Spec: servingv1alpha1.InferenceModelSpec{
			Auth:     servingv1alpha1.AuthSpec{Mode: servingv1alpha1.AuthModeNone},
			Endpoint: &servingv1alpha1.EndpointSpec{Host: modelHost},
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runtime: %v", err)
		}
	})
	if err := testenv.WaitHTTP200(context.Background(), "http://"+addr+"/readyz", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return addr
}

// startNginx runs nginx in the foreground, in its own process group; the test's cleanup
// stops it by its master's PID (SIGTERM, the fast shutdown of the master and its workers),
// and kills the group it leads if it has not exited 5 s later.
func startNginx(t *testing.T, bin, dir string, args []string) {
	t.Helper()
	out, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = out.Close()
		close(exited)
	}()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Errorf("nginx (pid %d) did not stop within 5s of SIGTERM; killing its process group", pid)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-exited
		}
	})
}

// errorLog returns the end of nginx's error log, for failure messages.
func (e *edge) errorLog() string {
	var b strings.Builder
	for _, name := range []string{"nginx.out", "error.log"} {
		if data, err := os.ReadFile(filepath.Join(e.dir, name)); err == nil && len(data) > 0 {
			s := string(data)
			if len(s) > 3000 {
				s = "..." + s[len(s)-3000:]
			}
			fmt.Fprintf(&b, "\n%s:\n%s", name, s)
		}
	}
	return b.String()
}

// loopbackClient returns an HTTP client that trusts ca, sends modelHost as SNI and Host, and
// dials modelHost (any port) on 127.0.0.1.
func loopbackClient(ca *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if host != modelHost {
				return nil, fmt.Errorf("the test client dials only %s, not %s", modelHost, host)
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// writeCertificates makes a CA and a certificate for host signed by it (what cert-manager
// would put in the Ingress's TLS Secret), writes the certificate chain and key as PEM in
// dir, and returns the CA and the two files.
func writeCertificates(t *testing.T, dir, host string) (ca *x509.Certificate, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "helixflow edge test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var chain bytes.Buffer
	for _, der := range [][]byte{leafDER, caDER} {
		if err := pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
			t.Fatal(err)
		}
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, chain.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca, certFile, keyFile
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// numbered returns conf with line numbers, for nginx -t's messages.
func numbered(conf string) string {
	var b strings.Builder
	for i, line := range strings.Split(conf, "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, line)
	}
	return b.String()
}

// TestRenderNginxConfRejectsBadValues: the fixture's renderer refuses annotation values
// that are not what nginx wants there, so a typo in the fixture cannot pass unnoticed.
func TestRenderNginxConfRejectsBadValues(t *testing.T) {
	data := templateData{Dir: "/tmp/x", HTTPPort: 1, HTTPSPort: 2, Host: modelHost, Upstream: "127.0.0.1:3", Zone: "z", ZoneVar: "z"}
	if _, err := renderNginxConf(ingressAnnotations(), data); err != nil {
		t.Fatalf("the fixture's annotations do not render: %v", err)
	}
	for name, bad := range map[string]string{
		"limit-rps":          "10; deny all",
		"limit-connections":  "0",
		"proxy-read-timeout": "600s",
		"proxy-body-size":    "8mm",
		"proxy-buffering":    "no",
	} {
		a := ingressAnnotations()
		a[annotationPrefix+name] = bad
		if _, err := renderNginxConf(a, data); err == nil {
			t.Errorf("%s: %q rendered", name, bad)
		}
	}
	a := ingressAnnotations()
	delete(a, annotationPrefix+"proxy-buffering")
	if _, err := renderNginxConf(a, data); err == nil || !strings.Contains(err.Error(), "proxy-buffering") {
		t.Errorf("a missing annotation rendered (err %v)", err)
	}
}
