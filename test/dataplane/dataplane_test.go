// Package dataplane_test runs the data path for real: the manager (ApiKey controller, JWKS,
// usage aggregator) and `runtime serve` against a real API server, the runtime in front of
// the test engine (a test double of an OpenAI-compatible engine), and real clients: the
// official openai npm SDK, in Node and in a web page in a real browser (headless chromium).
package dataplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/controllers"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/manager"
	"github.com/helixflow/helixflow/internal/runtime/serve"
	"github.com/helixflow/helixflow/internal/usage"
	"github.com/helixflow/helixflow/test/clients"
	"github.com/helixflow/helixflow/test/testengine"
	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	os.Exit(testenv.Run(m, &env))
}

// cluster is a manager, a namespace with an InferenceModel, and a runtime serving it.
type cluster struct {
	t           *testing.T
	ns          string
	runtimeURL  string
	stopRuntime func()
	stopManager func()
	engine      *testengine.Engine
	engineURL   string
	cfg         controllers.Config
	// usageToken is the file with the runtime's ServiceAccount token for the aggregator, and
	// usageCA that with the aggregator's CA certificate the manager publishes in the
	// namespace, as the kubelet projects them into a model pod.
	usageToken, usageCA string
}

// eventually polls cond for up to 30 seconds; the last error explains a failure.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = cond()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", what, last)
	}
}

// startManager runs the manager's controllers in-process until the test ends.
func startManager(t *testing.T, cfg controllers.Config) (stop func()) {
	t.Helper()
	opts := manager.DefaultOptions()
	opts.MetricsBindAddress, opts.HealthProbeBindAddress = "0", "0"
	opts.Namespace = cfg.Namespace
	opts.SkipControllerNameValidation = true
	opts.Setup = []func(ctrl.Manager) error{func(mgr ctrl.Manager) error { return controllers.Setup(mgr, cfg) }}
	return background(t, "manager", func(ctx context.Context) error { return manager.Run(ctx, env.Config, opts) })
}

// background runs run until the returned stop (or the end of the test) cancels it, and
// reports its error.
func background(t *testing.T, what string, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", what, err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startRuntime runs `runtime serve` for model in ns in front of engineURL until the test ends.
func startRuntime(t *testing.T, ns, model, engineURL string, tune func(*serve.Options)) (url string, stop func()) {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	opts := serve.DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream, opts.Kube = model, ns, engineURL, env.Config
	opts.HTTPAddress, opts.GRPCAddress, opts.MetricsAddress = addr, "0", "0"
	if tune != nil {
		tune(&opts)
	}
	s, err := serve.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	stop = background(t, "runtime", s.Run)
	url = "http://" + addr
	if err := testenv.WaitHTTP200(context.Background(), url+"/readyz", 30*time.Second); err != nil {
		t.Fatalf("runtime not ready: %v", err)
	}
	return url, stop
}

func newCluster(t *testing.T, engineCfg testengine.Config) *cluster {
	t.Helper()
	ctx := context.Background()
	cfg := controllers.DefaultConfig()
	cfg.Namespace = "helixflow-system"
	cfg.TokenServiceBindAddress = "0"
	usageAddr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg.UsageBindAddress = usageAddr
	_ = env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cfg.Namespace}})
	stopManager := startManager(t, cfg)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "dp-"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	model := &servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "chat"},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model:    servingv1alpha1.ModelSource{URI: "hf://org/chat", Name: testengine.DefaultModel},
			Engine:   servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineVLLM},
			Replicas: ptr.To[int32](0),
		},
	}
	if err := env.Client.Create(ctx, model); err != nil {
		t.Fatal(err)
	}
	engine, engineURL := testengine.NewTestServer(t, engineCfg)
	// The reconciler creates the model's ServiceAccount too; whichever comes first, it is one.
	// The token is bound to a pod object (nothing runs it) that the runtime plays.
	usageToken, pod, err := testenv.ServiceAccountTokenFile(ctx, env.Client, t.TempDir(), ns.Name, model.Name, usage.TokenAudience)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("POD_NAME", pod)
	c := &cluster{t: t, ns: ns.Name, engine: engine, engineURL: engineURL, cfg: cfg, stopManager: stopManager,
		usageToken: usageToken, usageCA: publishedUsageCA(t, ns.Name)}
	c.startRuntime()
	return c
}

// startRuntime starts (or restarts) the runtime, reporting usage to the manager.
func (c *cluster) startRuntime() {
	c.runtimeURL, c.stopRuntime = startRuntime(c.t, c.ns, "chat", c.engineURL, func(o *serve.Options) {
		o.UsageEndpoint, o.UsageTokenFile = c.cfg.UsageBindAddress, c.usageToken
		// The runtime dials the local port and verifies the name model pods dial.
		host, _, err := net.SplitHostPort(c.cfg.UsageEndpoint)
		if err != nil {
			c.t.Fatal(err)
		}
		o.UsageCAFile, o.UsageServerName = c.usageCA, host
	})
}

