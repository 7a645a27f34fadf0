// Package scheme builds the runtime.Scheme shared by the manager, the runtime and tests:
// the built-in Kubernetes kinds plus HelixFlow's API.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// New returns a scheme with the client-go kinds and serving.helixflow.io/v1alpha1.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(servingv1alpha1.AddToScheme(s))
	return s
}
