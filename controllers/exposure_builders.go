package controllers

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	certmanager "github.com/cert-manager/cert-manager/pkg/apis/certmanager"
	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/runtime/grpc/inferencev1"
)

// This file builds what exposes a model at https://<spec.endpoint.host>/v1: Ingresses for an
// NGINX Ingress controller, or Gateway API routes, and a cert-manager Certificate. It is pure:
// no I/O, so every variant is table-tested against golden files (testdata/exposure).
//
// Security rule (DESIGN.md): no user-supplied string reaches an nginx annotation unvalidated.
// Every annotation value written here is formatted from a typed, validated field (numbers by
// strconv, sizes and durations by the helpers below), or is a user annotation from the short
// allowlist in nginxAnnotations, parsed into a typed value and formatted again.

// IngressDialect selects whose annotations the manager writes on Ingresses.
type IngressDialect string

const (
	// DialectIngressNginx is the community controller, kubernetes/ingress-nginx
	// (annotations nginx.ingress.kubernetes.io/*).
	DialectIngressNginx IngressDialect = "ingress-nginx"
	// DialectNginxInc is F5's NGINX Ingress Controller, nginx/kubernetes-ingress
	// (annotations nginx.org/*).
	DialectNginxInc IngressDialect = "nginx-inc"
)

// Exposure defaults; docs/exposure.md explains each.
const (
	DefaultIngressClass = "nginx"
	// DefaultStreamTimeout is the proxy read and send timeout: a token stream may go quiet
	// between chunks (long prompts, queueing) and must not be cut at nginx's 60 s default.
	DefaultStreamTimeout = 10 * time.Minute
	// DefaultMaxBodyBytes matches runtime serve's request body cap (8 MiB), so the edge lets
	// through what the runtime accepts and the runtime answers 413 beyond it.
	DefaultMaxBodyBytes int64 = 8 << 20
	// DefaultCertDuration and DefaultCertRenewBefore are 90 and 30 days: a certificate is
	// renewed with a third of its life left, as Let's Encrypt recommends.
	DefaultCertDuration    = 2160 * time.Hour
	DefaultCertRenewBefore = 720 * time.Hour
)

// Bounds the configuration is checked against.
const (
	minStreamTimeout = time.Second
	maxStreamTimeout = 24 * time.Hour
	maxBodyBytes     = 1 << 30
	// cert-manager refuses shorter certificates and earlier renewals than these.
	minCertDuration    = time.Hour
	minCertRenewBefore = 5 * time.Minute
	// rateLimitBurstMultiplier is ingress-nginx's default burst (limit-rps × 5), applied to
	// nginx-inc's limit-req-burst too so both dialects let the same bursts through.
	rateLimitBurstMultiplier = 5
)

// What is exposed: the OpenAI-compatible HTTP API (SSE and the WebSocket /v1/stream are under
// /v1) and the gRPC inference service.
const exposureHTTPPath = "/v1"

// inferenceGRPCService is the fully qualified gRPC service the GRPCRoute and the gRPC
// Ingress expose (not the health service: that is for the kubelet and load balancers inside).
var inferenceGRPCService = inferencev1.Inference_ServiceDesc.ServiceName

// ExposureConfig is the manager-wide configuration of spec.endpoint.
type ExposureConfig struct {
	// DefaultIngressClass is the Ingress class of models that set neither
	// spec.endpoint.ingressClassName nor gatewayRef.
	DefaultIngressClass string
	// Dialect selects the annotations written on Ingresses: ingress-nginx (default) or
	// nginx-inc.
	Dialect IngressDialect
	// DefaultIssuer issues certificates for models that name no spec.endpoint.tls.issuerRef;
	// nil means none: such models get no Certificate.
	DefaultIssuer *servingv1alpha1.IssuerReference
	// StreamTimeout is the proxy read/send timeout on Ingresses and the request timeout on
	// HTTPRoutes: how long a response (a token stream) may take.
	StreamTimeout time.Duration
	// MaxBodyBytes is the largest request body the edge lets through: the runtime's cap.
	MaxBodyBytes int64
	// CertDuration and CertRenewBefore are the Certificate's duration and renewBefore.
	CertDuration, CertRenewBefore time.Duration
}

// DefaultExposureConfig returns the configuration used when no flag overrides it. It has
// no default issuer: without one, models must name theirs.
func DefaultExposureConfig() ExposureConfig {
	return ExposureConfig{
		DefaultIngressClass: DefaultIngressClass,
		Dialect:             DialectIngressNginx,
		StreamTimeout:       DefaultStreamTimeout,
		MaxBodyBytes:        DefaultMaxBodyBytes,
		CertDuration:        DefaultCertDuration,
		CertRenewBefore:     DefaultCertRenewBefore,
	}
}

// Validate reports a configuration ExposureObjects cannot use (zero values take defaults).
// The manager calls it at start, so a bad flag fails there and not on every model.
func (c ExposureConfig) Validate() error {
	_, err := c.normalized()
	return err
}

