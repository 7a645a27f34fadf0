package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes;grpcroutes,verbs=get;list;watch;create;update;patch;delete

// optionalKindRecheck is how often a model waits for CRDs that are not installed (cert-manager,
// Gateway API) before looking again: they are picked up without a manager restart.
var optionalKindRecheck = time.Minute

// exposure is what reconciling spec.endpoint found: the Exposed and TLSReady conditions
// (nil without an endpoint), the public URL once exposed, and when to look again.
type exposure struct {
	exposed, tls *metav1.Condition
	url          string
	requeue      time.Duration
}

// ready reports whether exposure lets the model be Ready: no endpoint, or exposed with TLS.
func (e exposure) ready() (bool, *metav1.Condition) {
	for _, c := range []*metav1.Condition{e.exposed, e.tls} {
		if c != nil && c.Status != metav1.ConditionTrue {
			return false, c
		}
	}
	return true, nil
}

// optionalKinds watches kinds whose CRDs may be missing when the manager starts; a watch is
// added the first time the kind is found installed.
type optionalKinds struct {
	ctrl    controller.Controller
	cache   cache.Cache
	mapper  meta.RESTMapper
	handler handler.EventHandler
	mu      sync.Mutex
	watched map[schema.GroupKind]bool
}

// installed reports whether the API server serves obj's kind, and makes sure it is watched.
func (o *optionalKinds) installed(obj client.Object, gk schema.GroupKind, version string) (bool, error) {
	if _, err := o.mapper.RESTMapping(gk, version); err != nil {
		if meta.IsNoMatchError(err) {
			return false, nil
		}
		return false, fmt.Errorf("discovering %s: %w", gk, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.watched[gk] || o.ctrl == nil {
		return true, nil
	}
	if err := o.ctrl.Watch(source.Kind(o.cache, obj, o.handler)); err != nil {
		return true, fmt.Errorf("watching %s: %w", gk, err)
	}
	o.watched[gk] = true
	return true, nil
}

// watchInstalled watches each optional kind whose CRD is installed now.
func (o *optionalKinds) watchInstalled() error {
	for _, obj := range []client.Object{&certmanagerv1.Certificate{}, &gatewayv1.HTTPRoute{}, &gatewayv1.GRPCRoute{}} {
		gk, version, _ := optionalGK(obj)
		if _, err := o.installed(obj, gk, version); err != nil {
			return err
		}
	}
	return nil
}

var (
	certificateGK = schema.GroupKind{Group: certmanagerv1.SchemeGroupVersion.Group, Kind: "Certificate"}
	httpRouteGK   = schema.GroupKind{Group: gatewayv1.GroupName, Kind: "HTTPRoute"}
	grpcRouteGK   = schema.GroupKind{Group: gatewayv1.GroupName, Kind: "GRPCRoute"}
)

// exposureCandidates are every object exposure may create, with the names it gives them, so that
// what is no longer desired (endpoint removed, Ingress switched to Gateway) is found and
// deleted.
func exposureCandidates(m *servingv1alpha1.InferenceModel) []client.Object {
	om := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Namespace: m.Namespace, Name: name} }
	return []client.Object{
		&networkingv1.Ingress{ObjectMeta: om(ingressName(m))},
		&networkingv1.Ingress{ObjectMeta: om(grpcIngressName(m))},
		&gatewayv1.HTTPRoute{ObjectMeta: om(httpRouteName(m))},
		&gatewayv1.GRPCRoute{ObjectMeta: om(grpcRouteName(m))},
		&certmanagerv1.Certificate{ObjectMeta: om(certificateName(m))},
	}
}

// optionalGK is the group-kind of obj when its CRD may be missing.
func optionalGK(obj client.Object) (schema.GroupKind, string, bool) {
	switch obj.(type) {
	case *certmanagerv1.Certificate:
		return certificateGK, certmanagerv1.SchemeGroupVersion.Version, true
	case *gatewayv1.HTTPRoute:
		return httpRouteGK, gatewayv1.GroupVersion.Version, true
	case *gatewayv1.GRPCRoute:
		return grpcRouteGK, gatewayv1.GroupVersion.Version, true
	}
	return schema.GroupKind{}, "", false
}

