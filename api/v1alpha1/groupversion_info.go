// Package v1alpha1 contains the HelixFlow serving API: GPUPool, GPUNode, InferenceModel and
// ApiKey in the serving.helixflow.io group.
//
// This package holds types only. It imports apimachinery and core API types and nothing from
// controller-runtime, so clients can vendor it cheaply.
//
// +kubebuilder:object:generate=true
// +groupName=serving.helixflow.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "serving.helixflow.io", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the kinds of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion,
		&GPUPool{}, &GPUPoolList{},
		&GPUNode{}, &GPUNodeList{},
		&InferenceModel{}, &InferenceModelList{},
		&ApiKey{}, &ApiKeyList{},
	)
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