// normalized fills zero values with defaults and checks the rest.
func (c ExposureConfig) normalized() (ExposureConfig, error) {
	def := DefaultExposureConfig()
	if c.DefaultIngressClass == "" {
		c.DefaultIngressClass = def.DefaultIngressClass
	}
	if c.Dialect == "" {
		c.Dialect = def.Dialect
	}
	if c.StreamTimeout == 0 {
		c.StreamTimeout = def.StreamTimeout
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = def.MaxBodyBytes
	}
	if c.CertDuration == 0 {
		c.CertDuration = def.CertDuration
	}
	if c.CertRenewBefore == 0 {
		c.CertRenewBefore = def.CertRenewBefore
	}
	var errs []error
	if c.Dialect != DialectIngressNginx && c.Dialect != DialectNginxInc {
		errs = append(errs, fmt.Errorf("ingress dialect %q: want %s or %s", c.Dialect, DialectIngressNginx, DialectNginxInc))
	}
	if msgs := validation.IsDNS1123Subdomain(c.DefaultIngressClass); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("default ingress class %q: %s", c.DefaultIngressClass, strings.Join(msgs, "; ")))
	}
	if c.StreamTimeout < minStreamTimeout || c.StreamTimeout > maxStreamTimeout {
		errs = append(errs, fmt.Errorf("stream timeout %s: want between %s and %s", c.StreamTimeout, minStreamTimeout, maxStreamTimeout))
	}
	if c.MaxBodyBytes < 1 || c.MaxBodyBytes > maxBodyBytes {
		errs = append(errs, fmt.Errorf("max body size %d bytes: want between 1 and %d", c.MaxBodyBytes, int64(maxBodyBytes)))
	}
	if c.CertDuration < minCertDuration {
		errs = append(errs, fmt.Errorf("certificate duration %s: cert-manager wants at least %s", c.CertDuration, minCertDuration))
	}
	if c.CertRenewBefore < minCertRenewBefore || c.CertRenewBefore >= c.CertDuration {
		errs = append(errs, fmt.Errorf("certificate renewBefore %s: want at least %s and less than the duration %s", c.CertRenewBefore, minCertRenewBefore, c.CertDuration))
	}
	if iss := c.DefaultIssuer; iss != nil {
		if msgs := validation.IsDNS1123Subdomain(iss.Name); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("default issuer name %q: %s", iss.Name, strings.Join(msgs, "; ")))
		}
		if !validIssuerKind(iss.Kind) {
			errs = append(errs, fmt.Errorf("default issuer kind %q: want Issuer or ClusterIssuer", iss.Kind))
		}
	}
	return c, errors.Join(errs...)
}

func validIssuerKind(k servingv1alpha1.IssuerKind) bool {
	return k == "" || k == servingv1alpha1.IssuerKindIssuer || k == servingv1alpha1.IssuerKindClusterIssuer
}

// ExposureError says why a model's endpoint cannot be exposed safely. Nothing is built for
// such a model. Its message names the field or annotation, for the Exposed condition.
type ExposureError struct {
	// Field is the offending field's path, for example spec.endpoint.host or
	// metadata.annotations[nginx.ingress.kubernetes.io/server-snippet].
	Field string
	// Message is the whole explanation; it names Field.
	Message string
}

func (e *ExposureError) Error() string { return e.Message }

func exposureErrorf(field, format string, args ...any) *ExposureError {
	return &ExposureError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Names of what ExposureObjects builds, for the reconciler to find and prune them.
func ingressName(m *servingv1alpha1.InferenceModel) string     { return m.Name }
func grpcIngressName(m *servingv1alpha1.InferenceModel) string { return m.Name + "-grpc" }
func httpRouteName(m *servingv1alpha1.InferenceModel) string   { return m.Name }
func grpcRouteName(m *servingv1alpha1.InferenceModel) string   { return m.Name + "-grpc" }
func certificateName(m *servingv1alpha1.InferenceModel) string { return m.Name }

// tlsSecretName is the Secret with the endpoint's certificate: spec.endpoint.tls.secretName,
// else <name>-tls.
func tlsSecretName(m *servingv1alpha1.InferenceModel) string {
	if ep := m.Spec.Endpoint; ep != nil && ep.TLS != nil && ep.TLS.SecretName != "" {
		return ep.TLS.SecretName
	}
	return m.Name + "-tls"
}

// exposureURL is the public base URL of an exposed model ("" without an endpoint).
func exposureURL(m *servingv1alpha1.InferenceModel) string {
	if m.Spec.Endpoint == nil {
		return ""
	}
	return "https://" + m.Spec.Endpoint.Host + exposureHTTPPath
}

// exposureIssuer is the issuer of the model's certificate: spec.endpoint.tls.issuerRef, else
// the manager's default; nil when neither is set (then no Certificate is built).
func exposureIssuer(m *servingv1alpha1.InferenceModel, cfg ExposureConfig) *servingv1alpha1.IssuerReference {
	var ref *servingv1alpha1.IssuerReference
	if ep := m.Spec.Endpoint; ep != nil && ep.TLS != nil && ep.TLS.IssuerRef != nil {
		ref = ep.TLS.IssuerRef
	} else {
		ref = cfg.DefaultIssuer
	}
	if ref == nil {
		return nil
	}
	out := *ref
	if out.Kind == "" {
		out.Kind = servingv1alpha1.IssuerKindIssuer
	}
	return &out
}

// ExposureObjects returns the objects that expose model: with spec.endpoint.gatewayRef an
// HTTPRoute and a GRPCRoute, else an Ingress for HTTP and one for gRPC; and a Certificate when
// an issuer is known. It returns nil without spec.endpoint. Objects carry TypeMeta, the
// model's namespace and labels, and no owner reference. The error is an *ExposureError when
// the model cannot be exposed safely (hostile or invalid annotations or fields), and a plain
// error when cfg is invalid.
func ExposureObjects(m *servingv1alpha1.InferenceModel, cfg ExposureConfig) ([]client.Object, error) {
	if m.Spec.Endpoint == nil {
		return nil, nil
	}
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, fmt.Errorf("exposure configuration: %w", err)
	}
	if err := validateEndpoint(m, cfg); err != nil {
		return nil, err
	}
	// Annotations aimed at the Ingress controller are checked in every mode, so a hostile
	// one is refused the same way whether or not it would have been written.
	user, err := userControllerAnnotations(m.Annotations, cfg.Dialect)
	if err != nil {
		return nil, err
	}
	x := exposureDesired{model: m, cfg: cfg, d: modelDesired{model: m}}
	var objs []client.Object
	if cert := x.certificate(); cert != nil {
		objs = append(objs, cert)
	}
	if m.Spec.Endpoint.GatewayRef != nil {
		return append(objs, x.httpRoute(), x.grpcRoute()), nil
	}
	return append(objs, x.httpIngress(user), x.grpcIngress(user)), nil
}

