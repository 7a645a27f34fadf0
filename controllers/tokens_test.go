package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/manager"
	"github.com/helixflow/helixflow/test/testenv"
)

// syncBuffer is a log sink the manager's goroutines write to concurrently.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
}

// exchange posts a key to the token service and returns the status and answer.
func exchange(t *testing.T, base, key string) (int, tokenAnswer, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/tokens", strings.NewReader(`{"expires_in": 300}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	var ans tokenAnswer
	_ = json.Unmarshal(body, &ans)
	return resp.StatusCode, ans, string(body)
}

// runtimeAuthenticator is what a runtime in ns would run: an authenticator fed by informers
// on the namespace's ApiKeys and JWKS ConfigMap.
func runtimeAuthenticator(t *testing.T, ns string) *auth.Authenticator {
	t.Helper()
	a, err := auth.NewAuthenticator(ns, servingv1alpha1.AuthModeAPIKeyOrJWT)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src, err := auth.StartSources(ctx, env.Config, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestTokenExchangeAndNoKeyLeak runs a key's whole life (generation, token exchange,
// verification by a runtime's authenticator, rotation, suspension, a deleted Secret,
// deletion) with the manager logging at its most verbose, then searches its logs, the
// Events, the ApiKey's status and the metrics for every key that existed.
func TestTokenExchangeAndNoKeyLeak(t *testing.T) {
	managerNamespace(t)
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr
	cfg := apiKeyTestConfig(time.Minute)
	cfg.TokenServiceBindAddress = addr
	logs := &syncBuffer{}
	startManagerWith(t, cfg, func(o *manager.Options) {
		o.Logger = zap.New(zap.WriteTo(logs), zap.Level(zapcore.Level(zapLevelAll)))
	})
	ctx := context.Background()
	ns := newNamespace(t, nil)
	if err := env.Client.Create(ctx, simpleModel(ns, "m")); err != nil {
		t.Fatal(err)
	}
	createApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.Scopes = []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeIssueTokens}
		ak.Spec.Quota = &servingv1alpha1.TokenQuota{Tokens: 1000}
	})
	waitApiKey(t, ns, "app", readyIs(metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive))
	keys := []string{secretKey(t, ns, "app-apikey")}
	eventually(t, "token service up", func() error { return testenv.WaitHTTP200(ctx, base+"/.well-known/jwks.json", time.Second) })

	// The key buys a token, which a runtime of the namespace accepts without any lookup of
	// the manager.
	code, tok, body := exchange(t, base, keys[0])
	if code != http.StatusOK || tok.TokenType != "Bearer" || tok.ExpiresIn != 300 || tok.AccessToken == "" {
		t.Fatalf("token exchange: %d %s", code, body)
	}
	runtime := runtimeAuthenticator(t, ns)
	var p *auth.Principal
	eventually(t, "runtime accepts the token", func() error {
		var err error
		p, err = runtime.Authenticate("Bearer " + tok.AccessToken)
		return err
	})
	if p.Method != auth.MethodJWT || p.Name != "app" || p.HasScope(servingv1alpha1.ScopeIssueTokens) {
		t.Errorf("token principal %+v", p)
	}
	if _, err := runtimeAuthenticator(t, newNamespace(t, nil)).Authenticate("Bearer " + tok.AccessToken); err == nil {
		t.Error("a runtime of another namespace accepted the token")
	}

	// Rotation: both keys buy tokens during the grace period.
	patchApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) {
		ak.Annotations = map[string]string{servingv1alpha1.AnnotationRotate: "1"}
	})
	waitApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) error {
		if len(ak.Status.PreviousKeys) != 1 {
			return fmt.Errorf("not rotated: %v", ak.Status.PreviousKeys)
		}
		return nil
	})
	keys = append(keys, secretKey(t, ns, "app-apikey"))
	for _, k := range keys {
		eventually(t, "token for a key in grace", func() error {
			if code, _, body := exchange(t, base, k); code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
	}

	// Suspended: no more tokens, and the runtime refuses the token already issued.
	patchApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Suspend = ptr.To(true) })
	eventually(t, "suspended key refused", func() error {
		if code, _, body := exchange(t, base, keys[1]); code != http.StatusUnauthorized {
			return fmt.Errorf("%d %s", code, body)
		}
		if _, err := runtime.Authenticate("Bearer " + tok.AccessToken); err == nil {
			return fmt.Errorf("runtime still accepts the token of a suspended key")
		}
		return nil
	})
	patchApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Suspend = ptr.To(false) })
	if err := env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app-apikey"}}); err != nil {
		t.Fatal(err)
	}
	waitApiKey(t, ns, "app", func(ak *servingv1alpha1.ApiKey) error {
		if ak.Status.KeyHash == auth.HashKey(keys[1]).String() {
			return fmt.Errorf("not regenerated")
		}
		return nil
	})
	keys = append(keys, secretKey(t, ns, "app-apikey"))
	final := &servingv1alpha1.ApiKey{}
	if err := get(final, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, final); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted key refused", func() error {
		if code, _, _ := exchange(t, base, keys[2]); code != http.StatusUnauthorized {
			return fmt.Errorf("token service answered %d for a deleted key", code)
		}
		return nil
	})

	assertNoKeyIn(t, keys, map[string]string{
		"manager logs":   logs.String(),
		"events":         eventsText(t, ns),
		"ApiKey status":  jsonText(t, final.Status),
		"manager metric": metricsText(t),
	})
	if !strings.Contains(logs.String(), "token service listening") {
		t.Error("the log capture saw nothing of the manager: the search would prove nothing")
	}
}

// zapLevelAll makes zap log every V-level the manager uses.
const zapLevelAll = -10

func assertNoKeyIn(t *testing.T, keys []string, texts map[string]string) {
	t.Helper()
	for where, text := range texts {
		if text == "" {
			t.Errorf("%s: nothing captured", where)
		}
		for _, k := range keys {
			keyID, _ := auth.KeyIDOf(k)
			secret := strings.TrimPrefix(k, auth.KeyPrefix+keyID+"_")
			if strings.Contains(text, k) || strings.Contains(text, secret) {
				t.Errorf("%s contain the plaintext key %s", where, keyID)
			}
		}
	}
}

func eventsText(t *testing.T, ns string) string {
	t.Helper()
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return jsonText(t, list.Items)
}

func jsonText(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func metricsText(t *testing.T) string {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, f := range families {
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.String()
}
