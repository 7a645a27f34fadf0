package serve

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/scheme"
)

// modelState is what the runtime knows of its InferenceModel. It is replaced whole on every
// change, so a request reads one consistent snapshot without locking.
type modelState struct {
	// name is the served model name clients send as "model".
	name string
	// mode is spec.auth.mode.
	mode servingv1alpha1.AuthMode
	// ready is status.readyReplicas: the limits are divided among them.
	ready int32
	// known is false until the InferenceModel has been read.
	known bool
	// origins is spec.auth.allowedOrigins: browser origins allowed on the WebSocket.
	origins []string
}

// modelWatch keeps the latest modelState of one InferenceModel.
type modelWatch struct {
	state atomic.Pointer[modelState]
	reg   toolscache.ResourceEventHandlerRegistration
}

func newModelWatch(initial *modelState) *modelWatch {
	w := &modelWatch{}
	w.state.Store(initial)
	return w
}

// Load returns the current snapshot.
func (w *modelWatch) Load() *modelState { return w.state.Load() }

// set derives the snapshot from the object.
func (w *modelWatch) set(m *servingv1alpha1.InferenceModel) {
	mode := m.Spec.Auth.Mode
	if mode == "" {
		mode = servingv1alpha1.AuthModeAPIKeyOrJWT
	}
	w.state.Store(&modelState{name: m.ServedModelName(), mode: mode, ready: m.Status.ReadyReplicas, known: true,
		origins: slices.Clone(m.Spec.Auth.AllowedOrigins)})
}

// synced is true once the initial list has been seen (the model itself may still be absent).
func (w *modelWatch) synced() bool { return w.reg != nil && w.reg.HasSynced() }

// start watches the one InferenceModel (a field selector on its name: the runtime reads
// nothing else of the kind).
func (w *modelWatch) start(ctx context.Context, cfg *rest.Config, namespace, name string) error {
	c, err := cache.New(cfg, cache.Options{
		Scheme:            scheme.New(),
		DefaultNamespaces: map[string]cache.Config{namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			&servingv1alpha1.InferenceModel{}: {Field: fields.OneTermEqualSelector("metadata.name", name)},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	})
	if err != nil {
		return fmt.Errorf("creating model cache: %w", err)
	}
	inf, err := c.GetInformer(ctx, &servingv1alpha1.InferenceModel{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("watching InferenceModel %s: %w", name, err)
	}
	update := func(obj any) {
		if m, ok := obj.(*servingv1alpha1.InferenceModel); ok {
			w.set(m)
		}
	}
	w.reg, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: func(any) {
			// The pod is about to go with its model; refuse work until then.
			prev := w.Load()
			w.state.Store(&modelState{name: prev.name, mode: prev.mode})
		},
	})
	if err != nil {
		return fmt.Errorf("watching InferenceModel %s: %w", name, err)
	}
	go func() { _ = c.Start(ctx) }()
	return nil
}
