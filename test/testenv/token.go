package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ServiceAccountToken asks the API server (TokenRequest) for a token of ServiceAccount
// namespace/name with audience, valid for seconds (600 at least), bound to a pod of that
// account: what the kubelet projects into a pod. The account is created when it does not
// exist, and the pod (named "runtime-" and a random suffix; nothing runs it) for the token.
// It returns the token and the pod's name.
func ServiceAccountToken(ctx context.Context, c client.Client, namespace, name, audience string, seconds int64) (token, pod string, err error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", "", fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, GenerateName: "runtime-"},
		Spec:       corev1.PodSpec{ServiceAccountName: name, Containers: []corev1.Container{{Name: "runtime", Image: "runtime"}}},
	}
	if err := c.Create(ctx, p); err != nil {
		return "", "", fmt.Errorf("creating a pod for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	token, err = PodToken(ctx, c, namespace, p.Name, audience, seconds)
	return token, p.Name, err
}

// PodToken asks for another token of the ServiceAccount of pod namespace/pod, bound to the
// pod, as the kubelet does before the last one expires.
func PodToken(ctx context.Context, c client.Client, namespace, pod, audience string, seconds int64) (string, error) {
	p := &corev1.Pod{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: pod}, p); err != nil {
		return "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: p.Spec.ServiceAccountName}}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: &seconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		return "", fmt.Errorf("requesting a token of ServiceAccount %s/%s for pod %s: %w", namespace, sa.Name, pod, err)
	}
	return tr.Status.Token, nil
}

// ServiceAccountTokenFile writes such a token to a file in dir, as a projected volume holds
// it, and returns the file's path and the pod's name.
func ServiceAccountTokenFile(ctx context.Context, c client.Client, dir, namespace, name, audience string) (path, pod string, err error) {
	token, pod, err := ServiceAccountToken(ctx, c, namespace, name, audience, 3600)
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, pod+".token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		return "", "", err
	}
	return path, pod, nil
}