// dnsHost is the CRD's rule for spec.endpoint.host: a lowercase DNS name with two labels or more.
var dnsHost = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$`)

// validateEndpoint repeats what the CRD validates that ends up in the objects, so a model
// the API server let through by mistake (an old CRD, a missing rule) is still refused.
func validateEndpoint(m *servingv1alpha1.InferenceModel, cfg ExposureConfig) error {
	ep := m.Spec.Endpoint
	if msgs := validation.IsDNS1123Label(m.Name); len(msgs) > 0 {
		return exposureErrorf("metadata.name", "metadata.name %q cannot name the exposed Service: %s", m.Name, strings.Join(msgs, "; "))
	}
	if err := validateHost(ep.Host); err != nil {
		return err
	}
	type named struct{ field, value string }
	names := []named{{"spec.endpoint.ingressClassName", ep.IngressClassName}}
	if g := ep.GatewayRef; g != nil {
		if ep.IngressClassName != "" {
			return exposureErrorf("spec.endpoint.gatewayRef", "spec.endpoint.gatewayRef and spec.endpoint.ingressClassName are mutually exclusive")
		}
		names = append(names,
			named{"spec.endpoint.gatewayRef.name", g.Name},
			named{"spec.endpoint.gatewayRef.namespace", g.Namespace},
			named{"spec.endpoint.gatewayRef.sectionName", g.SectionName})
		if g.Name == "" {
			return exposureErrorf("spec.endpoint.gatewayRef.name", "spec.endpoint.gatewayRef.name is required")
		}
	}
	if t := ep.TLS; t != nil {
		names = append(names, named{"spec.endpoint.tls.secretName", t.SecretName})
		if iss := t.IssuerRef; iss != nil {
			names = append(names, named{"spec.endpoint.tls.issuerRef.name", iss.Name})
			if iss.Name == "" {
				return exposureErrorf("spec.endpoint.tls.issuerRef.name", "spec.endpoint.tls.issuerRef.name is required")
			}
			if !validIssuerKind(iss.Kind) {
				return exposureErrorf("spec.endpoint.tls.issuerRef.kind", "spec.endpoint.tls.issuerRef.kind %q: want Issuer or ClusterIssuer", iss.Kind)
			}
		}
	}
	for _, n := range names {
		if n.value == "" {
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(n.value); len(msgs) > 0 {
			return exposureErrorf(n.field, "%s %q: %s", n.field, n.value, strings.Join(msgs, "; "))
		}
	}
	if g := ep.GatewayRef; g != nil && g.Namespace != "" {
		if msgs := validation.IsDNS1123Label(g.Namespace); len(msgs) > 0 {
			return exposureErrorf("spec.endpoint.gatewayRef.namespace", "spec.endpoint.gatewayRef.namespace %q: %s", g.Namespace, strings.Join(msgs, "; "))
		}
	}
	if rl := ep.RateLimit; rl != nil {
		if rl.RequestsPerSecond < 0 || rl.RequestsPerSecond > 100000 {
			return exposureErrorf("spec.endpoint.rateLimit.requestsPerSecond", "spec.endpoint.rateLimit.requestsPerSecond %d: want 1 to 100000", rl.RequestsPerSecond)
		}
		if rl.Connections < 0 || rl.Connections > 100000 {
			return exposureErrorf("spec.endpoint.rateLimit.connections", "spec.endpoint.rateLimit.connections %d: want 1 to 100000", rl.Connections)
		}
		// Refuse a limit the edge cannot enforce rather than silently not limit. Gateway API
		// has no rate limits; F5's controller has no per-client connection limit for
		// Ingresses (only through snippets, which HelixFlow never writes).
		if ep.GatewayRef != nil && (rl.RequestsPerSecond > 0 || rl.Connections > 0) {
			return exposureErrorf("spec.endpoint.rateLimit",
				"spec.endpoint.rateLimit cannot be enforced through a Gateway (Gateway API has no rate limits): remove it and configure the Gateway implementation's rate limiting")
		}
		if rl.Connections > 0 && cfg.Dialect == DialectNginxInc {
			return exposureErrorf("spec.endpoint.rateLimit.connections",
				"spec.endpoint.rateLimit.connections cannot be enforced by the F5 NGINX Ingress Controller (the manager's ingress dialect is %s): remove it or use requestsPerSecond", DialectNginxInc)
		}
	}
	return nil
}

func validateHost(host string) error {
	const field = "spec.endpoint.host"
	if len(host) > 253 || !dnsHost.MatchString(host) {
		return exposureErrorf(field, "%s %q must be a lowercase DNS name with at least two labels, at most 253 characters, for example llama.example.com", field, host)
	}
	for _, label := range strings.Split(host, ".") {
		if len(label) > 63 {
			return exposureErrorf(field, "%s %q has a label longer than 63 characters", field, host)
		}
	}
	return nil
}

// exposureDesired builds the objects of one model's endpoint.
type exposureDesired struct {
	model *servingv1alpha1.InferenceModel
	cfg   ExposureConfig // normalized
	d     modelDesired   // for meta() and objectLabels()
}

func (x exposureDesired) certificate() *certmanagerv1.Certificate {
	iss := exposureIssuer(x.model, x.cfg)
	if iss == nil {
		return nil
	}
	return &certmanagerv1.Certificate{
		TypeMeta:   metav1.TypeMeta{APIVersion: certmanagerv1.SchemeGroupVersion.String(), Kind: "Certificate"},
		ObjectMeta: x.d.meta(certificateName(x.model)),
		Spec: certmanagerv1.CertificateSpec{
			DNSNames:    []string{x.model.Spec.Endpoint.Host},
			SecretName:  tlsSecretName(x.model),
			IssuerRef:   cmmeta.IssuerReference{Name: iss.Name, Kind: string(iss.Kind), Group: certmanager.GroupName},
			Duration:    &metav1.Duration{Duration: x.cfg.CertDuration},
			RenewBefore: &metav1.Duration{Duration: x.cfg.CertRenewBefore},
			PrivateKey: &certmanagerv1.CertificatePrivateKey{
				Algorithm: certmanagerv1.ECDSAKeyAlgorithm,
				Size:      256,
				// A new key with every renewal: a leaked key dies with its certificate.
				RotationPolicy: certmanagerv1.RotationPolicyAlways,
			},
		},
	}
}

// ingressClass is spec.endpoint.ingressClassName, else the manager's default.
func (x exposureDesired) ingressClass() string {
	if c := x.model.Spec.Endpoint.IngressClassName; c != "" {
		return c
	}
	return x.cfg.DefaultIngressClass
}

func (x exposureDesired) ingress(name, path string, pathType networkingv1.PathType, port string, annotations map[string]string) *networkingv1.Ingress {
	host := x.model.Spec.Endpoint.Host
	meta := x.d.meta(name)
	meta.Annotations = annotations
	return &networkingv1.Ingress{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "Ingress"},
		ObjectMeta: meta,
		Spec: networkingv1.IngressSpec{
			IngressClassName: ptr.To(x.ingressClass()),
			TLS:              []networkingv1.IngressTLS{{Hosts: []string{host}, SecretName: tlsSecretName(x.model)}},
			Rules: []networkingv1.IngressRule{{
				Host: host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: []networkingv1.HTTPIngressPath{{
						Path:     path,
						PathType: ptr.To(pathType),
						Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
							Name: x.model.Name,
							Port: networkingv1.ServiceBackendPort{Name: port},
						}},
					}},
				}},
			}},
		},
	}
}

// httpIngress routes /v1 (the OpenAI API, SSE streams and the /v1/stream WebSocket) to the
// Service's http port.
func (x exposureDesired) httpIngress(user map[string]string) *networkingv1.Ingress {
	return x.ingress(ingressName(x.model), exposureHTTPPath, networkingv1.PathTypePrefix, "http", x.annotations(false, user))
}

// grpcIngress routes the gRPC inference service to the Service's grpc port. ingress-nginx
// (1.12 and later, strict-validate-path-type) refuses Prefix and Exact paths with characters
// other than letters, digits, '/', '_' and '-', and a gRPC path has dots: there the path is
// ImplementationSpecific, which ingress-nginx and F5's controller both match as a prefix.
func (x exposureDesired) grpcIngress(user map[string]string) *networkingv1.Ingress {
	pathType := networkingv1.PathTypePrefix
	if x.cfg.Dialect == DialectIngressNginx {
		pathType = networkingv1.PathTypeImplementationSpecific
	}
	return x.ingress(grpcIngressName(x.model), "/"+inferenceGRPCService, pathType, "grpc", x.annotations(true, user))
}

// annotations are the controller annotations of the HTTP or the gRPC Ingress: every value is
// formatted here from typed configuration and spec fields, and user holds the allowlisted
// user annotations, already parsed and formatted again.
func (x exposureDesired) annotations(grpc bool, user map[string]string) map[string]string {
	a := map[string]string{}
	for k, v := range user {
		a[k] = v
	}
	rl := x.model.Spec.Endpoint.RateLimit
	secs := durationSeconds(x.cfg.StreamTimeout)
	body := nginxSize(x.cfg.MaxBodyBytes)
	switch x.cfg.Dialect {
	case DialectNginxInc:
		const p = "nginx.org/"
		a[p+"proxy-read-timeout"] = secs + "s"
		a[p+"proxy-send-timeout"] = secs + "s"
		a[p+"client-max-body-size"] = body
		a[p+"ssl-redirect"] = "true"
		if grpc {
			a[p+"grpc-services"] = x.model.Name
		} else {
			a[p+"proxy-buffering"] = "false"
			a[p+"websocket-services"] = x.model.Name
		}
		if rl != nil && rl.RequestsPerSecond > 0 {
			a[p+"limit-req-rate"] = strconv.Itoa(int(rl.RequestsPerSecond)) + "r/s"
			a[p+"limit-req-burst"] = strconv.Itoa(int(rl.RequestsPerSecond) * rateLimitBurstMultiplier)
			a[p+"limit-req-no-delay"] = "true"
		}
	default:
		const p = "nginx.ingress.kubernetes.io/"
		a[p+"proxy-read-timeout"] = secs
		a[p+"proxy-send-timeout"] = secs
		a[p+"proxy-body-size"] = body
		a[p+"ssl-redirect"] = "true"
		a[p+"force-ssl-redirect"] = "true"
		if grpc {
			a[p+"backend-protocol"] = "GRPC"
		} else {
			a[p+"proxy-buffering"] = "off"
			a[p+"proxy-request-buffering"] = "off"
			a[p+"proxy-http-version"] = "1.1"
		}
		if rl != nil && rl.RequestsPerSecond > 0 {
			a[p+"limit-rps"] = strconv.Itoa(int(rl.RequestsPerSecond))
		}
		if rl != nil && rl.Connections > 0 {
			a[p+"limit-connections"] = strconv.Itoa(int(rl.Connections))
		}
	}
	return a
}

func (x exposureDesired) parentRefs() []gatewayv1.ParentReference {
	g := x.model.Spec.Endpoint.GatewayRef
	ref := gatewayv1.ParentReference{
		Group: ptr.To(gatewayv1.Group(gatewayv1.GroupName)),
		Kind:  ptr.To(gatewayv1.Kind("Gateway")),
		Name:  gatewayv1.ObjectName(g.Name),
	}
	if g.Namespace != "" {
		ref.Namespace = ptr.To(gatewayv1.Namespace(g.Namespace))
	}
	if g.SectionName != "" {
		ref.SectionName = ptr.To(gatewayv1.SectionName(g.SectionName))
	}
	return []gatewayv1.ParentReference{ref}
}

func (x exposureDesired) serviceRef(port int32) gatewayv1.BackendRef {
	return gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
		Group: ptr.To(gatewayv1.Group("")),
		Kind:  ptr.To(gatewayv1.Kind("Service")),
		Name:  gatewayv1.ObjectName(x.model.Name),
		Port:  ptr.To(port),
	}}
}

// httpRoute attaches /v1 to the Gateway. request and backendRequest are both the stream
// timeout: the CRD wants backendRequest <= request, and a stream is one backend request.
func (x exposureDesired) httpRoute() *gatewayv1.HTTPRoute {
	timeout := gatewayv1.Duration(gatewayDuration(x.cfg.StreamTimeout))
	return &gatewayv1.HTTPRoute{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "HTTPRoute"},
		ObjectMeta: x.d.meta(httpRouteName(x.model)),
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: x.parentRefs()},
			Hostnames:       []gatewayv1.Hostname{gatewayv1.Hostname(x.model.Spec.Endpoint.Host)},
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{
					Type:  ptr.To(gatewayv1.PathMatchPathPrefix),
					Value: ptr.To(exposureHTTPPath),
				}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: x.serviceRef(servingv1alpha1.RuntimeHTTPPort)}},
				Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: ptr.To(timeout), BackendRequest: ptr.To(timeout)},
			}},
		},
	}
}

// grpcRoute attaches the gRPC inference service to the Gateway. GRPCRoute (v1) has no
// timeouts field: stream timeouts are the Gateway implementation's (docs/exposure.md).
func (x exposureDesired) grpcRoute() *gatewayv1.GRPCRoute {
	return &gatewayv1.GRPCRoute{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "GRPCRoute"},
		ObjectMeta: x.d.meta(grpcRouteName(x.model)),
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: x.parentRefs()},
			Hostnames:       []gatewayv1.Hostname{gatewayv1.Hostname(x.model.Spec.Endpoint.Host)},
			Rules: []gatewayv1.GRPCRouteRule{{
				Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{
					Type:    ptr.To(gatewayv1.GRPCMethodMatchExact),
					Service: ptr.To(inferenceGRPCService),
				}}},
				BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: x.serviceRef(servingv1alpha1.RuntimeGRPCPort)}},
			}},
		},
	}
}

// durationSeconds is d in whole seconds, rounded up, as nginx timeouts take them.
func durationSeconds(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// nginxSize formats n bytes in nginx's size syntax (https://nginx.org/en/docs/syntax.html):
// "8m", "512k" or plain bytes. Both controllers accept \d+[kKmM]? (F5's ParseSize has no g).
func nginxSize(n int64) string {
	switch {
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "m"
	case n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "k"
	}
	return strconv.FormatInt(n, 10)
}

// gatewayDuration formats d (at least a second, rounded up to whole seconds, at most 24h) as
// a GEP-2257 duration, the pattern ^([0-9]{1,5}(h|m|s|ms)){1,4}$: "10m", "1h30m", "90s" is
// written "1m30s".
func gatewayDuration(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	h, m, s := secs/3600, secs%3600/60, secs%60
	var b strings.Builder
	if h > 0 {
		b.WriteString(strconv.FormatInt(h, 10) + "h")
	}
	if m > 0 {
		b.WriteString(strconv.FormatInt(m, 10) + "m")
	}
	if s > 0 || b.Len() == 0 {
		b.WriteString(strconv.FormatInt(s, 10) + "s")
	}
	return b.String()
}

// Documentation of the annotations the manager writes or lets users add.
const (
	ingressNginxAnnotationsDoc = "https://kubernetes.github.io/ingress-nginx/user-guide/nginx-configuration/annotations/"
	nginxIncAnnotationsDoc     = "https://docs.nginx.com/nginx-ingress-controller/configuration/ingress-resources/advanced-configuration-with-annotations/"
)

// nginxAnnotation documents one annotation key the manager may write.
type nginxAnnotation struct {
	Key     string
	Dialect IngressDialect
	// Doc is where the key and the format of its value are documented.
	Doc string
	// Why the manager writes it, or what a user may use it for.
	Why string
	// user, when set, lets an InferenceModel carry the annotation, which is copied to both
	// Ingresses: it parses the value and returns it formatted again, or says what is wrong.
	user func(string) (string, error)
}

// nginxAnnotations is every annotation the manager ever writes on an Ingress; a test holds
// the builders to it. Nothing here is a snippet, and nothing user-settable takes free text.
var nginxAnnotations = []nginxAnnotation{
	// ingress-nginx: written by the manager.
	{Key: "nginx.ingress.kubernetes.io/proxy-buffering", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#proxy-buffering",
		Why: `"off": each SSE chunk reaches the client when the runtime sends it, not when a buffer fills`},
	{Key: "nginx.ingress.kubernetes.io/proxy-request-buffering", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#custom-timeouts",
		Why: `"off": request bodies stream to the runtime, which enforces its own size cap`},
	{Key: "nginx.ingress.kubernetes.io/proxy-read-timeout", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#custom-timeouts",
		Why: "seconds (unitless) nginx waits between two reads from the runtime: a stream must not be cut at the 60 s default"},
	{Key: "nginx.ingress.kubernetes.io/proxy-send-timeout", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#custom-timeouts",
		Why: "seconds (unitless) nginx waits between two writes to the runtime (long uploads, WebSocket messages)"},
	{Key: "nginx.ingress.kubernetes.io/proxy-body-size", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#custom-max-body-size",
		Why: "client_max_body_size: the runtime's body cap (8m), so prompts nginx's 1m default would refuse get through"},
	{Key: "nginx.ingress.kubernetes.io/ssl-redirect", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#server-side-https-enforcement-through-redirect",
		Why: `"true": plain HTTP is redirected to HTTPS (the controller's default, written so a ConfigMap cannot turn it off for models)`},
	{Key: "nginx.ingress.kubernetes.io/force-ssl-redirect", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#server-side-https-enforcement-through-redirect",
		Why: `"true": redirect to HTTPS even before the certificate's Secret exists`},
	{Key: "nginx.ingress.kubernetes.io/proxy-http-version", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#proxy-http-version",
		Why: `"1.1": chunked responses and the WebSocket upgrade need HTTP/1.1 to the runtime`},
	{Key: "nginx.ingress.kubernetes.io/limit-rps", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#rate-limiting",
		Why: "spec.endpoint.rateLimit.requestsPerSecond per client IP (burst 5x, the controller's default multiplier)"},
	{Key: "nginx.ingress.kubernetes.io/limit-connections", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#rate-limiting",
		Why: "spec.endpoint.rateLimit.connections: concurrent connections per client IP"},
	{Key: "nginx.ingress.kubernetes.io/backend-protocol", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#backend-protocol",
		Why: `"GRPC" on the gRPC Ingress: nginx speaks HTTP/2 cleartext (grpc_pass) to the runtime's gRPC port`},
	// ingress-nginx: users may add these to the InferenceModel.
	{Key: "nginx.ingress.kubernetes.io/allowlist-source-range", Dialect: DialectIngressNginx,
		Doc: ingressNginxAnnotationsDoc + "#allowlist-source-range",
		Why: "restrict the endpoint to client CIDRs; only narrows access", user: parseCIDRList},
	{Key: "nginx.ingress.kubernetes.io/whitelist-source-range", Dialect: DialectIngressNginx,
		Doc: ingressNginxAnnotationsDoc + "#whitelist-source-range",
		Why: "older name of allowlist-source-range, for controllers before the rename", user: parseCIDRList},
	{Key: "nginx.ingress.kubernetes.io/denylist-source-range", Dialect: DialectIngressNginx,
		Doc: ingressNginxAnnotationsDoc + "#denylist-source-range",
		Why: "refuse client CIDRs; only narrows access", user: parseCIDRList},
	{Key: "nginx.ingress.kubernetes.io/limit-burst-multiplier", Dialect: DialectIngressNginx, Doc: ingressNginxAnnotationsDoc + "#rate-limiting",
		Why: "burst allowed above limit-rps, as a multiple of it (1 to 100)", user: parseIntIn(1, 100)},

	// F5 NGINX Ingress Controller: written by the manager.
	{Key: "nginx.org/proxy-buffering", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#general-customization",
		Why: `"false": each SSE chunk reaches the client when the runtime sends it`},
	{Key: "nginx.org/proxy-read-timeout", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#general-customization",
		Why: "nginx time (\"600s\") between two reads from the runtime (also grpc_read_timeout): streams outlive the 60s default"},
	{Key: "nginx.org/proxy-send-timeout", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#general-customization",
		Why: "nginx time between two writes to the runtime (also grpc_send_timeout)"},
	{Key: "nginx.org/client-max-body-size", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#general-customization",
		Why: "client_max_body_size: the runtime's body cap (8m) instead of the 1m default"},
	{Key: "nginx.org/ssl-redirect", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#auth-and-ssltls",
		Why: `"true": plain HTTP is redirected to HTTPS when TLS is configured (redirect-to-https is for TLS ended in front of the controller, and trusts X-Forwarded-Proto)`},
	{Key: "nginx.org/websocket-services", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#backend-services-upstreams",
		Why: "the model's Service: F5's controller forwards the WebSocket upgrade of /v1/stream only for services listed here"},
	{Key: "nginx.org/grpc-services", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#backend-services-upstreams",
		Why: "the model's Service on the gRPC Ingress: grpc_pass over HTTP/2 (needs the controller's http2 ConfigMap key and TLS)"},
	{Key: "nginx.org/limit-req-rate", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#rate-limiting",
		Why: `spec.endpoint.rateLimit.requestsPerSecond as "<n>r/s", keyed on the client address (the default limit-req-key)`},
	{Key: "nginx.org/limit-req-burst", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#rate-limiting",
		Why: "5x the rate, the burst ingress-nginx allows by default"},
	{Key: "nginx.org/limit-req-no-delay", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#rate-limiting",
		Why: `"true": requests within the burst pass at once instead of being spaced out (as ingress-nginx does)`},
	// F5 NGINX Ingress Controller: users may add these to the InferenceModel.
	{Key: "nginx.org/policies", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#general-customization",
		Why: "apply Policy resources (access control, rate limits, auth) by [namespace/]name; policies hold no config text", user: parsePolicyList},
	{Key: "nginx.org/limit-req-reject-code", Dialect: DialectNginxInc, Doc: nginxIncAnnotationsDoc + "#rate-limiting",
		Why: "status code of rate-limited requests (400 to 599; the default is 429)", user: parseIntIn(400, 599)},
}

