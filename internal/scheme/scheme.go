// Package scheme builds the runtime.Scheme shared by the manager, the runtime and tests:
// the built-in Kubernetes kinds, HelixFlow's API, and cert-manager's and Gateway API's kinds.
package scheme

import (
	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// New returns a scheme with the client-go kinds, serving.helixflow.io/v1alpha1, cert-manager.io/v1
// and gateway.networking.k8s.io/v1.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(servingv1alpha1.AddToScheme(s))
	// The kinds exposure writes; their CRDs may be missing from a cluster (see controllers).
	utilruntime.Must(certmanagerv1.AddToScheme(s))
	utilruntime.Must(gatewayv1.Install(s))
	return s
}
