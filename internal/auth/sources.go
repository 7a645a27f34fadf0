package auth

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/scheme"
)

// Sources are the informers feeding an Authenticator: the ApiKeys of its namespace into the
// Index and the helixflow-jwks ConfigMap into the Verifier.
type Sources struct {
	registrations []toolscache.ResourceEventHandlerRegistration
	done          chan struct{}
	err           error
}

// StartSources starts a cache restricted to a's namespace (ApiKeys, and only the ConfigMap
// named helixflow-jwks) and feeds a from it until ctx is done. The runtime needs list and
// watch on apikeys and configmaps in that namespace, nothing else. Until Synced is true, keys
// and tokens that exist are still refused.
func StartSources(ctx context.Context, cfg *rest.Config, a *Authenticator) (*Sources, error) {
	c, err := cache.New(cfg, sourceCacheOptions(a.Namespace()))
	if err != nil {
		return nil, fmt.Errorf("creating auth cache: %w", err)
	}
	log := logf.FromContext(ctx).WithName("auth")
	s := &Sources{done: make(chan struct{})}
	if err := s.register(ctx, c, &servingv1alpha1.ApiKey{}, apiKeyHandler{keys: a.Keys(), log: log}); err != nil {
		return nil, err
	}
	if err := s.register(ctx, c, &corev1.ConfigMap{}, jwksHandler{tokens: a.Tokens(), log: log}); err != nil {
		return nil, err
	}
	go func() {
		defer close(s.done)
		s.err = c.Start(ctx)
	}()
	return s, nil
}

func sourceCacheOptions(namespace string) cache.Options {
	return cache.Options{
		Scheme:            scheme.New(),
		DefaultNamespaces: map[string]cache.Config{namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			// Only the JWKS: a runtime has no business caching the namespace's other ConfigMaps.
			&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", JWKSConfigMapName)},
		},
		DefaultTransform: stripForRuntime,
	}
}

// stripForRuntime drops what a runtime never reads from the objects it caches: managed
// fields, and an ApiKey's usage reporters (up to 1024 entries, rewritten with each usage
// write; the runtime reads only the counts).
func stripForRuntime(obj any) (any, error) {
	if ak, ok := obj.(*servingv1alpha1.ApiKey); ok && ak.Status.Usage != nil {
		ak.Status.Usage.Reporters = nil
	}
	return cache.TransformStripManagedFields()(obj)
}

func (s *Sources) register(ctx context.Context, c cache.Cache, obj client.Object, h toolscache.ResourceEventHandler) error {
	inf, err := c.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("getting informer for %T: %w", obj, err)
	}
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		return fmt.Errorf("adding handler for %T: %w", obj, err)
	}
	s.registrations = append(s.registrations, reg)
	return nil
}

// Synced is true once both handlers have received the initial lists.
func (s *Sources) Synced() bool {
	for _, r := range s.registrations {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

// WaitForSync blocks until Synced or ctx is done.
func (s *Sources) WaitForSync(ctx context.Context) error {
	fns := make([]toolscache.InformerSynced, 0, len(s.registrations))
	for _, r := range s.registrations {
		fns = append(fns, r.HasSynced)
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), fns...) {
		return fmt.Errorf("auth sources did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// Done is closed when the cache has stopped; Err then says why.
func (s *Sources) Done() <-chan struct{} { return s.done }

// Err is the cache's error once Done is closed.
func (s *Sources) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// unwrapTombstone returns the object of a delete event, including one the informer only
// learned about on a re-list.
func unwrapTombstone(obj any) any {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

type apiKeyHandler struct {
	keys *Index
	log  logr.Logger
}

func (h apiKeyHandler) OnAdd(obj any, _ bool) { h.upsert(obj) }

func (h apiKeyHandler) OnUpdate(_, newObj any) { h.upsert(newObj) }

func (h apiKeyHandler) OnDelete(obj any) {
	if ak, ok := unwrapTombstone(obj).(*servingv1alpha1.ApiKey); ok {
		h.keys.Delete(ak.Name)
	}
}

func (h apiKeyHandler) upsert(obj any) {
	ak, ok := obj.(*servingv1alpha1.ApiKey)
	if !ok {
		return
	}
	if err := h.keys.Upsert(ak); err != nil {
		// Its readable keys are in; the rest cannot be accepted until status is fixed.
		h.log.Error(err, "indexing ApiKey", "apiKey", ak.Name)
	}
}

type jwksHandler struct {
	tokens *Verifier
	log    logr.Logger
}

func (h jwksHandler) OnAdd(obj any, _ bool) { h.set(obj) }

func (h jwksHandler) OnUpdate(_, newObj any) { h.set(newObj) }

func (h jwksHandler) OnDelete(obj any) {
	if cm, ok := unwrapTombstone(obj).(*corev1.ConfigMap); ok && cm.Name == JWKSConfigMapName {
		h.tokens.Clear()
	}
}

func (h jwksHandler) set(obj any) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok || cm.Name != JWKSConfigMapName {
		return
	}
	if err := h.tokens.SetJWKS([]byte(cm.Data[JWKSDataKey]), cm.Data[IssuerDataKey]); err != nil {
		h.log.Error(err, "loading JWKS", "configMap", cm.Name)
	}
}