// documentedAnnotation returns the table entry of key for dialect.
func documentedAnnotation(dialect IngressDialect, key string) (nginxAnnotation, bool) {
	for _, a := range nginxAnnotations {
		if a.Key == key && a.Dialect == dialect {
			return a, true
		}
	}
	return nginxAnnotation{}, false
}

// controllerAnnotationPrefixes are the annotation prefixes the NGINX controllers read
// (nginx.com/ is F5's NGINX Plus-only set).
var controllerAnnotationPrefixes = map[string]IngressDialect{
	"nginx.ingress.kubernetes.io/": DialectIngressNginx,
	"nginx.org/":                   DialectNginxInc,
	"nginx.com/":                   DialectNginxInc,
}

// maxUserAnnotationValue bounds a user annotation value (a list of 64 CIDRs fits).
const maxUserAnnotationValue = 1024

// userControllerAnnotations checks the model's annotations that target an NGINX controller
// and returns the allowlisted ones, parsed and formatted again. Any other annotation aimed at
// the controller is refused, never dropped silently. Other annotations are not copied.
func userControllerAnnotations(annotations map[string]string, dialect IngressDialect) (map[string]string, error) {
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := map[string]string{}
	for _, key := range keys {
		target, aimed := annotationTarget(key)
		if !aimed {
			continue
		}
		field := "metadata.annotations[" + key + "]"
		name := strings.ToLower(key[strings.Index(key, "/")+1:])
		if strings.Contains(name, "snippet") {
			return nil, exposureErrorf(field, "annotation %s is not allowed: snippets can inject nginx configuration", key)
		}
		if target != dialect {
			return nil, exposureErrorf(field, "annotation %s is not allowed: it is read by the %s controller, but the manager writes annotations for %s", key, target, dialect)
		}
		doc, known := documentedAnnotation(dialect, key)
		switch {
		case known && doc.user == nil:
			return nil, exposureErrorf(field, "annotation %s is not allowed: HelixFlow sets it from spec.endpoint and the manager's settings", key)
		case !known:
			return nil, exposureErrorf(field, "annotation %s is not allowed on an InferenceModel: HelixFlow copies only %s (see docs/exposure.md)", key, strings.Join(userAllowlist(dialect), ", "))
		}
		value, err := checkUserAnnotationValue(annotations[key], doc.user)
		if err != nil {
			return nil, exposureErrorf(field, "annotation %s: %v", key, err)
		}
		out[key] = value
	}
	const allow, white = "nginx.ingress.kubernetes.io/allowlist-source-range", "nginx.ingress.kubernetes.io/whitelist-source-range"
	if _, a := out[allow]; a {
		if _, w := out[white]; w {
			return nil, exposureErrorf("metadata.annotations["+white+"]", "annotations %s and %s are the same setting (the second is its old name): set only one", allow, white)
		}
	}
	return out, nil
}