// publishedUsageCA waits for the manager to publish its usage CA in ns and writes the
// certificate to a file.
func publishedUsageCA(t *testing.T, ns string) string {
	t.Helper()
	var ca string
	eventually(t, "the usage CA published in "+ns, func() error {
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: auth.JWKSConfigMapName}, cm); err != nil {
			return err
		}
		if ca = cm.Data[usage.CAConfigMapKey]; ca == "" {
			return fmt.Errorf("no %s in ConfigMap %s", usage.CAConfigMapKey, auth.JWKSConfigMapName)
		}
		return nil
	})
	file := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(file, []byte(ca), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// apiKey creates an ApiKey, waits until it is Ready and returns its generated key.
func (c *cluster) apiKey(name string, mutate func(*servingv1alpha1.ApiKey)) string {
	c.t.Helper()
	ak := &servingv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: name}}
	if mutate != nil {
		mutate(ak)
	}
	if err := env.Client.Create(context.Background(), ak); err != nil {
		c.t.Fatal(err)
	}
	eventually(c.t, "ApiKey "+name+" Ready", func() error {
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(ak), ak); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(ak.Status.Conditions, servingv1alpha1.ConditionReady) {
			return fmt.Errorf("conditions %v", ak.Status.Conditions)
		}
		return nil
	})
	sec := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: c.ns, Name: ak.DefaultSecretName()}, sec); err != nil {
		c.t.Fatal(err)
	}
	return string(sec.Data[controllers.APIKeySecretDataKey])
}

type sdkError struct {
	Class  string `json:"class"`
	Status int    `json:"status"`
	Code   string `json:"code"`
}

type sdkResult struct {
	Models    []string `json:"models"`
	Retrieved string   `json:"retrieved"`
	Chat      struct {
		Content string      `json:"content"`
		Usage   serve.Usage `json:"usage"`
	} `json:"chat"`
	Stream struct {
		Content      string `json:"content"`
		Chunks       int    `json:"chunks"`
		SawUsage     bool   `json:"sawUsage"`
		FinishReason string `json:"finishReason"`
	} `json:"stream"`
	NotFound        *sdkError `json:"notFound"`
	Unauthenticated *sdkError `json:"unauthenticated"`
	Forbidden       *sdkError `json:"forbidden"`
	RateLimited     *sdkError `json:"rateLimited"`
}

// TestOpenAINodeSDK drives runtime serve with the official openai npm SDK: list and retrieve
// models, a chat completion, a streamed chat completion assembled from chunks, and the SDK's
// own error classes for 401, 403, 404 and 429.
func TestOpenAINodeSDK(t *testing.T) {
	c := newCluster(t, testengine.Config{ChunkInterval: 5 * time.Millisecond})
	key := c.apiKey("app", nil)
	narrow := c.apiKey("narrow", func(ak *servingv1alpha1.ApiKey) { ak.Spec.Models = []string{"another-model"} })
	limited := c.apiKey("limited", func(ak *servingv1alpha1.ApiKey) {
		ak.Spec.RateLimit = &servingv1alpha1.KeyRateLimit{RequestsPerMinute: 1}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := clients.NodeCommand(ctx, t, "runtime.mjs")
	cmd.Env = append(os.Environ(), "OPENAI_BASE_URL="+c.runtimeURL+"/v1", "MODEL="+testengine.DefaultModel,
		"KEY="+key, "NARROW_KEY="+narrow, "LIMITED_KEY="+limited)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(interface{ Stderr() []byte }); ok {
			stderr = ee.Stderr()
		}
		t.Fatalf("node: %v\n%s\n%s", err, out, stderr)
	}
	var res sdkResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	if len(res.Models) != 1 || res.Models[0] != testengine.DefaultModel || res.Retrieved != testengine.DefaultModel {
		t.Errorf("models %v, retrieved %q", res.Models, res.Retrieved)
	}
	if res.Chat.Content != testengine.CompletionText(6) || res.Chat.Usage.CompletionTokens != 6 || res.Chat.Usage.PromptTokens != 4 {
		t.Errorf("chat %+v", res.Chat)
	}
	if res.Stream.Content != testengine.CompletionText(5) || res.Stream.FinishReason == "" || res.Stream.Chunks < 5 {
		t.Errorf("stream %+v, want the text %q assembled from chunks", res.Stream, testengine.CompletionText(5))
	}
	if res.Stream.SawUsage {
		t.Error("the SDK saw a usage chunk it did not ask for")
	}
	for _, tc := range []struct {
		got    *sdkError
		class  string
		status int
	}{
		{res.NotFound, "NotFoundError", 404},
		{res.Unauthenticated, "AuthenticationError", 401},
		{res.Forbidden, "PermissionDeniedError", 403},
		{res.RateLimited, "RateLimitError", 429},
	} {
		if tc.got == nil || tc.got.Class != tc.class || tc.got.Status != tc.status {
			t.Errorf("got %+v, want %s (%d)", tc.got, tc.class, tc.status)
		}
	}
}

// TestOpenAINodeSDKSeesABrokenStream: when the engine stops in the middle of a stream and the
// request timeout cuts it, the SDK raises an error instead of returning the part it got as
// the whole answer.
func TestOpenAINodeSDKSeesABrokenStream(t *testing.T) {
	c := newCluster(t, testengine.Config{})
	key := c.apiKey("app", nil)
	c.stopRuntime() // for one with a short request timeout (stopped when the test ends)
	c.runtimeURL, _ = startRuntime(t, c.ns, "chat", c.engineURL, func(o *serve.Options) { o.RequestTimeout = time.Second })
	c.engine.SetMode(testengine.ModeStall) // the first chunk, then nothing

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := clients.NodeCommand(ctx, t, "broken-stream.mjs")
	cmd.Env = append(os.Environ(), "OPENAI_BASE_URL="+c.runtimeURL+"/v1", "MODEL="+testengine.DefaultModel, "KEY="+key)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var res struct {
		Chunks int       `json:"chunks"`
		Error  *sdkError `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	if res.Error == nil || res.Error.Class != "APIError" || res.Error.Code != "upstream_error" {
		t.Fatalf("the SDK saw %s; want an APIError with code upstream_error", out)
	}
	if res.Chunks == 0 {
		t.Fatalf("the SDK saw no chunk before the error: %s", out)
	}
}
