package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

func exposedModel(ns string, mutate func(*servingv1alpha1.InferenceModel)) *servingv1alpha1.InferenceModel {
	return newModel(ns, "chat", "", 0, func(m *servingv1alpha1.InferenceModel) {
		m.Spec.Replicas = ptr.To[int32](1)
		m.Spec.Endpoint = &servingv1alpha1.EndpointSpec{
			Host: "chat.example.com",
			TLS:  &servingv1alpha1.EndpointTLS{IssuerRef: &servingv1alpha1.IssuerReference{Name: "letsencrypt", Kind: servingv1alpha1.IssuerKindClusterIssuer}},
		}
		if mutate != nil {
			mutate(m)
		}
	})
}

// playStatus retries a status write the way a controller would (conflicts with the manager's
// own writes are expected).
func playStatus(t *testing.T, what string, obj client.Object, set func()) {
	t.Helper()
	eventually(t, what, func() error {
		if err := get(obj, obj.GetNamespace(), obj.GetName()); err != nil {
			return err
		}
		set()
		return env.Client.Status().Update(context.Background(), obj)
	})
}

func gone(obj client.Object) func() error {
	return func() error {
		if err := get(obj, obj.GetNamespace(), obj.GetName()); !apierrors.IsNotFound(err) {
			return fmt.Errorf("%T %s still there (%w)", obj, obj.GetName(), err)
		}
		return nil
	}
}

func TestExposureIngressCertificateAndGateway(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	model := exposedModel(ns, nil)
	create(t, model)

	ing, grpcIng := &networkingv1.Ingress{}, &networkingv1.Ingress{}
	cert := &certmanagerv1.Certificate{}
	eventually(t, "Ingresses and Certificate", func() error {
		return errors.Join(get(ing, ns, "chat"), get(grpcIng, ns, "chat-grpc"), get(cert, ns, "chat"))
	})
	for _, o := range []client.Object{ing, grpcIng, cert} {
		if !metav1.IsControlledBy(o, model) && o.GetOwnerReferences() == nil {
			t.Errorf("%T %s has no controller reference", o, o.GetName())
		}
	}
	if cert.Spec.IssuerRef.Name != "letsencrypt" || len(cert.Spec.DNSNames) != 1 || cert.Spec.DNSNames[0] != "chat.example.com" {
		t.Errorf("certificate spec %+v", cert.Spec)
	}
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonIngressPending)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertificatePending)

	// The replicas are ready, but Ready waits for the edge.
	deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "chat"}}
	playStatus(t, "deployment status", deploy, func() {
		deploy.Status = appsv1.DeploymentStatus{ObservedGeneration: deploy.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	})
	waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonIngressPending)

	// The ingress controller admits it, cert-manager issues: Ready, at the public URL.
	playStatus(t, "ingress address", ing, func() {
		ing.Status.LoadBalancer.Ingress = []networkingv1.IngressLoadBalancerIngress{{IP: "203.0.113.7"}}
	})
	got := waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonIngressAdmitted)
	if got.Status.URL != "https://chat.example.com/v1" {
		t.Errorf("url %q", got.Status.URL)
	}
	setCertReady := func(status cmmeta.ConditionStatus, reason, msg string) {
		playStatus(t, "certificate "+reason, cert, func() {
			cert.Status.Conditions = []certmanagerv1.CertificateCondition{{Type: certmanagerv1.CertificateConditionReady, Status: status, Reason: reason, Message: msg}}
		})
	}
	setCertReady(cmmeta.ConditionTrue, "Ready", "Certificate is up to date and has not expired")
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionTrue, "Ready")
	waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady)

	// A failed renewal is mirrored with cert-manager's message and takes Ready away.
	setCertReady(cmmeta.ConditionFalse, "Failed", "renewal failed: ACME order rejected")
	got = waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionFalse, "Failed")
	if c := meta.FindStatusCondition(got.Status.Conditions, servingv1alpha1.InferenceModelConditionTLSReady); c == nil || c.Message != "Certificate chat: renewal failed: ACME order rejected" {
		t.Errorf("TLSReady message %+v", c)
	}
	waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionFalse, "Failed")

	// A new host moves the Ingresses, the certificate and the URL with it.
	patchModel(t, ns, "chat", func(m *servingv1alpha1.InferenceModel) { m.Spec.Endpoint.Host = "chat2.example.com" })
	eventually(t, "host moved", func() error {
		if err := errors.Join(get(ing, ns, "chat"), get(grpcIng, ns, "chat-grpc"), get(cert, ns, "chat")); err != nil {
			return err
		}
		if ing.Spec.Rules[0].Host != "chat2.example.com" || grpcIng.Spec.Rules[0].Host != "chat2.example.com" ||
			ing.Spec.TLS[0].Hosts[0] != "chat2.example.com" || cert.Spec.DNSNames[0] != "chat2.example.com" {
			return fmt.Errorf("hosts %s, %s, tls %v, dns %v", ing.Spec.Rules[0].Host, grpcIng.Spec.Rules[0].Host, ing.Spec.TLS, cert.Spec.DNSNames)
		}
		return nil
	})
	got = waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonIngressAdmitted)
	if got.Status.URL != "https://chat2.example.com/v1" {
		t.Errorf("url after the host change %q", got.Status.URL)
	}

	// Switching to a Gateway moves everything: routes instead of Ingresses.
	patchModel(t, ns, "chat", func(m *servingv1alpha1.InferenceModel) {
		m.Spec.Endpoint.GatewayRef = &servingv1alpha1.GatewayReference{Name: "edge", Namespace: "infra"}
	})
	route, grpcRoute := &gatewayv1.HTTPRoute{}, &gatewayv1.GRPCRoute{}
	eventually(t, "routes", func() error { return errors.Join(get(route, ns, "chat"), get(grpcRoute, ns, "chat-grpc")) })
	eventually(t, "Ingresses removed", func() error { return errors.Join(gone(ing)(), gone(grpcIng)()) })
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonRoutePending)
	playStatus(t, "route accepted", route, func() {
		route.Status.Parents = []gatewayv1.RouteParentStatus{{
			ParentRef:      gatewayv1.ParentReference{Name: "edge", Namespace: ptr.To(gatewayv1.Namespace("infra"))},
			ControllerName: "example.com/gateway-controller",
			Conditions:     []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: metav1.Now(), ObservedGeneration: route.Generation}},
		}}
	})
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonRouteAccepted)

	// Removing the endpoint removes what it created, and its conditions.
	patchModel(t, ns, "chat", func(m *servingv1alpha1.InferenceModel) { m.Spec.Endpoint = nil })
	eventually(t, "exposure removed", func() error { return errors.Join(gone(route)(), gone(grpcRoute)(), gone(cert)()) })
	eventually(t, "exposure conditions removed", func() error {
		m := &servingv1alpha1.InferenceModel{}
		if err := get(m, ns, "chat"); err != nil {
			return err
		}
		if meta.FindStatusCondition(m.Status.Conditions, servingv1alpha1.InferenceModelConditionExposed) != nil || meta.FindStatusCondition(m.Status.Conditions, servingv1alpha1.InferenceModelConditionTLSReady) != nil {
			return fmt.Errorf("conditions %v", m.Status.Conditions)
		}
		if m.Status.URL != "http://chat."+ns+".svc.cluster.local:8080/v1" {
			return fmt.Errorf("url %q", m.Status.URL)
		}
		return nil
	})
}