// annotationTarget says which controller reads key, and whether one does.
func annotationTarget(key string) (IngressDialect, bool) {
	lower := strings.ToLower(key)
	for prefix, d := range controllerAnnotationPrefixes {
		if strings.HasPrefix(lower, prefix) {
			return d, true
		}
	}
	return "", false
}

// userAllowlist lists the annotations users may set for dialect, sorted.
func userAllowlist(dialect IngressDialect) []string {
	var keys []string
	for _, a := range nginxAnnotations {
		if a.Dialect == dialect && a.user != nil {
			keys = append(keys, a.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

// checkUserAnnotationValue refuses what could change nginx's configuration syntax, then
// parses the value with parse, which formats it again.
func checkUserAnnotationValue(v string, parse func(string) (string, error)) (string, error) {
	if len(v) > maxUserAnnotationValue {
		return "", fmt.Errorf("value is %d bytes long, at most %d", len(v), maxUserAnnotationValue)
	}
	for _, r := range v {
		switch {
		case r < 0x20 || r == 0x7f:
			return "", errors.New("value must not contain newlines or other control characters")
		case r > 0x7e:
			return "", errors.New("value must be printable ASCII")
		case strings.ContainsRune("{};$\"'`\\#", r):
			return "", fmt.Errorf("value must not contain %q", r)
		}
	}
	return parse(v)
}

const maxListItems = 64

// parseCIDRList reads a comma-separated list of IP addresses and CIDRs, as ingress-nginx's
// source-range annotations take, and writes it back canonical (network addresses masked).
func parseCIDRList(v string) (string, error) {
	items := strings.Split(v, ",")
	if len(items) > maxListItems {
		return "", fmt.Errorf("value lists %d ranges, at most %d", len(items), maxListItems)
	}
	out := make([]string, 0, len(items))
	for _, item := range items {
		item = strings.TrimSpace(item)
		if strings.Contains(item, "/") {
			p, err := netip.ParsePrefix(item)
			if err != nil {
				return "", fmt.Errorf("%q is not a CIDR (want a comma-separated list such as 10.0.0.0/8,192.0.2.7)", item)
			}
			out = append(out, p.Masked().String())
			continue
		}
		addr, err := netip.ParseAddr(item)
		if err != nil || addr.Zone() != "" {
			return "", fmt.Errorf("%q is not an IP address or CIDR (want a comma-separated list such as 10.0.0.0/8,192.0.2.7)", item)
		}
		out = append(out, addr.String())
	}
	return strings.Join(out, ","), nil
}

var decimal = regexp.MustCompile(`^[0-9]{1,9}$`)

// parseIntIn reads a decimal integer between lo and hi.
func parseIntIn(lo, hi int) func(string) (string, error) {
	return func(v string) (string, error) {
		if !decimal.MatchString(v) {
			return "", fmt.Errorf("%q is not a number", v)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return "", fmt.Errorf("%s is out of range: want %d to %d", v, lo, hi)
		}
		return strconv.Itoa(n), nil
	}
}

// parsePolicyList reads F5's nginx.org/policies: a comma-separated list of [namespace/]name.
func parsePolicyList(v string) (string, error) {
	items := strings.Split(v, ",")
	if len(items) > maxListItems {
		return "", fmt.Errorf("value lists %d policies, at most %d", len(items), maxListItems)
	}
	out := make([]string, 0, len(items))
	for _, item := range items {
		item = strings.TrimSpace(item)
		ns, name, qualified := strings.Cut(item, "/")
		if !qualified {
			ns, name = "", item
		}
		bad := len(validation.IsDNS1123Subdomain(name)) > 0
		if qualified {
			bad = bad || len(validation.IsDNS1123Label(ns)) > 0
		}
		if bad {
			return "", fmt.Errorf("%q is not a Policy name or namespace/name", item)
		}
		out = append(out, item)
	}
	return strings.Join(out, ","), nil
}
