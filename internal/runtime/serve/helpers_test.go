package serve

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/test/testengine"
	"github.com/helixflow/helixflow/test/testenv"
)

const testNS = "team-a"

// rig is a runtime in front of the test engine (a test double of an OpenAI-compatible
// engine), without an API server: the tests feed the auth index and model state directly,
// as the informers would.
type rig struct {
	t      *testing.T
	s      *Server
	engine *testengine.Engine
	url    string
	usage  *recordedUsage
	clock  *fakeClock
}

// recordedUsage collects what the runtime reports for the aggregator.
type recordedUsage struct {
	mu     sync.Mutex
	tokens map[string]int64     // by namespace/name
	uids   map[string]types.UID // the uid each namespace/name was last charged with
}

func newRecordedUsage() recordedUsage {
	return recordedUsage{tokens: map[string]int64{}, uids: map[string]types.UID{}}
}

func (u *recordedUsage) Record(ns, name string, uid types.UID, prompt, completion int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.tokens[ns+"/"+name] += prompt + completion
	u.uids[ns+"/"+name] = uid
}

func (u *recordedUsage) total(key string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.tokens[key]
}

func (u *recordedUsage) uid(key string) types.UID {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.uids[key]
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newRig(t *testing.T, cfg testengine.Config, tune func(*Options)) *rig {
	t.Helper()
	engine, engineURL := testengine.NewTestServer(t, cfg)
	clock := &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 30, 0, time.UTC)}
	usage := new(newRecordedUsage())
	opts := DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream = testengine.DefaultModel, testNS, engineURL
	opts.Usage, opts.Now = usage, clock.Now
	if tune != nil {
		tune(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.model.set(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testengine.DefaultModel},
		Status:     servingv1alpha1.InferenceModelStatus{ReadyReplicas: 1},
	})
	// The production front: the fast path, and net/http behind it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := s.httpFront(ln)
	served := make(chan error, 1)
	go func() { served <- front.serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		front.stop(ctx)
		if err := <-served; err != nil {
			t.Errorf("HTTP front: %v", err)
		}
	})
	return &rig{t: t, s: s, engine: engine, url: "http://" + ln.Addr().String(), usage: usage, clock: clock}
}

// addKey registers an ApiKey with a fresh key, as the informer would, and returns the key.
func (r *rig) addKey(name string, mutate func(*servingv1alpha1.ApiKey)) string {
	r.t.Helper()
	return addKeyTo(r.t, r.s, name, mutate)
}

// addKeyTo registers an ApiKey on s, as the informer would, and returns the key.
func addKeyTo(t *testing.T, s *Server, name string, mutate func(*servingv1alpha1.ApiKey)) string {
	t.Helper()
	key, keyID, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ak := &servingv1alpha1.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name, UID: types.UID(name + "-uid")},
		Spec:       servingv1alpha1.ApiKeySpec{Scopes: []servingv1alpha1.Scope{servingv1alpha1.ScopeInference, servingv1alpha1.ScopeListModels}},
		Status:     servingv1alpha1.ApiKeyStatus{KeyID: keyID, KeyHash: auth.HashKey(key).String()},
	}
	if mutate != nil {
		mutate(ak)
	}
	if err := s.auth.Keys().Upsert(ak); err != nil {
		t.Fatal(err)
	}
	return key
}

// post sends a JSON body with a bearer key.
func (r *rig) post(route, key, body string) *http.Response {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.url+route, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// runServe runs a whole runtime with Run, as `runtime serve` does (fronts, drain, usage
// flush), with HTTP on a free port, in front of a test engine, serving the model with auth
// mode. sigterm cancels Run, as SIGTERM does; wait returns Run's error.
func runServe(t *testing.T, cfg testengine.Config, mode servingv1alpha1.AuthMode, tune func(*Options)) (s *Server, base string, sigterm func(), wait func() error) {
	t.Helper()
	_, engineURL := testengine.NewTestServer(t, cfg)
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Model, opts.Namespace, opts.Upstream = testengine.DefaultModel, testNS, engineURL
	opts.HTTPAddress, opts.GRPCAddress, opts.MetricsAddress = addr, "0", "0"
	if tune != nil {
		tune(&opts)
	}
	if s, err = New(opts); err != nil {
		t.Fatal(err)
	}
	s.SetInferenceModel(&servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testengine.DefaultModel},
		Spec:       servingv1alpha1.InferenceModelSpec{Auth: servingv1alpha1.AuthSpec{Mode: mode}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base = "http://" + addr
	if err := testenv.WaitHTTP200(context.Background(), base+"/readyz", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return s, base, cancel, func() error { return <-done }
}