func TestExposureRefusesHostileAnnotations(t *testing.T) {
	startManager(t)
	ns := newNamespace(t, nil)
	model := exposedModel(ns, func(m *servingv1alpha1.InferenceModel) {
		m.Annotations = map[string]string{"nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";"}
	})
	create(t, model)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonInvalidEndpoint)
	if err := get(&networkingv1.Ingress{}, ns, "chat"); !apierrors.IsNotFound(err) {
		t.Errorf("an Ingress was written for a hostile spec: %v", err)
	}
}

// Without cert-manager's CRDs the manager runs, says so on the model, and picks them up
// once installed, without a restart.
func TestExposureWithoutCertManager(t *testing.T) {
	ctx := context.Background()
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "certificates.cert-manager.io"}, crd); err != nil {
		t.Fatal(err)
	}
	saved := crd.DeepCopy()
	if err := env.Client.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	eventually(t, "CRD deleted", gone(crd))
	reinstall := func() {
		again := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: saved.Name, Labels: saved.Labels, Annotations: saved.Annotations}, Spec: saved.Spec}
		if err := env.Client.Create(ctx, again); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(reinstall)
	defer func(d time.Duration) { optionalKindRecheck = d }(optionalKindRecheck)
	optionalKindRecheck = time.Second

	startManager(t)
	ns := newNamespace(t, nil)
	model := exposedModel(ns, nil)
	create(t, model)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertManagerNotInstalled)
	// The rest of the exposure goes on.
	eventually(t, "Ingress without cert-manager", func() error { return get(&networkingv1.Ingress{}, ns, "chat") })

	reinstall()
	cert := &certmanagerv1.Certificate{}
	eventually(t, "Certificate once cert-manager is installed", func() error { return get(cert, ns, "chat") })
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonCertificatePending)
	// And its status is watched from then on.
	playStatus(t, "certificate ready", cert, func() {
		cert.Status.Conditions = []certmanagerv1.CertificateCondition{{Type: certmanagerv1.CertificateConditionReady, Status: cmmeta.ConditionTrue, Reason: "Ready", Message: "ok"}}
	})
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionTrue, "Ready")
}

func patchModel(t *testing.T, ns, name string, mutate func(*servingv1alpha1.InferenceModel)) {
	t.Helper()
	patchObject(t, &servingv1alpha1.InferenceModel{}, ns, name, mutate)
}
