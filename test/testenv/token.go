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
// namespace/name with audience, valid for seconds (600 at least), creating the account when
// it does not exist: what the kubelet projects into a pod.
func ServiceAccountToken(ctx context.Context, c client.Client, namespace, name, audience string, seconds int64) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: &seconds}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		return "", fmt.Errorf("requesting a token of ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// ServiceAccountTokenFile writes such a token to a file in dir, as a projected volume holds
// it, and returns the file's path.
func ServiceAccountTokenFile(ctx context.Context, c client.Client, dir, namespace, name, audience string) (string, error) {
	token, err := ServiceAccountToken(ctx, c, namespace, name, audience, 3600)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, namespace+"-"+name+".token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		return "", err
	}
	return path, nil
}