// reconcileExposure applies what spec.endpoint asks for (Ingresses or routes, and the
// Certificate), deletes what it no longer asks for, and reads their state into conditions.
func (r *InferenceModelReconciler) reconcileExposure(ctx context.Context, m *servingv1alpha1.InferenceModel) (exposure, error) {
	desired, buildErr := ExposureObjects(m, r.Config.Exposure)
	if buildErr != nil {
		// Nothing is written for a spec that cannot be exposed safely; what exists stays.
		return exposure{
			exposed: exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonInvalidEndpoint, buildErr.Error()),
			tls:     tlsCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonInvalidEndpoint, buildErr.Error()),
		}, nil
	}
	var ex exposure
	missing := map[schema.GroupKind]bool{}
	keep := map[string]bool{}
	for _, obj := range desired {
		if gk, version, optional := optionalGK(obj); optional {
			ok, err := r.optional.installed(obj, gk, version)
			if err != nil {
				return ex, err
			}
			if !ok {
				missing[gk] = true
				continue
			}
		}
		if err := r.writer().applyOwned(ctx, m, obj); err != nil {
			return ex, err
		}
		keep[objectKey(obj)] = true
	}
	if err := r.pruneExposure(ctx, m, keep); err != nil {
		return ex, err
	}
	if m.Spec.Endpoint == nil {
		return ex, nil
	}
	ex = exposureConditions(m, desired, missing, exposureIssuer(m, r.Config.Exposure) != nil)
	if len(missing) > 0 {
		ex.requeue = optionalKindRecheck
	}
	return ex, nil
}

func objectKey(obj client.Object) string {
	return fmt.Sprintf("%T/%s", obj, obj.GetName())
}

// pruneExposure deletes exposure objects of m that are not in keep.
func (r *InferenceModelReconciler) pruneExposure(ctx context.Context, m *servingv1alpha1.InferenceModel, keep map[string]bool) error {
	for _, obj := range exposureCandidates(m) {
		if keep[objectKey(obj)] {
			continue
		}
		if gk, version, optional := optionalGK(obj); optional {
			if ok, err := r.optional.installed(obj, gk, version); err != nil || !ok {
				continue // nothing of a kind that is not installed can exist
			}
		}
		err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("getting %T %s: %w", obj, obj.GetName(), err)
		case !metav1.IsControlledBy(obj, m):
			continue
		}
		if err := r.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting %T %s: %w", obj, obj.GetName(), err)
		}
	}
	return nil
}

// exposureConditions is pure: Exposed and TLSReady from the applied objects (as the server
// returned them, status included).
func exposureConditions(m *servingv1alpha1.InferenceModel, applied []client.Object, missing map[schema.GroupKind]bool, hasIssuer bool) exposure {
	ep := m.Spec.Endpoint
	var ex exposure
	switch {
	case ep.GatewayRef != nil && (missing[httpRouteGK] || missing[grpcRouteGK]):
		ex.exposed = exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonGatewayAPINotInstalled,
			"spec.endpoint.gatewayRef is set but the Gateway API CRDs (HTTPRoute, GRPCRoute) are not installed")
	case ep.GatewayRef != nil:
		ex.exposed = routeCondition(m, applied)
	default:
		ex.exposed = ingressCondition(m, applied)
	}
	switch {
	case !hasIssuer:
		ex.tls = tlsCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonNoIssuer,
			"no certificate issuer: set spec.endpoint.tls.issuerRef or the manager's --default-issuer")
	case missing[certificateGK]:
		ex.tls = tlsCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertManagerNotInstalled,
			"cert-manager's CRDs are not installed: install cert-manager; the model is picked up without a restart")
	default:
		ex.tls = certificateCondition(m, applied)
	}
	if ex.exposed.Status == metav1.ConditionTrue {
		ex.url = exposureURL(m)
	}
	return ex
}

// exposedCond and tlsCond build the two conditions exposure reports on m.
func exposedCond(m *servingv1alpha1.InferenceModel, status metav1.ConditionStatus, reason, msg string) *metav1.Condition {
	return modelCondition(m, servingv1alpha1.InferenceModelConditionExposed, status, reason, msg)
}

func tlsCond(m *servingv1alpha1.InferenceModel, status metav1.ConditionStatus, reason, msg string) *metav1.Condition {
	return modelCondition(m, servingv1alpha1.InferenceModelConditionTLSReady, status, reason, msg)
}

func modelCondition(m *servingv1alpha1.InferenceModel, typ string, status metav1.ConditionStatus, reason, msg string) *metav1.Condition {
	return &metav1.Condition{Type: typ, Status: status, Reason: reason, Message: truncate(msg, 32768), ObservedGeneration: m.Generation}
}

// ingressCondition: the Ingress is admitted once its controller publishes an address.
func ingressCondition(m *servingv1alpha1.InferenceModel, applied []client.Object) *metav1.Condition {
	for _, obj := range applied {
		ing, ok := obj.(*networkingv1.Ingress)
		if !ok || ing.Name != ingressName(m) {
			continue
		}
		var addrs []string
		for _, lb := range ing.Status.LoadBalancer.Ingress {
			addrs = append(addrs, lb.IP+lb.Hostname)
		}
		if len(addrs) > 0 {
			return exposedCond(m, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonIngressAdmitted,
				fmt.Sprintf("Ingress %s admitted at %s", ing.Name, strings.Join(addrs, ", ")))
		}
		class := ""
		if ing.Spec.IngressClassName != nil {
			class = *ing.Spec.IngressClassName
		}
		return exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonIngressPending,
			fmt.Sprintf("Ingress %s has no address yet: is an Ingress controller of class %q running?", ing.Name, class))
	}
	return exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonIngressPending, "no Ingress")
}

// routeCondition reads the HTTPRoute's Accepted condition from its parent (the Gateway).
func routeCondition(m *servingv1alpha1.InferenceModel, applied []client.Object) *metav1.Condition {
	for _, obj := range applied {
		route, ok := obj.(*gatewayv1.HTTPRoute)
		if !ok {
			continue
		}
		for _, p := range route.Status.Parents {
			if string(p.ParentRef.Name) != m.Spec.Endpoint.GatewayRef.Name {
				continue
			}
			if c := meta.FindStatusCondition(p.Conditions, string(gatewayv1.RouteConditionAccepted)); c != nil {
				if c.Status == metav1.ConditionTrue {
					return exposedCond(m, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonRouteAccepted,
						fmt.Sprintf("HTTPRoute %s accepted by Gateway %s", route.Name, p.ParentRef.Name))
				}
				return exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonRouteNotAccepted,
					fmt.Sprintf("Gateway %s did not accept HTTPRoute %s: %s: %s", p.ParentRef.Name, route.Name, c.Reason, c.Message))
			}
		}
		return exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonRoutePending,
			fmt.Sprintf("Gateway %s has not processed HTTPRoute %s yet", m.Spec.Endpoint.GatewayRef.Name, route.Name))
	}
	return exposedCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonRoutePending, "no HTTPRoute")
}

// certificateCondition mirrors the Certificate's Ready condition, reason and message.
func certificateCondition(m *servingv1alpha1.InferenceModel, applied []client.Object) *metav1.Condition {
	for _, obj := range applied {
		cert, ok := obj.(*certmanagerv1.Certificate)
		if !ok {
			continue
		}
		for _, c := range cert.Status.Conditions {
			if c.Type != certmanagerv1.CertificateConditionReady {
				continue
			}
			return tlsCond(m, metav1.ConditionStatus(c.Status), nonEmpty(c.Reason, "CertificateNotReady"),
				fmt.Sprintf("Certificate %s: %s", cert.Name, c.Message))
		}
		return tlsCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertificatePending,
			fmt.Sprintf("Certificate %s not processed by cert-manager yet", cert.Name))
	}
	return tlsCond(m, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertificatePending, "no Certificate")
}

func nonEmpty(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}
